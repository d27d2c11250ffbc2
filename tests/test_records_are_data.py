"""A record is data: nothing in a run or sweep directory someone hands over runs code.

Each test plants one kind of tampering in a real record (a recorded plan that
consents to remote code, recorded Hydra search paths and callbacks, a
``mlxhydra/`` package in the recorded working directory, a task YAML whose
``!function`` imports a module) and checks that the code did not run (its
marker file is absent), that the command said what it dropped or refused, and
that the same code does run when the current command asks for it (the marker works).
"""

import json
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import EMBEDDED_TINY, read_run, run_cli, run_dirs, sweep_job_dirs

CONSENT_DROPPED = "load.trust_remote_code=true (consent to run code: give it to this command)"


def marker_code(marker: Path) -> str:
    return f"open({str(marker)!r}, 'a').write('ran\\n')\n"


def remote_model(root: Path, marker: Path) -> Path:
    """The embedded model whose config.json names a model_file that writes ``marker``."""
    remote = Path(shutil.copytree(EMBEDDED_TINY, root / "remote"))
    config = json.loads((remote / "config.json").read_text())
    (remote / "config.json").write_text(json.dumps({**config, "model_file": "evil.py"}))
    (remote / "evil.py").write_text(marker_code(marker))
    return remote


def edit_plan(sweep: Path, task=(), hydra=(), cwd=None, config=None) -> None:
    """Add recorded overrides (as an attacker would) to a sweep's multirun.yaml."""
    plan = yaml.safe_load((sweep / "multirun.yaml").read_text())
    plan["hydra"]["overrides"]["task"] += list(task)
    plan["hydra"]["overrides"]["hydra"] += list(hydra)
    if cwd is not None:
        plan["hydra"]["runtime"]["cwd"] = str(cwd)
    for key, value in (config or {}).items():
        node = plan
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    (sweep / "multirun.yaml").write_text(yaml.safe_dump(plan))


def stderr_lines(result) -> list:
    return result.stderr.splitlines()


