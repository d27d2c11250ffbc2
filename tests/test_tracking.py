"""Trackers (logger=mlflow, tensorboard, csv): real stores read back with their own clients.

MLflow: a real SQLite store queried through ``MlflowClient`` after a single
run, a basic sweep, a joblib sweep with 2 workers and a failed job, and two
sweeps started at once on a new database. TensorBoard: the event files read
back with TensorBoard's own ``EventAccumulator``.
"""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import read_run, run_cli, run_dirs
from conftest import sweep_job_dirs as job_dirs

pytestmark = pytest.mark.slow

mlflow = pytest.importorskip("mlflow")
pytest.importorskip("tensorboardX")

BENCH = ("task=bench", "task.prompt_tokens=16", "task.generation_tokens=4", "task.trials=2")



@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    """One working directory: a single bench run and a joblib sweep with a failed job.

    (A basic sweep in MLflow, killed and resumed, is in test_resume.py.)
    """
    cwd = tmp_path_factory.mktemp("tracked")
    single = run_cli("logger=[mlflow,csv,tensorboard]", *BENCH, cwd=cwd)
    assert single.returncode == 0, single.stderr[-3000:]
    joblib = run_cli("-m", "hydra/launcher=parallel", "hydra.launcher.n_jobs=2", "logger=[mlflow,csv]",
                     "quant.bits=4,7,8", "task=load", "hydra.sweep.dir=outputs/multirun/joblib", cwd=cwd)
    assert joblib.returncode == 1, joblib.stderr[-3000:]  # bits=7 fails
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{cwd / 'outputs' / 'mlflow.db'}")
    return cwd, client, single


def runs_of(client):
    (experiment,) = [e for e in client.search_experiments() if e.name == "mlxhydra"]
    return experiment, client.search_runs([experiment.experiment_id], max_results=1000)


@pytest.mark.xdist_group("tracked")  # on one worker: the fixture is built once
def test_single_run_in_mlflow(tracked):
    cwd, client, _ = tracked
    (run_dir,) = [p.parent for p in (cwd / "outputs" / "runs").rglob("run.json")]
    record = read_run(run_dir)
    mlflow_info = record["tracking"]["mlflow"]
    run = client.get_run(mlflow_info["run_id"])
    assert run.info.status == "FINISHED" and run.info.run_name == run_dir.name
    assert "mlflow.parentRunId" not in run.data.tags
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert run.data.metrics["generation_tps"] == metrics["generation_tps"]
    assert run.data.metrics["bits_per_weight"] == record["quantization"]["bits_per_weight"]
    # bench's trials are steps
    history = client.get_metric_history(run.info.run_id, "trials.generation_tps")
    assert [(m.step, m.value) for m in history] == [
        (i, t["generation_tps"]) for i, t in enumerate(metrics["trials"])]
    params = run.data.params
    assert params["task"] == "bench" and params["task.trials"] == "2" and params["model"] == "tiny"
    assert params["quantization"] == "none"
    tags = run.data.tags
    assert tags["mlxhydra.status"] == "completed"
    assert tags["mlxhydra.run_dir"] == str(run_dir)
    assert tags["mlxhydra.weights_fingerprint"] == record["weights_fingerprint"]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"run.json", "model_config.json", "metrics.json", ".hydra"} <= artifacts
    hydra_files = {a.path for a in client.list_artifacts(run.info.run_id, ".hydra")}
    assert hydra_files == {".hydra/config.yaml", ".hydra/hydra.yaml", ".hydra/overrides.yaml"}
    local = Path(client.download_artifacts(run.info.run_id, "model_config.json", str(cwd / "dl")))
    assert local.read_text() == (run_dir / "model_config.json").read_text()


