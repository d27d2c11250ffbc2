"""Signals during a long MLX call, and faults injected into the file system, through the real command.

- SIGINT, SIGTERM and SIGHUP while one MLX call runs for minutes (the
  ``slow_model`` helper: a graph of matrix products evaluated in one call):
  answered within seconds, ``interrupted`` recorded, exit 130/143/129; a
  SIGKILL right after SIGTERM finds the record already written; an
  interrupted sweep still writes its summary.
- Permissions that bite (running as root, the command drops the capabilities
  that bypass them with ``setpriv``), a full disk (a small tmpfs, mounted when
  the machine allows it), a weight file replaced while it is read, the umask
  of a saved model.
"""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, List, Tuple

import pytest

from conftest import EMBEDDED_TINY, ROOT, default_signals, make_model, read_run, run_dirs
from helpers.privileges import privileges_dropped
from helpers.summary_sweeps import two_job_kl_sweep
from test_faults import wait_for_loading  # run.json says running and lists the weight files

pytestmark = pytest.mark.slow

HELPERS = ROOT / "tests" / "helpers"
SLOW = "load.model_class=slow_model:Model"
NEVER = ("Traceback", "Error executing job", "HYDRA_FULL_ERROR")


def env_with(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env["PYTHONPATH"] = os.pathsep.join([str(HELPERS), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(extra)
    return env


def start(args: List[str], cwd: Path, prefix: List[str] = (), **extra) -> subprocess.Popen:
    return subprocess.Popen([*prefix, sys.executable, "-m", "mlxhydra", *args], cwd=cwd,
                            env=env_with(**extra), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=default_signals)


def assert_clean(stderr: str) -> None:
    for never in NEVER:
        assert never not in stderr, stderr


# --- signals --------------------------------------------------------------------------------

@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143),
                                          (signal.SIGHUP, 129)])
def test_a_signal_during_a_long_mlx_call_is_answered_at_once(tmp_path, signum, code):
    proc = start([SLOW], tmp_path)
    try:
        run_dir = wait_for_loading(tmp_path, proc)
        time.sleep(1.0)  # inside the one long mx.eval (it would run for hours)
        sent = time.monotonic()
        proc.send_signal(signum)
        _, stderr = proc.communicate(timeout=60)
        answered = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
    name = signal.Signals(signum).name
    assert proc.returncode == code, stderr
    assert answered < 10, f"{name} answered after {answered:.1f} s"  # about 1 s; the machine is shared
    assert stderr.strip().splitlines()[-1] == f"mlxhydra: interrupted by {name}"
    assert_clean(stderr)
    record = read_run(run_dir)
    assert (record["status"], record["error"]) == ("interrupted", f"interrupted by {name}")
    assert record["ended"] is not None and "quantization" not in record
    assert not list(run_dir.rglob("*.tmp")) and not (run_dir / "metrics.json").exists()


def test_sigkill_soon_after_sigterm_finds_the_record_written(tmp_path):
    """A cluster's SIGTERM, then SIGKILL after a grace period: never a record left running."""
    proc = start([SLOW], tmp_path)
    try:
        run_dir = wait_for_loading(tmp_path, proc)
        time.sleep(1.0)
        proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and read_run(run_dir)["status"] == "running":
            time.sleep(0.05)
        proc.kill()
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    record = read_run(run_dir)
    assert (record["status"], record["error"]) == ("interrupted", "interrupted by SIGTERM")


def interrupt_sweep(cwd: Path, *signals: int) -> Tuple[subprocess.Popen, str, Path]:
    """A 3-job sweep of the slow model, sent ``signals`` 0.05 s apart once its first job loads;
    the process, its stderr and the sweep directory."""
    proc = start(["-m", "seed=0,1,2", SLOW], cwd)
    try:
        wait_for_loading(cwd, proc)
        time.sleep(1.0)
        for n, signum in enumerate(signals):
            if n:
                time.sleep(0.05)  # the summary's figure alone takes longer (matplotlib's import)
            proc.send_signal(signum)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    [sweep] = (cwd / "outputs" / "multirun").glob("*/*")
    return proc, stderr, sweep


def summary_statuses(sweep: Path) -> List[Tuple[str, str, str]]:
    """summary.csv's first three columns (job, seed, status), one tuple a job."""
    rows = [line.split(",") for line in (sweep / "summary.csv").read_text().splitlines()[1:]]
    return [(r[0], r[1], r[2]) for r in rows]


