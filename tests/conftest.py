"""Shared fixtures: small models built with mlx-lm's own classes, and the real CLI."""

import atexit
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))  # tiny_data, train_tiny
sys.path.insert(0, str(ROOT / "tests"))  # helpers, conftest

from helpers.forkserver import needs_fresh_interpreter, runtime_only  # noqa: E402
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
    """Run ``python -m mlxhydra ARGS`` for real in ``cwd``; output captured as text.

    The command runs in a process of its own: a fork of tests/helpers/forkserver.py, which has
    the heavy imports done, or a fresh interpreter where a fork would differ from one (and
    always with MLXHYDRA_TEST_FORK=0).
    """
    full_env = dict(os.environ)
    full_env.pop("HYDRA_FULL_ERROR", None)
    full_env.update(env or {})
    if os.environ.get("MLXHYDRA_TEST_FORK", "1") != "0" and not needs_fresh_interpreter(full_env):
        result = fork_server_for(full_env).run(module, list(args), cwd=Path(cwd), env=full_env,
                                               timeout=timeout)
        if result is not None:
            return result
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=cwd, env=full_env,
        capture_output=True, text=True, timeout=timeout,
    )


class ForkServer:
    """A fork server (tests/helpers/forkserver.py) for one environment, started on first use."""

    cpu_s = 0.0  # the CPU seconds of the commands all servers ran (a profile's children miss them)

    def __init__(self, env: dict):
        self.env = env
        self.process: subprocess.Popen | None = None
        self.socket_path: str | None = None
        self.lock = threading.Lock()

    def start(self) -> None:
        directory = tempfile.mkdtemp(prefix="mlxhydra-forkserver-")
        self.socket_path = os.path.join(directory, "socket")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "helpers.forkserver", self.socket_path], cwd=ROOT / "tests",
            env=self.env, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        if self.process.stdout.readline() != b"ready\n":
            raise RuntimeError(f"the fork server did not start (exit {self.process.wait()})")
        atexit.register(shutil.rmtree, directory, True)
        atexit.register(self.stop)

    def stop(self, wait: bool = True) -> None:
        """The server stops once the commands it runs have ended."""
        if self.process and self.process.poll() is None:
            self.process.stdin.close()
            if wait:
                self.process.wait(timeout=300)

    def run(self, module: str, args: list, cwd: Path, env: dict,
            timeout: float) -> subprocess.CompletedProcess | None:
        """The command's result, or None where the server refused it (run it fresh)."""
        with self.lock:
            if self.process is None:
                self.start()
        out_dir = tempfile.mkdtemp(prefix="mlxhydra-cli-")
        paths = {name: os.path.join(out_dir, name) for name in ("stdout", "stderr")}
        request = {"module": module, "args": args, "cwd": str(cwd), "env": env, **paths}
        argv = [sys.executable, "-m", module, *args]
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
                try:
                    conn.connect(self.socket_path)
                except OSError:  # stopped meanwhile (fork_server_for keeps a few)
                    return None
                conn.sendall(json.dumps(request).encode() + b"\n")
                replies = conn.makefile("r")
                reply = json.loads(replies.readline())
                if "fallback" in reply:
                    if os.environ.get("MLXHYDRA_TEST_FORK_LOG"):  # which commands ran fresh, and why
                        with open(os.environ["MLXHYDRA_TEST_FORK_LOG"], "a") as log:
                            log.write(json.dumps({"args": args, "why": reply["fallback"]}) + "\n")
                    return None
                conn.settimeout(timeout)
                try:
                    line = replies.readline()
                except BaseException as stopped:  # the timeout, or the test run interrupted
                    os.kill(reply["pid"], signal.SIGKILL)
                    if not isinstance(stopped, socket.timeout):
                        raise
                    conn.settimeout(None)
                    line = None  # killed: its output so far goes with the timeout
                    conn.makefile("r").readline()  # its end (a timed-out reader reads no more)
            stdout, stderr = (Path(paths[n]).read_text() for n in ("stdout", "stderr"))
            if line is None:
                raise subprocess.TimeoutExpired(argv, timeout, stdout, stderr)
            ended = json.loads(line)
            ForkServer.cpu_s += ended["cpu_s"]
            return subprocess.CompletedProcess(argv, ended["returncode"], stdout, stderr)
        finally:
            shutil.rmtree(out_dir, ignore_errors=True)


# One server per environment as the interpreter sees it at start-up (variables read at import
# time, such as HF_HOME, differ between tests): the most recent few stay up.
FORK_SERVERS: dict = {}
FORK_SERVERS_KEPT = 4
_fork_servers_lock = threading.Lock()


def fork_server_for(env: dict) -> ForkServer:
    key = tuple(sorted((k, v) for k, v in env.items() if not runtime_only(k)))
    with _fork_servers_lock:
        server = FORK_SERVERS.pop(key, None) or ForkServer(env)
        FORK_SERVERS[key] = server  # the most recently used last
        while len(FORK_SERVERS) > FORK_SERVERS_KEPT:
            FORK_SERVERS.pop(next(iter(FORK_SERVERS))).stop(wait=False)
    return server


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


def wait_for(predicate, timeout: float = 240.0, interval: float = 0.02) -> bool:
    """Poll ``predicate`` until it is true (True) or ``timeout`` seconds have passed (False)."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():
            return True
        time.sleep(interval)
    return False
