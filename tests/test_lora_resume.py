"""task=lora resumed from a checkpoint equals the run that was never stopped: the same reports
after the resume point and bit-identical adapters; a run killed with SIGKILL goes on with
``mlxhydra resume``; a checkpoint that does not fit is one line before any weight is read."""

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import pytest
from conftest import read_run, run_cli, wait_for
from test_lora import SMALL, assert_refused_before_weights, our_reports, run_ours, setup  # noqa: F401

from mlxhydra.errors import ConfigError, TaskError
from mlxhydra.sweeps.resume import main as resume_main

pytestmark = pytest.mark.xdist_group("lora")

# Checkpoints at 3 and 6; at 6 the report window holds 2 steps and 2 accumulated gradients are
# waiting for the update at 8; 12 rows in batches of 2: a new epoch (a new shuffle) at step 7;
# a warm-up schedule (the optimizer's step drives it) and dropout (mlx's random key).
OFF_GRID = {**SMALL, "iters": 8, "save_every": 3, "steps_per_report": 4, "steps_per_eval": 4,
            "grad_accumulation_steps": 4, "lora_parameters.dropout": 0.1,
            "lr_schedule": "{name:cosine_decay,arguments:[1e-3,8],warmup:2}"}


def adapters_equal(a: Path, b: Path) -> bool:
    wa, wb = mx.load(str(a / "adapters.safetensors")), mx.load(str(b / "adapters.safetensors"))
    return sorted(wa) == sorted(wb) and all(mx.array_equal(wa[k], wb[k]) for k in wa) and \
        (a / "adapters.safetensors").read_bytes() == (b / "adapters.safetensors").read_bytes()