@pytest.mark.slow
def test_resume_takes_no_consent_from_the_recorded_plan(tmp_path):
    marker = tmp_path / "MODEL_CODE_RAN"
    remote = remote_model(tmp_path, marker)
    sweep = tmp_path / "outputs" / "multirun" / "s"
    first = run_cli("-m", f"model={remote}", "seed=1,2", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert first.returncode == 1, first.stderr[-2000:]
    # The attacker's plan: every job (and the composed config) consents to the model's code.
    edit_plan(sweep, task=["load.trust_remote_code=true"], config={"load.trust_remote_code": True})
    names = [j.name for j in sweep_job_dirs(sweep)]
    resumed = run_cli("resume", str(sweep), cwd=tmp_path)
    assert not marker.exists()
    assert resumed.returncode == 1, resumed.stderr[-3000:]
    assert ("mlxhydra: resume: dropped recorded settings that are not re-applied: "
            + CONSENT_DROPPED) in stderr_lines(resumed)
    refused = (f"{remote}/config.json sets model_file='evil.py': running {remote}/evil.py is "
               "refused; set load.trust_remote_code=true if you trust this model")
    assert [read_run(j)["error"] for j in sweep_job_dirs(sweep)] == [refused, refused]
    assert [j.name for j in sweep_job_dirs(sweep)] == names
    assert not marker.exists()
    # Consent given by the resume command itself reaches every job.
    consented = run_cli("resume", str(sweep), "load.trust_remote_code=true", cwd=tmp_path)
    assert marker.read_text() == "ran\nran\n", consented.stderr[-3000:]


@pytest.fixture(scope="module")
def small_sweep(tmp_path_factory):
    """A completed 2-job sweep of the embedded model; each test copies it."""
    ws = tmp_path_factory.mktemp("sweep_ws")
    sweep = ws / "outputs" / "multirun" / "s"
    result = run_cli("-m", "task=load", "seed=1,2", f"hydra.sweep.dir={sweep}", cwd=ws)
    assert result.returncode == 0, result.stderr[-2000:]
    return sweep


def unfinished_copy(sweep: Path, where: Path) -> Path:
    """A copy of ``sweep`` whose job 1 never ran."""
    copy = Path(shutil.copytree(sweep, where))
    shutil.rmtree(sweep_job_dirs(copy)[1])
    return copy


@pytest.mark.slow
def test_resume_drops_recorded_callbacks_and_search_paths(small_sweep, tmp_path):
    victim = tmp_path / "notes.txt"
    victim.write_text("the user's own file\n")
    sweep = unfinished_copy(small_sweep, tmp_path / "s1")
    callback = ["+hydra.callbacks.grab._target_=logging.FileHandler",
                f"+hydra.callbacks.grab.filename={victim}", "+hydra.callbacks.grab.mode=w"]
    edit_plan(sweep, hydra=callback)
    resumed = run_cli("resume", str(sweep), cwd=tmp_path)
    assert victim.read_text() == "the user's own file\n"
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert ("mlxhydra: resume: dropped recorded settings that are not re-applied: "
            "+hydra.callbacks.grab._target_=logging.FileHandler (a Hydra setting), "
            f"+hydra.callbacks.grab.filename={victim} (a Hydra setting), "
            "+hydra.callbacks.grab.mode=w (a Hydra setting)") in stderr_lines(resumed)
    assert [read_run(j)["status"] for j in sweep_job_dirs(sweep)] == ["completed", "completed"]

    # A search path to the attacker's presets, and a preset there that consents to remote code.
    marker = tmp_path / "MODEL_CODE_RAN"
    remote = remote_model(tmp_path, marker)
    presets = tmp_path / "presets" / "experiment"
    presets.mkdir(parents=True)
    (presets / "trusting.yaml").write_text("# @package _global_\nload:\n  trust_remote_code: true\n")
    sweep = unfinished_copy(small_sweep, tmp_path / "s2")
    edit_plan(sweep, task=[f"model={remote}", "+experiment=trusting"],
              hydra=[f"hydra.searchpath=[file://{presets.parent}]"])
    resumed = run_cli("resume", str(sweep), cwd=tmp_path)
    assert not marker.exists()
    assert resumed.returncode == 1, resumed.stderr[-3000:]
    assert ("mlxhydra: resume: dropped recorded settings that are not re-applied: "
            f"hydra.searchpath=[file://{presets.parent}] (a Hydra setting)") in stderr_lines(resumed)
    assert "Could not find 'experiment/trusting'" in resumed.stderr
    assert not list(sweep.glob("1_*"))


def planted(directory: Path, marker: Path) -> Path:
    """A directory holding a ``mlxhydra/`` package and a ``hydra_plugins/`` plugin that write ``marker``."""
    for name in ("mlxhydra/__init__.py", "mlxhydra/__main__.py", "hydra_plugins/evil/__init__.py"):
        (directory / name).parent.mkdir(parents=True, exist_ok=True)
        (directory / name).write_text(marker_code(marker))
    return directory


@pytest.mark.slow
def test_reruns_never_run_code_from_a_working_directory(small_sweep, tmp_path):
    marker = tmp_path / "SHADOW_RAN"
    shadow = planted(tmp_path / "shadow", marker)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # The marker works: python -m mlxhydra in that directory runs its package.
    run_cli("--version", cwd=shadow)
    assert marker.read_text() == "ran\nran\n"
    marker.unlink()

    # replay: a run whose record names the planted directory as its working directory
    run_cli("task=load", cwd=elsewhere)
    [run] = run_dirs(elsewhere)
    hydra = yaml.safe_load((run / ".hydra" / "hydra.yaml").read_text())
    hydra["hydra"]["runtime"]["cwd"] = str(shadow)
    (run / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump(hydra))
    (run / "run.json").write_text(json.dumps({**read_run(run), "cwd": str(shadow)}))
    replayed = run_cli("replay", str(run), cwd=elsewhere)
    assert not marker.exists()
    assert replayed.returncode == 0, replayed.stderr[-3000:]
    [here] = (elsewhere / "outputs" / "runs").glob("*/*_replay-*")  # in the current directory
    assert (read_run(here)["status"], read_run(here)["cwd"]) == ("completed", str(elsewhere))
    # ... and one run in that directory itself, asked for with --cwd: the installed package runs
    replayed = run_cli("replay", "--cwd", str(shadow), str(run), cwd=elsewhere)
    assert not marker.exists()
    assert replayed.returncode == 0, replayed.stderr[-3000:]
    [there] = (shadow / "outputs" / "runs").glob("*/*_replay-*")
    assert read_run(there)["status"] == "completed"

    # resume: a sweep whose recorded working directory is the planted one
    sweep = unfinished_copy(small_sweep, tmp_path / "s")
    edit_plan(sweep, cwd=shadow)
    resumed = run_cli("resume", str(sweep), cwd=elsewhere)
    assert not marker.exists()
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert (f"mlxhydra: resume: the sweep ran in {shadow}; resuming in {elsewhere}: relative paths "
            "in its settings are taken from here (--cwd DIR chooses)") in stderr_lines(resumed)
    assert [read_run(j)["status"] for j in sweep_job_dirs(sweep)] == ["completed", "completed"]
    resumed = run_cli("resume", "--cwd", str(shadow), str(unfinished_copy(small_sweep, tmp_path / "t")),
                      cwd=elsewhere)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert not marker.exists()


def task_files(root: Path, marker: Path) -> Path:
    """A task.include_path directory: a task YAML whose process_docs is a function of utils.py."""
    from mlxhydra.lm_eval_tasks import TASKS_DIR

    tasks = root / "tasks"
    tasks.mkdir()
    (tasks / "evil.yaml").write_text(f"task: evil_sums\ninclude: {TASKS_DIR / 'tiny_sums.yaml'}\n"
                                     "process_docs: !function utils.process_docs\n")
    (tasks / "utils.py").write_text(marker_code(marker) + "\n\ndef process_docs(docs):\n    return docs\n")
    return tasks


@pytest.mark.slow
def test_task_yamls_that_run_code_need_this_commands_consent(tmp_path):
    pytest.importorskip("lm_eval")
    marker = tmp_path / "TASK_CODE_RAN"
    tasks = task_files(tmp_path, marker)
    refused = (f"task.include_path: {tasks}/evil.yaml runs code (!function utils.process_docs): "
               "refused; set load.trust_remote_code=true if you trust these task files")
    args = ("task=lm_eval", f"task.include_path={tasks}", "task.tasks=[evil_sums]", "task.limit=2")
    result = run_cli(*args, cwd=tmp_path)
    assert not marker.exists()
    assert result.returncode == 1, result.stderr[-3000:]
    assert stderr_lines(result)[-1] == refused
    record = read_run(run_dirs(tmp_path)[0])
    assert record["error"] == refused and "weight_files" not in record  # before any weight
    as_file = run_cli("task=lm_eval", f"task.tasks=[{tasks}/evil.yaml]", cwd=tmp_path)
    assert as_file.returncode == 1
    assert (f"task.tasks: {tasks}/evil.yaml runs code (!function utils.process_docs): refused; "
            "set load.trust_remote_code=true if you trust these task files") in stderr_lines(as_file)
    assert not marker.exists()

    # With this command's consent it runs; a replay of that run does not inherit it.
    consented = run_cli(*args, "load.trust_remote_code=true", cwd=tmp_path)
    assert consented.returncode == 0, consented.stderr[-3000:]
    assert marker.read_text() == "ran\n"
    marker.unlink()
    [run] = [r for r in run_dirs(tmp_path) if read_run(r)["status"] == "completed"]
    replayed = run_cli("replay", str(run), cwd=tmp_path)
    assert not marker.exists()
    assert replayed.returncode == 1, replayed.stderr[-3000:]
    assert ("mlxhydra: replay: dropped recorded settings that are not re-applied: "
            + CONSENT_DROPPED) in stderr_lines(replayed)
    [again] = (tmp_path / "outputs" / "runs").glob("*/*_replay-*")
    assert read_run(again)["error"] == refused
    assert not marker.exists()


def test_what_a_record_may_give():
    """The allowlist itself: each recorded override kept, rewritten or dropped with its reason."""
    from mlxhydra.config.recorded import hydra_overrides, own_overrides

    kept, dropped = own_overrides([
        "model=./llama", "model=../../../../../../tmp/evil", "quant=4bit", "+experiment=quant_search",
        "quant=../../../../../../tmp/evil", "patch=[long_context]", "seed=3", "quant.bits=2,4",
        "load.trust_remote_code=true", "task.confirm_run_unsafe_code=true", "load.model_class=os:system",
        "+model.note=${oc.env:HOME}", "logger.csv.path=/home/me/.bashrc", "+task._target_=os.system",
        "+load@hydra.callbacks.x=default", "+hydra.callbacks.x._target_=os.system",
        "+model.model_file=../evil.py"], "/work/p")
    assert kept == ["model=./llama", "model='/tmp/evil'", "quant=4bit", "+experiment=quant_search",
                    "patch=[long_context]", "seed=3", "quant.bits=2,4"]
    assert dropped == [
        "quant=../../../../../../tmp/evil (a path, not an option name)",
        "load.trust_remote_code=true (consent to run code: give it to this command)",
        "task.confirm_run_unsafe_code=true (consent to run code: give it to this command)",
        "load.model_class=os:system (consent to run code: give it to this command)",
        "+model.note=${oc.env:HOME} (an interpolation)",
        "logger.csv.path=/home/me/.bashrc (an output location: give it to this command)",
        "+task._target_=os.system (names code)",
        "+load@hydra.callbacks.x=default (a package override)",
        "+hydra.callbacks.x._target_=os.system (not an mlxhydra setting)",
        "+model.model_file=../evil.py (names code)"]
    recorded = ["hydra/launcher=parallel", "hydra/launcher=my_launcher", "hydra/sweeper=quant_search",
                "hydra.launcher.n_jobs=4", "hydra.launcher.setup=[evil]", "hydra.job.chdir=true",
                "hydra.sweeper.sampler.seed=3", "hydra.sweeper.sampler._target_=evil.Sampler",
                "hydra.sweeper.params.quant.bits=choice(2,4)", "hydra.sweeper.params=null",
                "hydra.sweeper.params.load.trust_remote_code=choice(true)", "hydra.sweeper.storage=sqlite:///x.db",
                "hydra.searchpath=[file:///tmp]", "hydra/job_logging=none", "hydra.mode=MULTIRUN"]
    kept, dropped = hydra_overrides(recorded, sweep=True, replaced=("hydra.mode",))
    assert kept == ["hydra/launcher=parallel", "hydra/sweeper=quant_search", "hydra.launcher.n_jobs=4",
                    "hydra.job.chdir=true", "hydra.sweeper.sampler.seed=3",
                    "hydra.sweeper.params.quant.bits=choice(2,4)", "hydra.sweeper.params=null"]
    assert dropped == [
        "hydra/launcher=my_launcher (a Hydra setting)", "hydra.launcher.setup=[evil] (a Hydra setting)",
        "hydra.sweeper.sampler._target_=evil.Sampler (a Hydra setting)",
        "hydra.sweeper.params.load.trust_remote_code=choice(true) (consent to run code: give it to this command)",
        "hydra.sweeper.storage=sqlite:///x.db (a Hydra setting)",
        "hydra.searchpath=[file:///tmp] (a Hydra setting)", "hydra/job_logging=none (a Hydra setting)"]
    kept, _ = hydra_overrides(recorded, sweep=False)  # a single run: only hydra.job.chdir
    assert kept == ["hydra.job.chdir=true"]


def test_an_optuna_record_gives_neither_consent_nor_a_sweeper_class(tmp_path):
    """A recorded search: its sweeper class is never imported, consent never searched over or queued."""
    from mlxhydra.record.run_dir import SweepDir
    from mlxhydra.sweeps.resume_search import OPTUNA_SWEEPER, is_search, search_command_overrides, search_space

    assert not is_search({"sweeper": {"_target_": "evil.OptunaSweeper"}})
    hc = {"sweeper": {"_target_": OPTUNA_SWEEPER, "n_trials": 2,
                      "params": {"quant.bits": "choice(2,4)", "load.trust_remote_code": "choice(true)"}},
          "overrides": {"task": ["task.confirm_run_unsafe_code=choice(true)"], "hydra": []}}
    assert is_search(hc) and list(search_space(hc)) == ["quant.bits"]
    job = tmp_path / "0_x"
    job.mkdir()
    (job / "run.json").write_text(json.dumps({"status": "running", "overrides": [
        "quant.bits=2", "load.trust_remote_code=true"]}))
    numbers, added, known, dropped = search_command_overrides(SweepDir(tmp_path), {"hydra": hc}, {0: "running"})
    assert numbers == [0, 1] and known == {0: ["quant.bits=2"]}
    assert dropped == [CONSENT_DROPPED]
    assert f"+hydra.sweeper.inner_target={OPTUNA_SWEEPER}" in added
