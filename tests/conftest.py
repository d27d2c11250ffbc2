"""Shared fixtures: small models built with mlx-lm's own classes, and the real CLI."""

import importlib.util
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))  # tiny_data, train_tiny
sys.path.insert(0, str(ROOT / "tests"))  # helpers, conftest

from helpers.random_models import BASE, build  # noqa: E402

# MLflow's own environment picks the store of logger=mlflow: the suite's runs go where each test
# says, never to a tracking server the developer's shell names.
for _name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME"):
    os.environ.pop(_name, None)

# The installed package's copy: a non-editable install serves model=tiny from site-packages.
EMBEDDED_TINY = Path(importlib.util.find_spec("mlxhydra").origin).parent / "models" / "tiny"


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config):
    """``-n auto`` (pyproject's addopts): one worker per CPU this process may use, at most 4
    (many tests start processes of their own). PYTEST_XDIST_AUTO_NUM_WORKERS still decides."""
    if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS"):
        return None
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, 4))


def make_model(directory: Path, model_type: str = "llama", **kwargs) -> Path:
    """Build a random model (see tests/helpers/random_models.py) and return its directory.

    kwargs: config overrides, plus seed, shards, quantize, mode, group_size, dtype.
    """
    options = {k: kwargs.pop(k) for k in ("seed", "shards", "quantize", "mode", "group_size", "dtype") if k in kwargs}
    config = {**BASE.get(model_type, {"model_type": model_type}), **kwargs}
    build(directory, config, **options)
    return Path(directory)


@pytest.fixture(scope="session")
def llama_dir(tmp_path_factory) -> Path:
    """A random float32 llama (2 layers, hidden 64, vocab 256)."""
    return make_model(tmp_path_factory.mktemp("llama") / "llama")


def run_cli(*args: str, cwd: Path, env: dict | None = None, timeout: int = 300,
            module: str = "mlxhydra") -> subprocess.CompletedProcess:
    """Run ``python -m mlxhydra ARGS`` for real in ``cwd``; output captured as text."""
    full_env = dict(os.environ)
    full_env.pop("HYDRA_FULL_ERROR", None)
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=cwd, env=full_env,
        capture_output=True, text=True, timeout=timeout,
    )


def run_dirs(cwd: Path) -> list[Path]:
    """Every run directory (holding run.json) under cwd/outputs, oldest first."""
    return sorted((p.parent for p in (Path(cwd) / "outputs").rglob("run.json")), key=os.path.getmtime)


def sweep_job_dirs(sweep: Path) -> list[Path]:
    """A sweep's job directories (``<num>_...``), by job number."""
    return sorted((p for p in Path(sweep).iterdir() if p.is_dir() and p.name[0].isdigit()),
                  key=lambda p: int(p.name.split("_")[0]))


def read_run(run_dir: Path) -> dict:
    return json.loads((Path(run_dir) / "run.json").read_text())


def default_signals() -> None:
    """In the child: the signals' default dispositions (a test run under nohup ignores SIGHUP)."""
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL if signum != signal.SIGINT else signal.default_int_handler)