@pytest.mark.xdist_group("tracked")
def test_sweeps_have_a_parent_run_with_nested_jobs(tracked):
    cwd, client, _ = tracked
    experiment, runs = runs_of(client)
    for name, statuses in (("joblib", ["completed", "failed", "completed"]),):
        sweep = cwd / "outputs" / "multirun" / name
        state = json.loads((sweep / "tracking.json").read_text())["mlflow"]
        parent = client.get_run(state["run_id"])
        assert parent.info.run_name == name
        assert parent.info.status == "FAILED"  # a job failed
        assert parent.data.params["quant.bits"] == "4,7,8"
        assert parent.data.params["launcher"] == "JoblibLauncher"
        assert parent.data.metrics["jobs"] == len(statuses)
        assert {a.path for a in client.list_artifacts(parent.info.run_id)} >= {
            "summary.csv", "summary.md", "multirun.yaml"}
        children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == state["run_id"]]
        children.sort(key=lambda r: int(r.data.tags["mlxhydra.job_num"]))
        assert [r.data.tags["mlxhydra.status"] for r in children] == statuses
        assert [r.info.status for r in children] == [
            {"completed": "FINISHED", "failed": "FAILED"}[s] for s in statuses]
        for child, job_dir in zip(children, job_dirs(sweep)):
            record = read_run(job_dir)
            assert record["tracking"]["mlflow"]["run_id"] == child.info.run_id
            assert child.data.params["quant.bits"] == job_dir.name.split("quant.bits=")[1].split(",")[0]
            if record["status"] == "completed":
                assert child.data.metrics["bits_per_weight"] == record["quantization"]["bits_per_weight"]
            else:
                assert "quant.bits=7" in child.data.tags["mlxhydra.error"]
                assert "bits_per_weight" not in child.data.metrics
    # one experiment, created once: 1 single run + 1 parent + 3 jobs
    assert len(runs) == 5


@pytest.mark.xdist_group("tracked")
def test_tensorboard_event_files_read_back(tracked):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cwd, _, _ = tracked
    (run_dir,) = [p.parent for p in (cwd / "outputs" / "runs").rglob("run.json")]
    record = read_run(run_dir)
    assert record["tracking"]["tensorboard"]["log_dir"] == str(run_dir / "tensorboard")
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"tensors": 0, "scalars": 0})
    events.Reload()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    (prompt_tps,) = events.Scalars("prompt_tps")
    assert prompt_tps.value == pytest.approx(metrics["prompt_tps"], rel=1e-6)  # float32 in events
    steps = events.Scalars("trials.generation_tps")
    assert [s.step for s in steps] == [0, 1]
    assert [s.value for s in steps] == pytest.approx([t["generation_tps"] for t in metrics["trials"]], rel=1e-6)
    (config,) = events.Tensors("config/text_summary")
    text = config.tensor_proto.string_val[0].decode()
    assert [line[4:] for line in text.splitlines()] == (run_dir / ".hydra" / "config.yaml").read_text().splitlines()


