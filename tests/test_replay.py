"""``mlxhydra replay`` and ``mlxhydra diff`` on real runs, and seeding."""

import json
import random
import shutil

import pytest
import yaml
from conftest import EMBEDDED_TINY, make_model, read_run, run_cli, run_dirs

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A cwd with ./llama, one run (bits 4) and a 2-job sweep (bits 4, 8), all seed=3."""
    ws = tmp_path_factory.mktemp("ws")
    make_model(ws / "llama")
    single = run_cli("model=./llama", "quant.bits=4", "seed=3", cwd=ws)
    assert single.returncode == 0, single.stderr
    [run] = run_dirs(ws)
    sweep = run_cli("-m", "model=./llama", "quant.bits=4,8", "seed=3", cwd=ws)
    assert sweep.returncode == 0, sweep.stderr
    jobs = sorted((p.parent.parent for p in (ws / "outputs" / "multirun").rglob("overrides.yaml")),
                  key=lambda p: p.name)
    assert len(jobs) == 2
    return {"cwd": ws, "run": run, "jobs": jobs}


def replays(ws):
    return sorted((ws / "outputs" / "runs").glob("*/*_replay-*"))


@pytest.mark.xdist_group("replay_workspace")  # on one worker: the fixture is built once
def test_replay_of_a_completed_run_matches_in_a_new_run_dir(workspace, tmp_path):
    ws, run = workspace["cwd"], workspace["run"]
    # Run from elsewhere: the replay runs there, with model=./llama made the recorded model_dir.
    result = run_cli("replay", str(run), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    [new] = replays(tmp_path)  # outputs/runs/<date>/<time>_replay-<token>, in the current directory
    assert new != run and new.parent.parent == tmp_path / "outputs" / "runs"
    assert result.stderr.splitlines()[0] == (f"mlxhydra: the run's working directory was {ws}: "
                                             f"replaying in {tmp_path} with model={ws / 'llama'}")
    assert yaml.safe_load((new / ".hydra/overrides.yaml").read_text()) == \
        [f"model={ws / 'llama'}", "quant.bits=4", "seed=3"]
    record = read_run(new)
    assert record["status"] == "completed" and record["seed"] == 3
    assert record["model_dir"] == str(ws / "llama")
    rows = {line.split()[0]: line.split()[-1] for line in result.stdout.splitlines()
            if line and line.split()[-1] in ("yes", "NO", "differs")}
    for field in ("status", "config", "weights_fingerprint", "quantization.bits_per_weight",
                  "versions.mlx", "versions.mlx-lm", "metrics"):
        assert rows[field] == "yes", result.stdout
    assert "replay matches" in result.stdout
    assert not replays(ws)  # nothing written in the recorded working directory


@pytest.mark.xdist_group("replay_workspace")
def test_replay_with_different_metrics_fails_naming_the_field(workspace, tmp_path):
    tampered = tmp_path / "tampered"
    shutil.copytree(workspace["run"], tampered)
    (tampered / "metrics.json").write_text(json.dumps({"perplexity": 12.5}))
    record = read_run(tampered)
    record["metrics"] = {"perplexity": 12.5}
    (tampered / "run.json").write_text(json.dumps(record))
    result = run_cli("replay", str(tampered), cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    [row] = [line for line in result.stdout.splitlines() if line.startswith("metrics.perplexity")]
    assert row.split()[1:] == ["12.5", "(absent)", "NO"]
    assert "does NOT match: metrics.perplexity" in result.stdout


@pytest.mark.xdist_group("replay_workspace")
def test_replay_that_fails_exits_non_zero(workspace, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(workspace["run"], broken)
    (broken / ".hydra/overrides.yaml").write_text("- model=./llama\n- quant.bits=7\n- seed=3\n")
    result = run_cli("replay", str(broken), cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "quant.bits=7" in result.stderr
    assert "does NOT match: status" in result.stdout


@pytest.mark.parametrize("command", ["replay", "diff"])
def test_not_a_run_directory_is_a_one_line_error(tmp_path, command):
    args = [str(tmp_path)] * (2 if command == "diff" else 1)
    result = run_cli(command, *args, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"mlxhydra: {command} {tmp_path}: {tmp_path} is not a run directory (no .hydra/overrides.yaml)"
    )


@pytest.mark.xdist_group("replay_workspace")
def test_diff_of_different_bits_shows_only_what_differs(workspace, tmp_path):
    job4, job8 = workspace["jobs"]
    result = run_cli("diff", str(job4), str(job8), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line.split()[1:] for line in result.stdout.splitlines()[2:] if line.strip()
            and not line.startswith(("A:", "B:"))}
    assert rows["overrides.quant.bits"] == ["4", "8"]
    assert rows["config.quant.bits"] == ["4", "8"]
    bpw4, bpw8 = map(float, rows["quantization.bits_per_weight"])
    assert bpw4 < bpw8
    allowed = ("overrides.quant.bits", "config.quant.bits", "quantization.")
    assert all(field.startswith(allowed) for field in rows), rows
    assert (run_cli("diff", "--exit-code", str(job4), str(job8), cwd=tmp_path).returncode == 1)


@pytest.mark.xdist_group("replay_workspace")
def test_diff_of_a_run_with_itself_and_with_the_same_job_of_a_sweep(workspace, tmp_path):
    run = workspace["run"]
    result = run_cli("diff", "--exit-code", str(run), str(run), cwd=tmp_path)
    assert result.returncode == 0 and result.stdout.strip() == "no differences"
    # Same overrides in another sweep job and run: timestamps and dirs are never shown.
    result = run_cli("diff", "--exit-code", str(run), str(workspace["jobs"][0]), cwd=tmp_path)
    assert result.returncode == 0, result.stdout


def test_seed_everything_seeds_python_numpy_and_mlx():
    import mlx.core as mx
    import numpy as np

    from mlxhydra.job.pipeline import seed_everything

    def draw(seed):
        seed_everything(seed)
        return (random.random(), float(np.random.rand()), mx.random.uniform(shape=(3,)).tolist())

    assert draw(1) == draw(1)
    a, b = draw(1), draw(2)
    assert all(x != y for x, y in zip(a, b))


def model_with_tokenizer(cwd):
    """Overrides naming a model with a tokenizer and eval.txt: the embedded tiny one,
    or (until it has its tokenizer) a copy given scripts/tiny_data.py's tokenizer."""
    if (EMBEDDED_TINY / "tokenizer.json").is_file():
        return []
    tiny_data = pytest.importorskip("tiny_data")
    shutil.copytree(EMBEDDED_TINY, cwd / "tiny")
    tiny_data.save_tokenizer(cwd / "tiny")
    tiny_data.write_eval_files(cwd / "tiny")
    return ["model=./tiny"]