def test_resumed_from_a_checkpoint_between_reports_and_updates_equals_the_whole_run(
        setup, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.chdir(tmp_path)
    whole = Path(run_ours(setup["float"], setup["data"], settings=OFF_GRID, name="whole")["run_dir"])
    resumed = run_ours(setup["float"], setup["data"], f"task.resume_from={whole}",
                       settings=OFF_GRID, name="resumed")
    run_dir = Path(resumed["run_dir"])
    m = resumed["metrics"]
    assert m["resumed_at_step"] == 6
    assert m["resumed_from"] == str(whole / "checkpoints" / "resume.safetensors")
    # the whole curve: the checkpoint's reports, then the ones after step 6, all equal
    assert our_reports(run_dir) == our_reports(whole)
    assert [r[:2] for r in our_reports(whole)] == [("val", 0), ("val", 3), ("train", 4), ("val", 7),
                                                   ("train", 8)]
    assert adapters_equal(whole, run_dir)
    assert m["trained_tokens"] == read_run(whole)["metrics"]["trained_tokens"]
    assert m["final_train_loss"] == read_run(whole)["metrics"]["final_train_loss"]


def test_a_checkpoint_that_does_not_fit_is_one_line_before_any_weight(setup, tmp_path, monkeypatch,  # noqa: F811
                                                                      capsys):
    monkeypatch.chdir(tmp_path)
    whole = Path(run_ours(setup["float"], setup["data"], settings=OFF_GRID, name="whole")["run_dir"])
    state = whole / "checkpoints" / "resume.safetensors"
    cases = [
        ({"learning_rate": 0.01}, whole, f"task.resume_from={whole}: the checkpoint was trained with "
         "other settings: learning_rate=0.01 (the checkpoint's: 0.001)"),
        ({"iters": 6}, whole, f"task.resume_from={whole}: the checkpoint is at step 6, task.iters=6 "
         "(expected more iterations than that)"),
        ({}, tmp_path, f"task.resume_from={tmp_path}: no checkpoint at "
         f"{tmp_path / 'checkpoints' / 'resume.safetensors'} (one is written every task.save_every steps)"),
    ]
    for n, (change, source, line) in enumerate(cases):
        with pytest.raises(ConfigError) as e:
            run_ours(setup["float"], setup["data"], f"task.resume_from={source}",
                     settings={**OFF_GRID, **change}, name=f"bad{n}")
        assert_refused_before_weights(e, [line])
    state.write_bytes(state.read_bytes()[:100])  # cut short: its header no longer fits the file
    with pytest.raises(ConfigError) as e:
        run_ours(setup["float"], setup["data"], f"task.resume_from={whole}", settings=OFF_GRID,
                 name="corrupt")
    corrupt = (f"{state}: corrupt safetensors header (declares "
               f"{int.from_bytes(state.read_bytes()[:8], 'little')} header bytes in a 100-byte file)")
    assert_refused_before_weights(e, [f"task.resume_from={whole}: {corrupt}"])
    # mlxhydra resume of the run, as if it had been killed: one line, exit 2, nothing moved
    record = json.loads((whole / "run.json").read_text())
    (whole / "run.json").write_text(json.dumps({**record, "status": "running"}))
    before = sorted(p.name for p in whole.iterdir())
    assert resume_main([str(whole)]) == 2
    assert capsys.readouterr().err == f"mlxhydra: resume {whole}: its checkpoint cannot be resumed: {corrupt}\n"
    assert sorted(p.name for p in whole.iterdir()) == before


def test_another_seed_or_base_model_is_refused(setup, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.chdir(tmp_path)
    whole = Path(run_ours(setup["float"], setup["data"], settings=OFF_GRID, name="whole")["run_dir"])
    state = whole / "checkpoints" / "resume.safetensors"
    with pytest.raises(TaskError) as e:
        run_ours(setup["float"], setup["data"], f"task.resume_from={whole}", "seed=1",
                 settings=OFF_GRID, name="seed1")
    assert str(e.value) == (f"task.resume_from: {state} was trained with seed=0, this run has "
                            "seed=1 (expected the same seed)")
    with pytest.raises(TaskError) as e:  # the same layers and names, quantized: QLoRA
        run_ours(setup["4bit"], setup["data"], f"task.resume_from={whole}", settings=OFF_GRID,
                 name="on4bit")
    assert str(e.value) == (f"task.resume_from: {state} was trained on another base model: its "
                            "weights_fingerprint and quantization differ from this run's (expected "
                            "the same weights and quantization)")



# 60 iterations of the tiny model: seconds, long enough to stop it on the way.
LONG = {**SMALL, "iters": 60, "steps_per_report": 5, "steps_per_eval": 15}


def cli_args(setup, **changes):  # noqa: F811
    return [f"model={setup['float']}", "task=lora", f"task.data={setup['data']}",
            *[f"task.{k}={v}" for k, v in {**LONG, **changes}.items()]]


@pytest.fixture(scope="module")
def whole_cli_run(setup, tmp_path_factory):  # noqa: F811
    """The run that is never stopped (save_every does not change its steps)."""
    cwd = tmp_path_factory.mktemp("whole")
    result = run_cli(*cli_args(setup, save_every=10), "hydra.run.dir=whole", cwd=cwd)
    assert result.returncode == 0, result.stderr
    return cwd / "whole"


def start(setup, cwd: Path, run_dir: Path, **changes):  # noqa: F811
    return subprocess.Popen([sys.executable, "-m", "mlxhydra", *cli_args(setup, **changes),
                             f"hydra.run.dir={run_dir}"], cwd=cwd,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def assert_resumes_to(run_dir: Path, whole: Path, cwd: Path) -> int:
    """``mlxhydra resume`` of ``run_dir`` gives ``whole``'s reports and adapters; its step."""
    resumed = run_cli("resume", run_dir.name, cwd=cwd)
    assert resumed.returncode == 0, resumed.stderr
    record = read_run(run_dir)
    step = record["metrics"]["resumed_at_step"]
    assert f"resuming {run_dir.name} " in resumed.stdout and f"from its checkpoint at step {step}\n" in resumed.stdout
    assert 0 < step < 60 and record["status"] == "completed"
    (attempt,) = (run_dir / ".attempts").iterdir()
    assert record["metrics"]["resumed_from"] == str(attempt / "checkpoints" / "resume.safetensors")
    assert f"task.resume_from={record['metrics']['resumed_from']}" in record["overrides"]
    assert our_reports(run_dir) == our_reports(whole)
    assert adapters_equal(run_dir, whole)
    again = run_cli("resume", run_dir.name, cwd=cwd)
    assert again.returncode == 0 and again.stdout.startswith(f"nothing to resume: {run_dir.name} completed")
    return step


@pytest.mark.slow
def test_a_run_killed_after_a_checkpoint_resumes_to_the_uninterrupted_run(setup, whole_cli_run, tmp_path):  # noqa: F811
    killed = tmp_path / "killed"
    proc = start(setup, tmp_path, killed, save_every=10)
    try:
        assert wait_for(lambda: (killed / "checkpoints" / "resume.safetensors").exists())
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert read_run(killed)["status"] == "running"  # killed mid-training, as SIGKILL leaves it
    assert assert_resumes_to(killed, whole_cli_run, tmp_path) % 10 == 0
    assert read_run(next((killed / ".attempts").iterdir()))["status"] == "running"


@pytest.mark.slow
def test_sigterm_writes_a_checkpoint_of_the_step_it_stops_at(setup, whole_cli_run, tmp_path):  # noqa: F811
    from mlxhydra.tasks.lora_checkpoint import read_meta

    stopped = tmp_path / "stopped"
    proc = start(setup, tmp_path, stopped, save_every=1000)  # no checkpoint but SIGTERM's
    log = stopped / "train_log.jsonl"
    try:
        assert wait_for(lambda: log.exists() and '"train_loss"' in log.read_text())
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 143
    record = read_run(stopped)
    assert record["status"] == "interrupted" and record["error"] == "interrupted by SIGTERM"
    step = read_meta(stopped / "checkpoints" / "resume.safetensors")["step"]
    assert 5 <= step < 60
    assert assert_resumes_to(stopped, whole_cli_run, tmp_path) == step


@pytest.mark.slow
def test_a_killed_sweep_of_training_jobs_resumes_each_from_its_checkpoint(setup, whole_cli_run, tmp_path,  # noqa: F811
                                                                          capsys):
    sweep = tmp_path / "sweep"
    args = [a for a in cli_args(setup) if not a.startswith("task.save_every=")]
    proc = subprocess.Popen([sys.executable, "-m", "mlxhydra", "-m", *args, "task.save_every=10,20",
                             f"hydra.sweep.dir={sweep}"], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_for(lambda: any(sweep.glob("0_*/checkpoints/resume.safetensors")))
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    resumed = run_cli("resume", "sweep", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert re.search(r"^job 0 \(running\) \(from its checkpoint at step \d+0\): ", resumed.stdout, re.M)
    assert re.search(r"^job 1 \(missing\): ", resumed.stdout, re.M)
    jobs = sorted(p for p in sweep.iterdir() if p.name[0].isdigit())
    assert [read_run(j)["metrics"].get("resumed_at_step", 0) > 0 for j in jobs] == [True, False]
    for job in jobs:  # save_every does not change the steps: each is the uninterrupted run
        assert our_reports(job) == our_reports(whole_cli_run)
        assert adapters_equal(job, whole_cli_run)
    assert resume_main([str(jobs[0])]) == 2  # a job alone: the sweep's summary would miss it
    assert capsys.readouterr().err == (f"mlxhydra: resume {jobs[0]} is a job of the sweep {sweep}: resume "
                                       f"the sweep (mlxhydra resume {sweep}), which runs its unfinished jobs\n")