@pytest.mark.xdist_group("tracked")
def test_csv_has_every_job(tracked):
    cwd, _, _ = tracked
    with open(cwd / "outputs" / "tracking.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["time", "run_dir", "job", "status", "kind", "name", "step", "value"]
    jobs = {r["run_dir"]: r["status"] for r in rows}
    assert sorted(jobs.values()) == ["completed", "completed", "completed", "failed"]  # single + joblib
    bpw = {r["run_dir"]: float(r["value"]) for r in rows if r["name"] == "bits_per_weight"}
    for run_dir, value in bpw.items():
        assert value == read_run(Path(run_dir))["quantization"]["bits_per_weight"]


def test_a_failing_tracker_never_fails_the_run(tmp_path):
    """TensorBoard cannot write its directory: a warning and a line in run.json, exit 0."""
    proc = run_cli("logger=[tensorboard,csv]", "logger.tensorboard.log_dir=/proc/no/such/dir", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "tensorboard: job not logged:" in proc.stdout + proc.stderr
    (run_json,) = (tmp_path / "outputs").rglob("run.json")
    record = json.loads(run_json.read_text())
    assert record["status"] == "completed"
    assert "/proc/no" in record["tracking"]["tensorboard"]["error"]
    assert record["tracking"]["csv"]["path"] == str(tmp_path / "outputs" / "tracking.csv")


@pytest.mark.parametrize("store, args, code", [
    ("read_only", ("task=load",), 0),
    ("directory", ("task=load", "quant.bits=7"), 1),  # a failed job stays failed
    ("server_down", ("task=load",), 0),
])
def test_an_unusable_mlflow_store_costs_one_line_and_seconds(tmp_path, store, args, code):
    """Before: ~90 lines of MLflow's tracebacks (a read-only database), 10 retries over ~110 s
    (a directory where the database should be), 7 over ~250 s (a server down). Now: one
    warning, the job's own outcome, the error in run.json, the command done in seconds
    (measured: 5-19 s on 2 busy cores)."""
    import socket
    import time

    from helpers.privileges import privileges_dropped
    from mlflow.tracking import MlflowClient

    prefix = privileges_dropped()  # as root, chmod bites only without CAP_DAC_OVERRIDE
    db = tmp_path / "outputs" / "mlflow.db"
    if store == "read_only":
        MlflowClient(tracking_uri=f"sqlite:///{db}").create_experiment("mlxhydra")  # MLflow's own tables
        db.chmod(0o444)
        why = f"FileSystemError: {db}: cannot be written: attempt to write a readonly database"
    elif store == "directory":
        db.mkdir(parents=True)
        why = f"FileSystemError: {db} is a directory, not a regular file: expected an SQLite database"
    else:
        with socket.socket() as s:  # a port nothing listens on: connection refused
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        args += (f"logger.mlflow.tracking_uri=http://127.0.0.1:{port}",)
        why = f"MlflowException: API request to http://127.0.0.1:{port}/api/2.0/mlflow/experiments/get-by-name failed"
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    started = time.monotonic()
    proc = subprocess.run([*prefix, sys.executable, "-m", "mlxhydra", "logger=mlflow", *args],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    took = time.monotonic() - started
    assert proc.returncode == code, proc.stderr[-3000:]
    output = (proc.stdout + proc.stderr).splitlines()
    said = [line for line in output if any(w in line.lower() for w in (
        "mlflow", "sqlalchemy", "urllib3", "retr", "traceback"))]
    assert len(said) == 1 and f"[WARNING] - mlflow: job not logged: {why}" in said[0], said
    assert proc.stderr.splitlines() == ([] if code == 0 else [read_run(run_dirs(tmp_path)[0])["error"]])
    assert took < 30, f"{took:.0f} s"
    (run_dir,) = run_dirs(tmp_path)
    assert read_run(run_dir)["status"] == ("completed", "failed")[code]
    error = read_run(run_dir)["tracking"]["mlflow"]["error"]
    assert error == why if store != "server_down" else error.startswith(why)


def test_two_sweeps_at_once_on_a_new_store(tmp_path):
    """Both create the database and experiment at the same time: no migration race, two parents."""
    command = [sys.executable, "-m", "mlxhydra", "-m", "logger=mlflow", "quant.bits=4", "task=load"]
    procs = [subprocess.Popen(command + [f"hydra.sweep.dir=outputs/multirun/s{i}"], cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    outputs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]
        assert "job not logged" not in out + err and "not tracked" not in out + err
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}")
    experiment, runs = runs_of(client)
    parents = [r for r in runs if r.data.tags.get("mlxhydra.kind") == "sweep"]
    assert sorted(r.info.run_name for r in parents) == ["s0", "s1"]
    for parent in parents:
        children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
        assert [r.data.params["quant.bits"] for r in children] == ["4"]
        assert all(r.info.status == "FINISHED" for r in children)


def test_logger_settings_are_validated():
    from mlxhydra.config.loggers import logger_problems

    assert logger_problems({}) == []
    assert logger_problems({"mlflow": {"tracking_uri": "sqlite:///x.db", "experiment": "e", "artifacts": True},
                         "csv": {"path": "t.csv"}, "tensorboard": {"log_dir": None}}) == []
    assert logger_problems({"csv": {"path": 3}, "mlflow": {"artifacts": "yes", "uri": "x"}, "wandb": {}}) == [
        "logger.csv.path=3: expected a CSV file path",
        "logger.mlflow.artifacts='yes': expected true or false",
        "logger.mlflow.uri: unknown key (expected tracking_uri, experiment, artifacts)",
        "logger.wandb: unknown logger (expected one of mlflow, tensorboard, csv)",
    ]
