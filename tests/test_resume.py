"""A sweep killed mid-way (SIGKILL) and resumed; the runs table; the summary figure's objects.

One KL search on the embedded model (objective kl_mean, budget 6 bits per
weight, tracked in MLflow) is killed while job 2 runs, looked at with
``mlxhydra runs``, resumed, and then checked: every job completed exactly
once, one summary, one MLflow child per job, and the figure drawn from it.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import read_run, run_cli
from conftest import sweep_job_dirs as job_dirs
from conftest import wait_for

pytestmark = pytest.mark.slow

SWEEP = ("-m", "task=kl", "task.num_samples=2", "quant.bits=2,3,4,8", "sweep.objective=kl_mean",
         "sweep.max_bits_per_weight=6")



def status_of(sweep: Path, num: int):
    found = list(sweep.glob(f"{num}_*/run.json"))
    try:
        return json.loads(found[0].read_text()).get("status") if found else None
    except ValueError:  # never half a file (atomic writes), but be safe while polling
        return None



@pytest.fixture(scope="module")
def killed_and_resumed(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("resume")
    tracked = ("logger=mlflow",) if _has_mlflow() else ()
    sweep = cwd / "outputs" / "multirun" / "search"
    proc = subprocess.Popen([sys.executable, "-m", "mlxhydra", *SWEEP, *tracked,
                             f"hydra.sweep.dir={sweep}"], cwd=cwd,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_for(lambda: status_of(sweep, 2) == "running"), "job 2 never started"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    # a failed and an interrupted single run beside the sweep
    failed = run_cli("quant.bits=7", cwd=cwd)
    assert failed.returncode == 1
    interrupted = subprocess.Popen([sys.executable, "-m", "mlxhydra", "task=bench", "task.trials=1000"],
                                   cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert wait_for(lambda: any(json.loads(p.read_text()).get("metrics") is None and
                                "model" in json.loads(p.read_text())
                                for p in (cwd / "outputs" / "runs").rglob("run.json")
                                if "bench" in p.read_text()))
    time.sleep(1.0)  # into the task
    interrupted.send_signal(signal.SIGTERM)
    assert interrupted.wait(60) == 143
    before = run_cli("runs", "--json", cwd=cwd)
    records = {d.name: read_run(d) for d in job_dirs(sweep) if (d / "run.json").is_file()}
    resumed = run_cli("resume", str(sweep), cwd=cwd)
    return cwd, sweep, before, records, resumed, bool(tracked)


def _has_mlflow():
    import importlib.util

    return importlib.util.find_spec("mlflow") is not None


@pytest.mark.xdist_group("killed_and_resumed")  # on one worker: the fixture is built once
def test_the_table_of_runs(killed_and_resumed):
    cwd, sweep, before, _, _, _ = killed_and_resumed
    assert before.returncode == 0, before.stderr
    rows = json.loads(before.stdout)
    jobs = sorted((r["job_num"], r["status"]) for r in rows if r["job_num"] is not None)
    assert jobs[:2] == [(0, "completed"), (1, "completed")]
    assert (2, "running") in jobs  # killed: its record says running
    singles = sorted(r["status"] for r in rows if r["job_num"] is None)
    assert singles == ["failed", "interrupted"]
    kl = [r for r in rows if r["status"] == "completed"]
    assert all(r["task"] == "kl" and r["metric"].startswith("kl_mean=") for r in kl)
    assert [r["quant"] for r in sorted(kl, key=lambda r: r["job_num"])] == ["2bit g64", "3bit g64"]

    text = run_cli("runs", "--where", "status=completed", "--where", "quant.bits=3", cwd=cwd)
    lines = text.stdout.splitlines()
    assert len(lines) == 5 and "3bit g64" in lines[2] and lines[-1] == "1 runs: 1 completed"
    # (after the resume) the newest run is the last resumed job
    newest = json.loads(run_cli("runs", "--last", "1", "--json", cwd=cwd).stdout)
    assert [(r["job_num"], r["status"]) for r in newest] == [(3, "completed")]
    by_bits = json.loads(run_cli("runs", "--sort=-bits_per_weight", "--where", "task=kl", "--json",
                                 cwd=cwd).stdout)
    assert [r["job_num"] for r in by_bits] == [3, 2, 1, 0]


def test_where_compares_whole_values_never_prefixes(tmp_path, capsys):
    """--where keeps a row only for an equal value (as text, or as numbers): 4 is not 48 or 40,
    kl is not kl_something, and a run.json key is not the start of a longer one."""
    from mlxhydra.history.table import main as runs_main
    from mlxhydra.record.schema import write_record

    def record(name, task, bits, bpw):
        run_dir = tmp_path / "outputs" / "runs" / "2026-01-01" / name
        run_dir.mkdir(parents=True)
        write_record(run_dir / "run.json", {
            "status": "completed", "started": f"2026-01-01T00:00:0{len(list(run_dir.parent.iterdir()))}",
            "choices": {"task": task}, "overrides": [f"task={task}", f"quant.bits={bits}"],
            "quantization": {"source": "runtime", "bits_per_weight": bpw}})

    record("a", "kl", "4", 4.5)
    record("b", "kl_something", "48", 48.5)
    record("c", "kl", "40", 40.5)
    record("d", "kl", "4.0", 4.25)

    def names(*where):
        assert runs_main([str(tmp_path / "outputs"), "--json", *[f"--where={w}" for w in where]]) == 0
        return sorted(Path(r["run_dir"]).name for r in json.loads(capsys.readouterr().out))

    assert names("quant.bits=4") == ["a", "d"]  # 4.0 is 4 as a number
    assert names("quant.bits=48") == ["b"]
    assert names("task=kl") == ["a", "c", "d"]
    assert names("task=kl_something") == ["b"]
    assert names("task!=kl") == ["b"]
    assert names("quantization.bits_per_weight=4.5") == ["a"]
    assert names("quantization.bits=4.5") == []  # not a field: not bits_per_weight by prefix
    assert names("quantization.source=run") == []


@pytest.mark.xdist_group("killed_and_resumed")
def test_resume_runs_only_what_did_not_complete(killed_and_resumed):
    cwd, sweep, _, records, resumed, _ = killed_and_resumed
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "job 2 (running)" in resumed.stdout and "job 3 (missing)" in resumed.stdout
    assert "resuming 2 of 4 jobs" in resumed.stdout
    jobs = job_dirs(sweep)
    assert [int(p.name.split("_")[0]) for p in jobs] == [0, 1, 2, 3]
    runs = [read_run(p) for p in jobs]
    assert [r["status"] for r in runs] == ["completed"] * 4
    assert [r["job_num"] for r in runs] == [0, 1, 2, 3]
    for p in jobs[:2]:  # completed jobs kept as they were (but a tracker's line)
        kept = {k: v for k, v in read_run(p).items() if k != "tracking"}
        assert kept == {k: v for k, v in records[p.name].items() if k != "tracking"}
    # the killed attempt of job 2 is set aside whole, never deleted
    (attempt,) = (sweep / ".attempts").iterdir()
    assert attempt.name.startswith(jobs[2].name + "@")
    assert json.loads((attempt / "run.json").read_text())["status"] == "running"
    # one summary for the whole sweep
    assert sorted(p.name for p in sweep.glob("summary.*")) == ["summary.csv", "summary.md", "summary.png"]
    md = (sweep / "summary.md").read_text()
    assert "4 jobs: 4 completed" in md and md.count("\n| ") == 5
    again = run_cli("resume", str(sweep), cwd=cwd)
    assert again.returncode == 0 and "nothing to resume: all 4 jobs" in again.stdout, again.stdout


@pytest.mark.xdist_group("killed_and_resumed")
def test_runs_are_named_by_latest_and_by_prefix(killed_and_resumed):
    cwd, sweep, _, _, resumed, _ = killed_and_resumed
    assert resumed.stdout.splitlines()[-1] == f"sweep directory: {sweep.relative_to(cwd)}"
    assert (cwd / "outputs" / "latest").resolve() == sweep.resolve()
    jobs = job_dirs(sweep)
    diff = run_cli("diff", "latest/0", "latest/1", cwd=cwd)  # job prefixes inside the latest sweep
    assert diff.returncode == 0, diff.stderr
    assert diff.stdout.splitlines()[2].split()[:3] == ["overrides.quant.bits", "2", "3"]
    by_prefix = run_cli("diff", jobs[0].name[:15], str(jobs[1]), cwd=cwd)
    assert by_prefix.stdout == diff.stdout.replace("A: latest/0", f"A: {jobs[0].name[:15]}").replace(
        "B: latest/1", f"B: {jobs[1]}")
    singles = sorted(p.parent.name for p in (cwd / "outputs" / "runs").rglob("run.json"))
    common = os.path.commonprefix(singles)  # the two single runs started seconds apart
    if common:
        ambiguous = run_cli("diff", common, "latest/1", cwd=cwd)
        assert ambiguous.returncode == 2
        assert f"diff {common}: 2 runs start with it" in ambiguous.stderr
    sweep_itself = run_cli("replay", "latest", cwd=cwd)
    assert sweep_itself.returncode == 2
    assert f"is a sweep; name one of its jobs (latest/{jobs[0].name})" in sweep_itself.stderr


@pytest.mark.xdist_group("killed_and_resumed")
def test_the_tracker_covers_the_resumed_sweep(killed_and_resumed):
    cwd, sweep, _, _, _, tracked = killed_and_resumed
    if not tracked:
        pytest.skip("mlflow is not installed")
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{cwd / 'outputs' / 'mlflow.db'}")
    parent_id = json.loads((sweep / "tracking.json").read_text())["mlflow"]["run_id"]
    parent = client.get_run(parent_id)
    assert parent.info.status == "FINISHED" and parent.data.metrics["jobs_completed"] == 4
    (experiment,) = [e for e in client.search_experiments() if e.name == "mlxhydra"]
    children = client.search_runs([experiment.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{parent_id}'")
    assert sorted(int(r.data.tags["mlxhydra.job_num"]) for r in children) == [0, 1, 2, 3]
    for child in children:
        record = read_run(Path(child.data.tags["mlxhydra.run_dir"]))
        assert record["tracking"]["mlflow"]["run_id"] == child.info.run_id
        assert child.data.metrics["kl_mean"] == record["metrics"]["kl_mean"]


@pytest.mark.xdist_group("killed_and_resumed")
def test_the_summary_figure(killed_and_resumed):
    """Checked through matplotlib's objects: scale, error bars, labels, budget, best, Pareto front."""
    import matplotlib.pyplot as plt

    from mlxhydra.record.run_dir import SweepDir
    from mlxhydra.sweeps import plots
    from mlxhydra.sweeps.summary import collect, sweep_policy

    _, sweep, _, _, _, _ = killed_and_resumed
    rows, keys = collect(sweep)
    assert keys == ["quant.bits"]
    fig = plots.figure(rows, keys, "kl_mean", sweep_policy(SweepDir(sweep)))
    try:
        (ax,) = fig.axes
        assert ax.get_yscale() == "log" and ax.get_xlabel() == "bits per weight"
        assert sorted(t.get_text() for t in ax.texts) == ["bits=2", "bits=3", "bits=4", "bits=8"]
        records = {r["job"]: r for r in rows}
        kept, penalised = ax.containers  # errorbar containers: within budget, then over it
        assert kept.get_label() == "jobs" and penalised.get_label().startswith("penalised")
        xs = list(kept.lines[0].get_xdata())
        assert xs == [records[j]["bits_per_weight"] for j in (0, 1, 2)]
        (bars,) = kept.lines[2]
        for (x, low), (_, high) in (seg for seg in bars.get_segments()):
            job = next(r for r in rows if r["bits_per_weight"] == x)
            se = job["_metrics"]["kl_mean_stderr"]
            assert high - low == pytest.approx(2 * se)
        assert list(penalised.lines[0].get_xdata()) == [records[3]["bits_per_weight"]]  # 8-bit, over 6
        lines = {line.get_label(): line for line in ax.get_lines()}
        best = lines["best: bits=4"]  # lowest KL within the budget
        assert list(best.get_xdata()) == [records[2]["bits_per_weight"]]
        budget = lines["budget 6 bits/weight"]
        assert list(budget.get_xdata()) == [6, 6]
        front = lines["Pareto front"]
        assert list(front.get_xdata()) == xs  # KL falls as bits rise: every kept point is on it
    finally:
        plt.close(fig)
    png = (sweep / "summary.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_pareto_front_and_binomial_interval():
    from mlxhydra.stats import wilson_interval
    from mlxhydra.sweeps.pareto import pareto_front
    from mlxhydra.sweeps.plots import error_bar

    points = [(3.0, 0.2), (4.0, 0.1), (4.5, 0.15), (5.0, 0.01), (9.0, 0.0001), (9.5, 0.001)]
    assert pareto_front(points) == [0, 1, 3, 4]
    accuracy = [(3.0, 0.5), (4.0, 0.7), (5.0, 0.6), (9.0, 0.9)]
    assert pareto_front(accuracy, maximize=True) == [0, 1, 3]
    low, high = wilson_interval(8, 10)
    assert (round(low, 4), round(high, 4)) == (0.4902, 0.9433)  # the textbook Wilson interval
    below, above = error_bar("accuracy", {"correct": 8, "total": 10}, 0.8)
    assert (0.8 - below, 0.8 + above) == pytest.approx((low, high))
    assert wilson_interval(40, 100)[1] - wilson_interval(40, 100)[0] < high - low  # more data, narrower


def test_an_optuna_search_resumes_from_its_recorded_trials(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    sweep = tmp_path / "outputs" / "multirun" / "search"
    first = run_cli("-m", "hydra/sweeper=quant_search", "hydra.sweeper.n_trials=3",
                    "hydra.sweeper.sampler.n_startup_trials=2", "sweep.objective=bits_per_weight",
                    "task=load", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    assert (sweep / "multirun.yaml").is_file()  # written for sweepers that do not write it
    jobs = job_dirs(sweep)
    assert len(jobs) == 3
    # as a SIGKILL during job 1 leaves it: running, and job 2 never started
    killed = read_run(jobs[1])
    (jobs[1] / "run.json").write_text(json.dumps({**killed, "status": "running", "ended": None}))
    shutil.rmtree(jobs[2])
    kept = read_run(jobs[0])
    resumed = run_cli("resume", str(sweep), cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "job 1 (running)" in resumed.stdout and "job 2 (missing): (new trial)" in resumed.stdout
    log = resumed.stdout + resumed.stderr
    assert "1 finished trials from the jobs' records, 1 queued again, 2 to run" in log
    now = job_dirs(sweep)
    assert [int(p.name.split("_")[0]) for p in now] == [0, 1, 2]
    assert read_run(now[0]) == kept
    again = read_run(now[1])
    assert again["status"] == "completed" and again["overrides"] == killed["overrides"]  # same trial
    assert read_run(now[2])["status"] == "completed"
    import yaml

    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())["best_value"]
    assert best == min(read_run(p)["objective"] for p in now)  # over the recorded trials too


def test_a_failed_job_is_run_again_and_the_completed_ones_are_not(tmp_path):
    """Job 1's model directory is missing: it fails, the sweep exits 1. Once the directory
    exists, resume runs job 1 alone (its failed attempt set aside) and the sweep completes."""
    from conftest import make_model

    make_model(tmp_path / "a")
    sweep = tmp_path / "outputs" / "multirun" / "s"
    first = run_cli("-m", "model=./a,./b", "task=load", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert first.returncode == 1, first.stderr[-2000:]
    jobs = job_dirs(sweep)
    assert [read_run(p)["status"] for p in jobs] == ["completed", "failed"]
    kept, failed = read_run(jobs[0]), read_run(jobs[1])
    make_model(tmp_path / "b", seed=1)
    resumed = run_cli("resume", str(sweep), cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "job 1 (failed): model=./b task=load" in resumed.stdout
    assert "job 0" not in resumed.stdout and "resuming 1 of 2 jobs" in resumed.stdout
    now = job_dirs(sweep)
    assert [p.name for p in now] == [p.name for p in jobs]
    assert read_run(now[0]) == kept  # not run again: not even its record rewritten
    again = read_run(now[1])
    assert again["status"] == "completed" and again["job_num"] == 1 and again["started"] > failed["ended"]
    (attempt,) = (sweep / ".attempts").iterdir()
    assert attempt.name.startswith(jobs[1].name + "@") and read_run(attempt) == failed
    rows = (sweep / "summary.csv").read_text().splitlines()
    assert [r.split(",")[:3] for r in rows[1:]] == [["0", "./a", "completed"], ["1", "./b", "completed"]]


def test_a_failed_trial_of_a_search_is_finished_with_the_penalty(tmp_path):
    """In an Optuna search a failed trial is a finished one (its value the penalty): resume
    keeps it and runs only the killed trial; the best value counts the recorded trials."""
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    import yaml

    sweep = tmp_path / "outputs" / "multirun" / "search"
    first = run_cli("-m", "hydra/sweeper=quant_search", "hydra.sweeper.params=null",
                    "quant.bits=choice(4,7)", "hydra.sweeper.n_trials=3",
                    "hydra.sweeper.sampler.n_startup_trials=2", "sweep.objective=bits_per_weight",
                    "task=load", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert first.returncode == 1, first.stderr[-2000:]  # the sampler's seed 0 draws 7 first
    jobs = job_dirs(sweep)
    records = [read_run(p) for p in jobs]
    assert [r["status"] for r in records] == ["failed", "completed", "completed"]
    assert records[0]["objective"] == 1e9 and "quant.bits=7" in records[0]["overrides"]
    # as a SIGKILL during job 2 leaves it
    (jobs[2] / "run.json").write_text(json.dumps({**records[2], "status": "running", "ended": None}))
    resumed = run_cli("resume", str(sweep), cwd=tmp_path)
    assert resumed.returncode == 1, resumed.stderr[-3000:]  # job 0 still failed
    assert "job 2 (running)" in resumed.stdout and "job 0" not in resumed.stdout
    assert "2 finished trials from the jobs' records, 1 queued again, 1 to run" in resumed.stdout + resumed.stderr
    now = job_dirs(sweep)
    assert [p.name for p in now] == [p.name for p in jobs]
    assert [read_run(p) for p in now[:2]] == records[:2]
    assert read_run(now[2])["status"] == "completed" and read_run(now[2])["overrides"] == records[2]["overrides"]
    assert [p.name.split("@")[0] for p in (sweep / ".attempts").iterdir()] == [jobs[2].name]
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert results["best_value"] == records[1]["objective"]  # not the failed trial's value


def test_a_speed_panel_when_bench_results_exist():
    """Rows as summary.collect gives them for `-m task=kl,bench quant.bits=2,8`."""
    import matplotlib.pyplot as plt

    from mlxhydra.sweeps.plots import figure

    def row(job, task, bits, bpw, metrics):
        return {"job": job, "status": "completed", "bits_per_weight": bpw, "_task": task,
                "_overrides": {"task": task, "quant.bits": str(bits)}, "_metrics": metrics}

    rows = [row(0, "kl", 2, 3.06, {"kl_mean": 0.24, "kl_mean_stderr": 0.03}),
            row(1, "kl", 8, 9.04, {"kl_mean": 4e-5, "kl_mean_stderr": 1e-5}),
            row(2, "bench", 2, 3.06, {"generation_tps": 900.0}),
            row(3, "bench", 8, 9.04, {"generation_tps": 600.0})]
    fig = figure(rows, ["task", "quant.bits"], "kl_mean")
    try:
        quality, speed = fig.axes
        assert quality.get_xlabel() == "bits per weight" and quality.get_yscale() == "log"
        assert speed.get_xlabel() == "generation tokens/s (task=bench)" and speed.get_yscale() == "log"
        (points,) = speed.get_lines()
        assert list(zip(points.get_xdata(), points.get_ydata())) == [(900.0, 0.24), (600.0, 4e-5)]
        assert sorted(t.get_text() for t in speed.texts) == ["bits=2", "bits=8"]
    finally:
        plt.close(fig)


def two_runs(cwd: Path) -> None:
    """Two finished runs under ``cwd/outputs`` (only the second has the override quant.bits)."""
    from mlxhydra.record.schema import RecordWriter

    for name, started, overrides in (("a", "2026-01-01T10:00:00", []),
                                     ("b", "2026-01-01T11:00:00", ["quant.bits=4"])):
        run_dir = cwd / "outputs" / "runs" / "2026-01-01" / name
        run_dir.mkdir(parents=True)
        record = RecordWriter(run_dir / "run.json", run_dir=str(run_dir), overrides=overrides,
                              choices={"task": "load", "model": "tiny", "quant": "none"})
        record.data["started"] = started
        record.finish("completed")


def runs(*args: str, capsys) -> tuple:
    """``mlxhydra runs ARGS`` through the command's own subcommand dispatch: (status, out, err)."""
    from mlxhydra.cli import run_subcommand

    status = run_subcommand(["runs", *args])
    out, err = capsys.readouterr()
    return status, out, err


SORT_KEYS = ("a column (time, status, model, quant, task, metric, bits_per_weight, dir), an "
             "override such as quant.bits, or a run.json field such as metrics.kl_mean")


def test_runs_refuses_an_unknown_sort_key_and_a_last_below_one(tmp_path, monkeypatch, capsys):
    two_runs(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert runs("--sort", "nope", capsys=capsys) == (
        2, "", f"mlxhydra runs: --sort nope: no run under outputs has this key; expected {SORT_KEYS}\n")
    assert runs("--sort=-nope", capsys=capsys)[0] == 2
    for empty in ("", "-"):
        assert runs(f"--sort={empty}", capsys=capsys) == (
            2, "", f"mlxhydra runs: --sort {empty!r}: expected {SORT_KEYS}\n")
    for n in ("-1", "0"):
        assert runs("--last", n, capsys=capsys) == (
            2, "", f"mlxhydra runs: --last {n}: expected a positive number of rows (the N newest)\n")


def test_runs_sorts_by_a_key_only_one_run_has_and_keeps_the_last_one(tmp_path, monkeypatch, capsys):
    two_runs(tmp_path)
    monkeypatch.chdir(tmp_path)
    status, out, err = runs("--sort", "quant.bits", "--json", capsys=capsys)  # b has it, a does not
    assert (status, err) == (0, "")
    assert [Path(r["run_dir"]).name for r in json.loads(out)] == ["b", "a"]
    status, out, _ = runs("--last", "1", "--json", capsys=capsys)
    assert status == 0 and [Path(r["run_dir"]).name for r in json.loads(out)] == ["b"]


def test_runs_usage_errors_through_the_command(tmp_path):
    two_runs(tmp_path)
    for args in (("--sort", "nope"), ("--last", "-1")):
        result = run_cli("runs", *args, cwd=tmp_path)
        assert result.returncode == 2 and result.stdout == ""
        assert len(result.stderr.splitlines()) == 1 and "Traceback" not in result.stderr
    empty = tmp_path / "empty"
    (empty / "outputs").mkdir(parents=True)
    result = run_cli("runs", "--sort", "nope", cwd=empty)  # no runs: nothing to sort, nothing wrong
    assert (result.returncode, result.stdout, result.stderr) == (0, "no runs under outputs\n", "")
