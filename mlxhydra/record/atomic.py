"""Atomic files and directories: a reader sees the old version or the new one, never half."""

import json
import os
import shutil
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Set


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()  # read once, at import, before any thread writes files

# Temporary files and directories being written now: removed by remove_unfinished()
# when the command exits without waiting for the thread writing them.
_unfinished: Set[Path] = set()
_unfinished_lock = threading.Lock()


def _track(path: Path, add: bool) -> None:
    with _unfinished_lock:
        (_unfinished.add if add else _unfinished.discard)(Path(path))


def remove_unfinished() -> None:
    """Remove the temporary files and directories of writes still under way."""
    with _unfinished_lock:
        paths = list(_unfinished)
    for path in paths:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            try:
                path.unlink()
            except OSError:
                pass


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write bytes through a temporary file in the same directory, renamed into place.

    On any error (a full disk, an interruption) the temporary file is removed
    and the previous file, if any, is left whole.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    _track(Path(tmp), True)
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
    finally:
        _track(Path(tmp), False)


@contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """A temporary path next to ``path`` for a writer that takes a path (``mx.save_safetensors``):
    synced and renamed to ``path`` on success, removed on error. It keeps ``path``'s suffix,
    which such writers otherwise append."""
    path = Path(path)
    fd, name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    _track(tmp, True)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_UMASK)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
        _track(tmp, False)


def json_text(data: Any) -> str:
    """The JSON text mlxhydra writes: indented, UTF-8, NaN allowed, unknown types as str."""
    return json.dumps(data, indent=2, ensure_ascii=False, allow_nan=True, default=str) + "\n"


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON atomically (see :func:`write_bytes_atomic`)."""
    write_bytes_atomic(path, json_text(data).encode("utf-8"))


def read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


@contextmanager
def atomic_directory(target: Path) -> Iterator[Path]:
    """Fill a temporary directory next to ``target``, renamed to ``target`` on success.

    Yields the temporary directory. On error nothing is left behind; if
    ``target`` appeared meanwhile it is never replaced (FileExistsError).
    The directory gets the permissions a plain ``mkdir`` would give (the umask
    is respected), not mkdtemp's 0700.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    _track(tmp, True)
    try:
        os.chmod(tmp, 0o777 & ~_UMASK)
        yield tmp
        if target.exists() or target.is_symlink():
            raise FileExistsError(f"{target}: appeared while it was being written; not replaced")
        os.rename(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        _track(tmp, False)
