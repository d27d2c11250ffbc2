"""What a record says about where a job ran: time, versions, platform, git state, memory."""

import functools
import platform
import resource
import subprocess
import sys
from contextlib import contextmanager
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

# The packages whose version can change a result: the model's code and kernels (mlx, mlx-lm),
# the config (hydra-core, omegaconf), tokenization (transformers, tokenizers), the weights
# read (safetensors, huggingface-hub's snapshots), the arithmetic of tasks (numpy) and
# lm-evaluation-harness's tasks and scoring (lm-eval). One not installed is recorded as None.
PACKAGES = ("mlx", "mlx-lm", "hydra-core", "omegaconf", "mlxhydra", "transformers", "tokenizers",
            "numpy", "huggingface-hub", "safetensors", "lm-eval")


def now() -> str:
    """The current time, ISO 8601 with the UTC offset."""
    return datetime.now(timezone.utc).astimezone().isoformat(timespec="milliseconds")


# What records name as the command while ``mlxhydra.run()`` runs a job: its call, since the
# process's own command line (a notebook's kernel) says nothing about the run.
_called_as: List[str] = []


def command_line() -> str:
    """The command a record names: this process's command line, shell-quoted, or the API call."""
    import shlex  # here: the --help path imports this module

    if _called_as:
        return _called_as[-1]
    return shlex.join(getattr(sys, "orig_argv", sys.argv))


@contextmanager
def called_as(call: str) -> Iterator[None]:
    """Records made meanwhile name ``call`` (``mlxhydra.run('model=./llama')``) as their command."""
    _called_as.append(call)
    try:
        yield
    finally:
        _called_as.pop()


def versions() -> Dict[str, Optional[str]]:
    """Python's version and each of :data:`PACKAGES`' (None when not installed)."""
    return dict(_versions())


@functools.lru_cache(maxsize=1)
def _versions() -> Dict[str, Optional[str]]:
    # Once per process (each look-up scans the installed distributions: ~0.1 s a job):
    # the modules a job runs are the ones this process imported, whatever is installed later.
    found: Dict[str, Optional[str]] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def startup_seconds(since_command: float) -> Optional[float]:
    """Seconds from the process's start to the command's (Python, imports), ``since_command``
    seconds ago; None under the Python API (the process is the caller's) or where unknown."""
    age = None if _called_as else process_seconds()
    return None if age is None else max(0.0, age - since_command)


def process_seconds() -> Optional[float]:
    """Seconds since this process started (Linux), else None."""
    import os
    import time

    try:
        with open("/proc/self/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        started = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # starttime, field 22 of proc(5)
        return max(0.0, time.clock_gettime(time.CLOCK_BOOTTIME) - started)
    except (OSError, ValueError, IndexError, AttributeError):
        return None


def git_state(directory: Path) -> Optional[Dict[str, Any]]:
    """Commit and dirty flag of the git repository holding ``directory``, if any."""
    def git(*args: str) -> Optional[str]:
        try:
            out = subprocess.run(
                ["git", "-C", str(directory), *args],
                capture_output=True, text=True, timeout=10,
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout if out.returncode == 0 else None

    # One call for the commit and the root (a subprocess costs ~30 ms a job).
    head = git("rev-parse", "HEAD", "--show-toplevel")
    if head is None:
        return None
    commit, root = (head.splitlines() + ["", ""])[:2]
    status = git("status", "--porcelain", "--untracked-files=no")
    return {
        "commit": commit.strip(),
        "dirty": bool(status.strip()) if status is not None else None,
        "root": root.strip() or None,
    }


def max_rss_bytes() -> int:
    """The process's peak resident memory so far."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024


def platform_info() -> Dict[str, Any]:
    """Operating system, machine and MLX device."""
    info: Dict[str, Any] = {
        "system": platform.system(),
        "release": platform.release(),
        "machine": platform.machine(),
        "processor": platform.processor() or None,
    }
    try:
        import mlx.core as mx

        info["mlx_device"] = str(mx.default_device())
        info["mlx_device_info"] = {
            k: v for k, v in mx.device_info().items() if isinstance(v, (int, float, str))
        }
    except Exception as e:  # the record must be written even when mlx is broken
        info["mlx_device"] = f"unavailable: {e}"
    return info


def resources() -> Dict[str, Any]:
    """MLX's peak memory and the process's peak RSS, for the end of a record."""
    peak = None
    try:
        import mlx.core as mx

        peak = mx.get_peak_memory()
    except Exception:  # a broken mlx must not hide the job's own outcome
        pass
    return {"peak_memory_bytes": peak, "max_rss_bytes": max_rss_bytes()}
