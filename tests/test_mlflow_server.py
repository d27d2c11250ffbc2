"""MLflow's own environment against a real ``mlflow server`` on 127.0.0.1, through the real command.

One server for the module (its start is the expensive part: about 15 CPU seconds), with its
SQLite store and artifacts in a temporary directory. One sweep of 2 jobs is run with only
``MLFLOW_TRACKING_URI`` (holding credentials) and ``MLFLOW_EXPERIMENT_NAME`` in the environment;
its runs, parent and nested, are read back from the server with MLflow's own client. The same
job logged with no MLflow environment goes to the embedded store. (tests/test_tracking.py
covers the embedded store through the command.)
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from conftest import read_run, run_cli
from conftest import sweep_job_dirs as job_dirs

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("mlflow_server")]  # one server, one worker

mlflow = pytest.importorskip("mlflow")
pytest.importorskip("flask", reason="`mlflow server` needs flask (the test extra installs it)")
pytest.importorskip("flask_cors", reason="`mlflow server` needs flask-cors (the test extra installs it)")

SECRET = "s3cret-5e1f"
EXPERIMENT = "habits-study"
PACKAGES = ["mlx", "mlx-lm", "hydra-core", "omegaconf", "mlxhydra", "transformers", "tokenizers",
            "numpy", "huggingface-hub", "safetensors", "lm-eval"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """``mlflow server`` started here, stopped (its whole process group) at the module's end."""
    root = tmp_path_factory.mktemp("mlflow_server")
    url = f"http://127.0.0.1:{_free_port()}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"  # no job runner (it needs huey)
    log = open(root / "server.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", url.rsplit(":", 1)[1],
         "--workers", "1", "--backend-store-uri", f"sqlite:///{root / 'server.db'}",
         "--artifacts-destination", str(root / "artifacts")],
        cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while not _answers(url):
            assert proc.poll() is None, (root / "server.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "mlflow server did not answer /health in 180 s"
            time.sleep(0.5)
        yield url, root
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


@pytest.fixture(scope="module")
def sweep(server, tmp_path_factory):
    """``mlxhydra -m logger=mlflow task=load quant.bits=4,8`` with MLflow's environment only."""
    url, _ = server
    cwd = tmp_path_factory.mktemp("sweep_cwd")
    with_credentials = url.replace("http://", f"http://user:{SECRET}@")
    result = run_cli("-m", "logger=mlflow", "task=load", "quant.bits=4,8",
                     "hydra.sweep.dir=outputs/multirun/s", cwd=cwd,
                     env={"MLFLOW_TRACKING_URI": with_credentials, "MLFLOW_EXPERIMENT_NAME": EXPERIMENT})
    assert result.returncode == 0, result.stderr[-3000:]
    from mlflow.tracking import MlflowClient

    return cwd, MlflowClient(tracking_uri=url), result


def test_a_sweep_lands_on_the_server_from_mlflows_environment(server, sweep):
    url, root = server
    cwd, client, _ = sweep
    experiment = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 3
    sweep_dir = cwd / "outputs" / "multirun" / "s"
    shown = url.replace("http://", "http://user:***@")
    state = json.loads((sweep_dir / "tracking.json").read_text())["mlflow"]
    assert state == {"tracking_uri": shown, "experiment": EXPERIMENT,
                     "experiment_id": experiment.experiment_id, "run_id": state["run_id"]}
    parent = client.get_run(state["run_id"])
    assert (parent.info.run_name, parent.info.status) == ("s", "FINISHED")
    assert parent.data.params["quant.bits"] == "4,8" and parent.data.metrics["jobs"] == 2
    children = sorted((r for r in runs if r.data.tags.get("mlflow.parentRunId") == state["run_id"]),
                      key=lambda r: int(r.data.tags["mlxhydra.job_num"]))
    jobs = job_dirs(sweep_dir)
    assert [r.info.run_name for r in children] == [j.name for j in jobs]
    for child, job_dir in zip(children, jobs):
        record = read_run(job_dir)
        assert record["tracking"] == {"mlflow": {
            "tracking_uri": shown, "experiment": EXPERIMENT,
            "experiment_id": experiment.experiment_id, "run_id": child.info.run_id}}
        assert child.info.status == "FINISHED"
        assert child.data.metrics["bits_per_weight"] == record["quantization"]["bits_per_weight"]
        # artifacts go through the server to its --artifacts-destination
        stored = root / "artifacts" / experiment.experiment_id / child.info.run_id / "artifacts"
        uploaded = json.loads((stored / "run.json").read_text())  # before tracking was added
        assert uploaded == {k: v for k, v in record.items() if k != "tracking"}
    assert [c.data.params["quant.bits"] for c in children] == ["4", "8"]
    assert not (cwd / "outputs" / "mlflow.db").exists()  # nothing in the embedded store


def test_the_record_names_the_variables_never_their_values(sweep):
    """The credentials reach MLflow and no file or stream; what replay reads names the
    variables (it resolves them in its own environment); the versions are the real ones."""
    cwd, _, result = sweep
    assert SECRET not in result.stdout + result.stderr
    for f in (p for p in cwd.rglob("*") if p.is_file()):
        assert SECRET.encode() not in f.read_bytes(), f
    job_dir = job_dirs(cwd / "outputs" / "multirun" / "s")[0]
    config = yaml.safe_load((job_dir / ".hydra" / "config.yaml").read_text())
    assert config["logger"]["mlflow"] == {
        "tracking_uri": "${oc.env:MLFLOW_TRACKING_URI,sqlite:///outputs/mlflow.db}",
        "experiment": "${oc.env:MLFLOW_EXPERIMENT_NAME,mlxhydra}", "artifacts": True}
    versions = read_run(job_dir)["versions"]
    assert list(versions) == ["python", *PACKAGES]
    assert {k: versions[k] for k in PACKAGES} == {k: metadata.version(k) for k in PACKAGES}


def _job_config(output_dir: Path, overrides=()):
    from mlxhydra import compose

    cfg = OmegaConf.to_container(compose(["logger=mlflow", *overrides]), resolve=False)
    cfg["hydra"] = {"runtime": {"output_dir": str(output_dir)}}
    return OmegaConf.create(cfg)


def test_without_mlflows_environment_the_job_goes_to_the_embedded_store(sweep, tmp_path, monkeypatch):
    """The sweep's first job logged again by the callback, as Hydra calls it, in a directory
    with no MLflow environment."""
    from mlflow.tracking import MlflowClient

    from mlxhydra.tracking.mlflow_logger import MlflowLogger

    cwd, _, _ = sweep
    job_dir = shutil.copytree(job_dirs(cwd / "outputs" / "multirun" / "s")[0], tmp_path / "job")
    record = json.loads((job_dir / "run.json").read_text())
    (job_dir / "run.json").write_text(json.dumps({**record, "cwd": str(tmp_path), "job_num": None}))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    monkeypatch.chdir(tmp_path)
    MlflowLogger().on_job_end(_job_config(job_dir), None)
    db = tmp_path / "outputs" / "mlflow.db"
    logged = read_run(job_dir)["tracking"]["mlflow"]
    assert logged["tracking_uri"] == f"sqlite:///{db}" and logged["experiment"] == "mlxhydra"
    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    assert client.get_experiment_by_name("mlxhydra").experiment_id == logged["experiment_id"]
    assert client.get_run(logged["run_id"]).info.run_name == "job"


def test_a_store_that_fails_is_named_without_its_credentials(sweep, tmp_path, monkeypatch):
    """A server down behind a URI with credentials: the error in run.json and the log masks them."""
    from mlxhydra.tracking.mlflow_logger import MlflowLogger

    cwd, _, _ = sweep
    job_dir = shutil.copytree(job_dirs(cwd / "outputs" / "multirun" / "s")[1], tmp_path / "job")
    port = _free_port()  # nothing listens there: connection refused
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://user:{SECRET}@127.0.0.1:{port}")
    MlflowLogger().on_job_end(_job_config(job_dir), None)
    error = read_run(job_dir)["tracking"]["mlflow"]["error"]
    assert error.startswith("MlflowException: API request to "
                            f"http://user:***@127.0.0.1:{port}/api/2.0/mlflow/experiments/get-by-name failed")
    assert SECRET not in (job_dir / "run.json").read_text()
