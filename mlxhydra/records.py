"""Run records: atomic JSON files and what a run directory says about a run."""

import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Dict, Optional

PACKAGES = ("mlx", "mlx-lm", "hydra-core", "omegaconf", "mlxhydra")
RUN_RECORD = "run.json"


def now() -> str:
    """The current time, ISO 8601 with the UTC offset."""
    return datetime.now(timezone.utc).astimezone().isoformat(timespec="milliseconds")


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()  # read once, at import, before any thread writes files


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write bytes through a temporary file renamed into place.

    A reader sees the old file or the new one, never half of one.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp's 0600 would hide records from others
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON atomically (see write_bytes_atomic)."""
    text = json.dumps(data, indent=2, ensure_ascii=False, allow_nan=True, default=str) + "\n"
    write_bytes_atomic(path, text.encode("utf-8"))


def read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def versions() -> Dict[str, Optional[str]]:
    found: Dict[str, Optional[str]] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


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

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return None
    status = git("status", "--porcelain", "--untracked-files=no")
    return {
        "commit": commit.strip(),
        "dirty": bool(status.strip()) if status is not None else None,
        "root": (git("rev-parse", "--show-toplevel") or "").strip() or None,
    }


def max_rss_bytes() -> int:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024


def platform_info() -> Dict[str, Any]:
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


class RunRecord:
    """``run.json`` of one run: created as running, rewritten at each change."""

    def __init__(self, directory: Path, /, **fields: Any):
        self.path = Path(directory) / RUN_RECORD
        self.data: Dict[str, Any] = {"status": "running", "started": now(), "ended": None, **fields}
        self.save()

    def update(self, **fields: Any) -> None:
        self.data.update(fields)
        self.save()

    def finish(self, status: str, **fields: Any) -> None:
        self.data.update(fields, status=status, ended=now())
        self.save()

    def save(self) -> None:
        write_json_atomic(self.path, self.data)
