"""``outputs/latest`` and run names: finding a run without typing its path.

Every command that starts a run or a sweep points ``outputs/latest`` (in its
working directory) at it, and says at the end where it is. Subcommands
accept, for a run directory, a path, ``latest``, or a unique prefix of a
run's name (``20-45``, ``3_quant.bits=4``) found under ``outputs/``.
"""

import os
import secrets
from pathlib import Path
from typing import List, Optional, Tuple

from ..errors import RunDirError

OUTPUTS = "outputs"
LATEST = "latest"
# What this process started, (kind, directory): the command prints it at the end.
_started: List[Tuple[str, Path]] = []


def mark_latest(directory: Path, kind: str = "run", cwd: Optional[Path] = None) -> None:
    """Point ``<cwd>/outputs/latest`` at ``directory`` (atomically; never fails the run).

    Args:
        kind: ``run`` or ``sweep``, for the line the command ends with.
    """
    directory = Path(directory).resolve()
    _started.append((kind, directory))
    outputs = Path(cwd or os.getcwd()) / OUTPUTS
    try:
        outputs.mkdir(parents=True, exist_ok=True)
        tmp = outputs / f".{LATEST}.{secrets.token_hex(4)}"
        target = os.path.relpath(directory, outputs.resolve())
        os.symlink(target, tmp)
        os.replace(tmp, outputs / LATEST)
    except OSError:  # a read-only outputs/ or a filesystem without links: nothing to point
        pass


def started() -> Optional[Tuple[str, Path]]:
    """(kind, directory) of the run or sweep this process started first, if any."""
    return _started[0] if _started else None


def shown(path: Path) -> str:
    """``path`` relative to the current directory when inside it."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


# Folders under outputs/ that hold copies of records, not runs (trackers' artifacts); hidden
# folders (a resumed sweep's .attempts/) are left out too.
NOT_RUNS = {LATEST, "mlartifacts", "mlruns", "tensorboard"}


def all_run_dirs(root: Path) -> List[Path]:
    """Every directory holding a run.json under ``root`` (single runs and sweep jobs)."""
    root = Path(root)
    def kept(parts):
        return not NOT_RUNS & set(parts) and not any(part.startswith(".") for part in parts)

    return sorted(p.parent for p in root.rglob("run.json") if kept(p.relative_to(root).parts[:-1]))


def _unique_child(base: Path, prefix: str) -> Path:
    found = [p for p in base.iterdir() if p.is_dir() and p.name.startswith(prefix)] if base.is_dir() else []
    if len(found) != 1:
        raise RunDirError(f"{base / prefix}: no such directory" if not found else
                          f"{prefix}: {len(found)} directories in {base} start with it; type more of the name")
    return found[0]


def find_run(name: str, root: Optional[Path] = None) -> Path:
    """A run or sweep directory named by a path, ``latest`` (``latest/3_...`` for a sweep's job),
    or a unique prefix of its name under ``outputs/``.

    Raises:
        RunDirError: no directory, or several, match (they are named).
    """
    path = Path(name)
    if path.exists():
        return path
    outputs = Path(root) if root else Path.cwd() / OUTPUTS
    first, _, rest = name.partition("/")
    if first == LATEST:
        link = outputs / LATEST
        if not link.exists():
            raise RunDirError(f"latest: no {link} (no run started in this directory yet)")
        target = link.resolve()
        for part in [p for p in rest.split("/") if p]:
            target = target / part if (target / part).exists() else _unique_child(target, part)
        return target
    if "/" in name or not outputs.is_dir():
        raise RunDirError(f"{name}: no such directory")
    candidates = set()
    for run in all_run_dirs(outputs):
        for d in (run, run.parent):  # a job, or its sweep
            if d.name.startswith(name) and d != outputs:
                candidates.add(d)
    if not candidates:
        raise RunDirError(f"{name}: no such directory, and no run under {outputs} whose name starts with it")
    if len(candidates) > 1:
        names = ", ".join(sorted(shown(c) for c in candidates)[:5])
        raise RunDirError(f"{name}: {len(candidates)} runs start with it ({names}); type more of the name")
    return candidates.pop()