FIRST_INTERRUPTED = [("0", "0", "interrupted"), ("1", "1", "missing"), ("2", "2", "missing")]


def test_an_interrupted_sweep_writes_its_summary(tmp_path):
    proc, stderr, sweep = interrupt_sweep(tmp_path, signal.SIGTERM)
    assert proc.returncode == 143, stderr
    assert_clean(stderr)
    assert summary_statuses(sweep) == FIRST_INTERRUPTED


def test_ctrl_c_twice_during_a_sweep_writes_the_tables_and_says_the_figure_was_skipped(tmp_path):
    """The second SIGINT lands while the first is handled (record, summary): the tables are
    written all the same, and one line says summary.png was skipped and how to draw it."""
    proc, stderr, sweep = interrupt_sweep(tmp_path, signal.SIGINT, signal.SIGINT)
    assert proc.returncode == 130, stderr
    assert_clean(stderr)
    assert summary_statuses(sweep) == FIRST_INTERRUPTED
    assert (sweep / "summary.md").is_file() and not list(sweep.glob(".summary*"))
    said = [line for line in stderr.splitlines() if "summary" in line]
    assert said == ["mlxhydra: summary.png skipped (interrupted again); draw it with: "
                    f"mlxhydra summarize {sweep.relative_to(tmp_path)}"], stderr
    assert stderr.strip().splitlines()[-1] == "mlxhydra: interrupted by SIGINT"


@pytest.mark.parametrize("when", ["before_the_summary", "while_the_job_recorded", "none"])
def test_a_second_signal_never_costs_the_tables(tmp_path, monkeypatch, when):
    """However early the second Ctrl-C lands (here: before the summary's own imports, or while
    the job recorded the first), summary.csv and summary.md are written and only the figure is
    skipped; without a second signal the figure is drawn."""
    from mlxhydra.sweeps import policy

    sweep = two_job_kl_sweep(tmp_path / "sweep")
    real = policy.summarize

    def signalled_first(*args, **kwargs):
        if when == "before_the_summary":
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)  # Python runs the handler at once, between two bytecodes
        return real(*args, **kwargs)

    monkeypatch.setattr(policy, "summarize", signalled_first)
    monkeypatch.setattr(policy, "_active", {})
    # Python's own Ctrl-C handler, also where the test run ignores SIGINT (started in the background)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        policy._summarize_stopped(sweep, None, again=when == "while_the_job_recorded")
        restored = signal.getsignal(signal.SIGINT)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert (sweep / "summary.csv").read_text().splitlines()[0].startswith("job,")
    assert (sweep / "summary.md").is_file()
    assert (sweep / "summary.png").exists() is (when == "none")
    assert policy.skipped_summary() == (None if when == "none" else sweep)
    assert restored is signal.default_int_handler  # the summary's handlers are gone


# --- permissions that bite ------------------------------------------------------------------

@pytest.fixture
def tiny(tmp_path) -> Path:
    return Path(shutil.copytree(EMBEDDED_TINY, tmp_path / "tiny"))


@pytest.mark.parametrize("case", ["unreadable_weights", "outputs_read_only", "save_read_only"])
def test_permission_denied_is_one_line_naming_the_path(tmp_path, tiny, case):
    prefix = privileges_dropped()
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    args, locked = [f"model={tiny}"], None
    if case == "unreadable_weights":
        locked, mode = tiny / "model.safetensors", 0o000
        says = [f"{locked}: permission denied"]
    elif case == "outputs_read_only":
        locked, mode = cwd / "outputs", 0o555
        locked.mkdir()
        says = ["hydra.run.dir=", "cannot be created: Permission denied"]
    else:
        locked, mode = tmp_path / "readonly", 0o555
        locked.mkdir()
        args += ["task=save", f"task.path={locked / 'saved'}"]
        says = [f"task.path={locked / 'saved'}: cannot be written: Permission denied",
                "nothing was left behind"]
    locked.chmod(mode)
    try:
        proc = start(args, cwd, prefix)
        _, stderr = proc.communicate(timeout=240)
    finally:
        locked.chmod(0o755)
    assert proc.returncode == 1, stderr
    assert_clean(stderr)
    assert any(all(t in line for t in says) for line in stderr.splitlines()), stderr
    records = run_dirs(cwd)
    if case == "outputs_read_only":
        assert not records and "could not write the run record" in stderr
    else:
        [run_dir] = records
        assert read_run(run_dir)["status"] == "failed"
        assert all(t in read_run(run_dir)["error"] for t in says)
    if case == "save_read_only":
        assert list(locked.iterdir()) == []  # nothing partial, no temporary copy