def test_seed_decides_sampled_text_and_replay_reproduces_it(tmp_path):
    model = model_with_tokenizer(tmp_path)
    sweep = run_cli("-m", *model, "task=generate", "task.temperature=2.0", "task.max_tokens=24",
                    "seed=1,1,2", cwd=tmp_path)
    assert sweep.returncode == 0, sweep.stderr
    jobs = sorted((p.parent.parent for p in (tmp_path / "outputs").rglob("overrides.yaml")),  # 0_, 1_, 2_
                  key=lambda p: int(p.name.split("_")[0]))
    texts = [json.loads((j / "metrics.json").read_text())["text"] for j in jobs]
    assert texts[0] == texts[1] != texts[2]
    result = run_cli("replay", str(jobs[2]), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    [row] = [line for line in result.stdout.splitlines() if line.startswith("metrics.text")]
    assert row.split()[-1] == "yes"
    # A sweep job replays alone, as a single run, with the job's own overrides.
    [new] = replays(tmp_path)
    record = read_run(new)
    assert record["overrides"] == [*model, "task=generate", "task.temperature=2.0",
                                   "task.max_tokens=24", "seed=2"]
    assert record["job_num"] is None


def test_replay_of_a_deterministic_task_matches_its_metrics_exactly(tmp_path):
    model = model_with_tokenizer(tmp_path)
    result = run_cli(*model, "task=perplexity", "task.num_samples=4", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    [run] = run_dirs(tmp_path)
    result = run_cli("replay", str(run), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    [row] = [line for line in result.stdout.splitlines() if line.startswith("metrics.perplexity ")]
    assert row.split()[-1] == "yes"
