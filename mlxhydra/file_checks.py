"""What a path is, found without reading it, and said in a few words.

``Path.is_file()`` and ``Path.exists()`` raise for a name too long and answer
False for a dangling symlink or a symlink loop without saying which; opening a
FIFO or a device to read it can block or never end. These helpers stat the
path once (following symlinks) and describe what is wrong in the words an
error message needs. Standard library only (Hydra's plugins import this).
"""

import codecs
import errno
import os
import stat
from pathlib import Path
from typing import Callable, Optional, Tuple, Union

PathLike = Union[str, Path]

_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISSOCK, "a socket"), (stat.S_ISREG, "a file"))


def stat_path(path: PathLike) -> Tuple[Optional[os.stat_result], str]:
    """``(stat, "")`` of ``path`` (symlinks followed), or ``(None, why it cannot be)``."""
    try:
        return os.stat(path), ""
    except OSError as e:
        if e.errno == errno.ENOENT and os.path.islink(path):
            return None, f"is a dangling symlink (to {os.readlink(path)})"
        if e.errno == errno.ENOENT:
            return None, "does not exist"
        if e.errno == errno.ELOOP:
            return None, "is a symlink loop"
        if e.errno == errno.ENAMETOOLONG:
            return None, "has a name too long for the file system"
        if e.errno == errno.ENOTDIR:
            return None, "does not exist (a part of the path is a file, not a directory)"
        if e.errno == errno.EACCES:
            return None, "cannot be reached: permission denied"
        return None, f"cannot be read: {e.strerror or e}"


def kind(info: os.stat_result) -> str:
    """``a file``, ``a directory``, ``a FIFO (named pipe)``, ``a character device``..."""
    return next((name for test, name in _KINDS if test(info.st_mode)), "not a regular file")


def _not_a(path: PathLike, test: Callable[[int], bool], noun: str) -> Optional[str]:
    info, why = stat_path(path)
    if info is None:
        return why
    return None if test(info.st_mode) else f"is {kind(info)}, not {noun}"


def regular_file_problem(path: PathLike) -> Optional[str]:
    """Why ``path`` is not an existing regular file (``"is a directory, not a regular file"``...), or None."""
    return _not_a(path, stat.S_ISREG, "a regular file")


def directory_problem(path: PathLike) -> Optional[str]:
    """Why ``path`` is not an existing directory, or None."""
    return _not_a(path, stat.S_ISDIR, "a directory")


def exists(path: PathLike) -> bool:
    """True when something (a dangling symlink included) is at ``path``; never raises."""
    try:
        os.lstat(path)
    except (OSError, ValueError):
        return False
    return True


def first_non_directory(path: PathLike) -> Optional[Path]:
    """The first existing part of ``path`` that is not a directory (why ``mkdir -p`` fails)."""
    path = Path(os.path.abspath(path))
    for part in reversed([path, *path.parents]):
        info, _ = stat_path(part)
        if info is None:
            return None
        if not stat.S_ISDIR(info.st_mode):
            return part
    return None


def not_utf8_text(byte: int, offset: int, line: int) -> str:
    """The words for a file that is not UTF-8 text: ``is not UTF-8 text (byte 0xff at offset 3, line 1)``."""
    return f"is not UTF-8 text (byte 0x{byte:02x} at offset {offset}, line {line})"


def utf8_problem(path: PathLike, chunk_size: int = 1 << 24) -> Optional[str]:
    """Why a regular file is not UTF-8 text (:func:`not_utf8_text`), or None; read in chunks."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = newlines = 0  # bytes and newlines before the chunk
    with open(path, "rb") as f:
        while True:
            chunk = f.read(chunk_size)
            try:
                decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as e:  # e.object: the bytes held back from before + chunk
                held = len(e.object) - len(chunk)
                line = newlines + chunk[:max(0, e.start - held)].count(b"\n") + 1
                return not_utf8_text(e.object[e.start], offset - held + e.start, line)
            if not chunk:
                return None
            offset += len(chunk)
            newlines += chunk.count(b"\n")