# --- a full disk ----------------------------------------------------------------------------

@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB tmpfs, unmounted afterwards; skipped where mounting is not permitted."""
    mount = tmp_path / "disk"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2M", "tmpfs", str(mount)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs to fill a disk here: {result.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def fill(directory: Path) -> None:
    with open(directory / "filler", "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass


def test_save_onto_a_full_disk_names_the_target_and_leaves_nothing(tmp_path, tiny, small_disk):
    target = small_disk / "saved"
    fill_to = small_disk / "half"
    fill_to.mkdir()
    (fill_to / "filler").write_bytes(b"\0" * (1024 * 1024))  # 1 of 2 MiB: the 1.3 MB model won't fit
    proc = start([f"model={tiny}", "task=save", f"task.path={target}"], tmp_path)
    _, stderr = proc.communicate(timeout=240)
    assert proc.returncode == 1, stderr
    assert_clean(stderr)
    line = stderr.strip().splitlines()[-1]
    assert line.startswith(f"task.path={target}: cannot be written: ") and "nothing was left behind" in line
    assert sorted(p.name for p in small_disk.iterdir()) == ["half"]
    [run_dir] = run_dirs(tmp_path)
    assert read_run(run_dir)["status"] == "failed" and read_run(run_dir)["error"] == line


def run_gated(model: Path, cwd: Path, gate: Path, meanwhile: Callable[[], None]):
    """Run ``model`` with the slow model's gate closed; once the weights are being read,
    do ``meanwhile()``, open the gate and let the run end. Returns (run_dir, process, stderr)."""
    proc = start([f"model={model}", SLOW], cwd, SLOW_MODEL_MATMULS="0", SLOW_MODEL_GATE=str(gate))
    try:
        run_dir = wait_for_loading(cwd, proc)  # fingerprinted, now being read
        meanwhile()
        gate.touch()
        _, stderr = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
    return run_dir, proc, stderr


def test_a_full_disk_while_the_run_records_says_so(tmp_path, small_disk):
    """The disk fills during the load: the run fails and its message says run.json could not be updated."""
    run_dir, proc, stderr = run_gated(make_model(tmp_path / "m"), small_disk, tmp_path / "go",
                                      lambda: fill(small_disk))
    assert proc.returncode == 1, stderr
    assert_clean(stderr)
    line = stderr.strip().splitlines()[-1]
    assert f"cannot update {run_dir}/run.json: No space left on device" in line
    assert "it may still say running" in line
    assert read_run(run_dir)["status"] == "running"  # the last record that could be written, whole
    assert not list(run_dir.rglob("*.tmp"))


# --- weights replaced while read, permissions of what is saved ------------------------------

def test_a_weight_file_replaced_during_the_run_never_gives_a_completed_record(tmp_path):
    model = make_model(tmp_path / "m")
    replacement = make_model(tmp_path / "other", seed=1) / "model.safetensors"
    run_dir, proc, stderr = run_gated(model, tmp_path, tmp_path / "go",
                                      lambda: os.replace(replacement, model / "model.safetensors"))
    assert proc.returncode == 1, stderr
    assert_clean(stderr)
    record = read_run(run_dir)
    assert record["status"] == "failed"
    assert record["error"].startswith(f"{model / 'model.safetensors'} changed while the run read it (")
    assert "inode" in record["error"] and record["error"] in stderr


def test_a_saved_model_gets_the_permissions_the_umask_gives(tmp_path, tiny):
    (tiny / "tokenizer.json").chmod(0o600)  # a copy keeping this mode would ignore the umask
    target = tmp_path / "saved"
    proc = subprocess.Popen([sys.executable, "-m", "mlxhydra", f"model={tiny}", "task=save",
                             f"task.path={target}"], cwd=tmp_path, env=env_with(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: os.umask(0o027))
    _, stderr = proc.communicate(timeout=240)
    assert proc.returncode == 0, stderr
    assert target.stat().st_mode & 0o777 == 0o750
    modes = {p.name: p.stat().st_mode & 0o777 for p in target.iterdir()}
    assert "tokenizer.json" in modes and "model.safetensors" in modes
    assert set(modes.values()) == {0o640}, modes
