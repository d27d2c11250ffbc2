"""Data files of tasks and calibration: found (the model directory's default, else the embedded
model's), read as documents or JSON lines with one-line errors, fingerprinted."""

import contextlib
import hashlib
import json
import logging
from pathlib import Path
from typing import Iterable, List, Optional

from ..config.model_source import embedded_models_dir
from ..errors import TaskError
from ..file_checks import exists, not_utf8_text, regular_file_problem


def find_data(value: Optional[str], model_dir: Path, default_name: str, key: str) -> Path:
    """Resolve a task's data file.

    Args:
        value: ``task.data`` (a path, relative to the working directory), or None.
        model_dir: The model directory, searched first for the default file.
        default_name: File used when ``value`` is None (``eval.txt``, ``accuracy.jsonl``).
        key: The config key, for messages (``task.data``).

    Returns:
        The absolute path of an existing, non-empty file.

    Raises:
        TaskError: naming the file, when it is missing or empty.
    """
    if value is None:
        candidates = [Path(model_dir) / default_name, embedded_models_dir() / "tiny" / default_name]
        own = candidates[0]
        if exists(own) and regular_file_problem(own):  # never fall back past a FIFO, a dangling link...
            raise TaskError(f"{key}=null: {own} {regular_file_problem(own)}")
        found = next((c for c in candidates if not regular_file_problem(c)), None)
        if found is None:
            raise TaskError(
                f"{key}=null: no default {default_name} in {model_dir} or the embedded tiny "
                f"model; set {key}=<file>"
            )
        path = found
    else:
        path = Path(value).expanduser().absolute()
        problem = regular_file_problem(path)
        if problem:
            raise TaskError(f"{key}={value}: {path} {problem}")
    if path.stat().st_size == 0:
        raise TaskError(f"{key}: {path} is empty")
    return path


def read_text(path: Path, key: str) -> str:
    """A data file's text: every task's data, prompt and calibration file is read here.

    Raises:
        TaskError: naming ``key``, the file, and the first byte that is not UTF-8.
    """
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        where = not_utf8_text(raw[e.start], e.start, raw.count(b"\n", 0, e.start) + 1)
        raise TaskError(f"{key}: {path} {where}") from None


def read_texts(path: Path, lines: bool = False, key: str = "task.data") -> List[str]:
    """The documents of a data file.

    A ``.jsonl``/``.json`` file holds one JSON object per line with a ``text``
    field (one document each); any other file is plain text: one document, or
    with ``lines`` one document per non-blank line.

    Raises:
        TaskError: naming the file and line, for bad JSON or a missing ``text``.
    """
    raw = read_text(path, key)
    if path.suffix not in (".jsonl", ".json"):
        if not raw.strip():
            raise TaskError(f"{key}: {path} holds no text")
        return [ln for ln in raw.splitlines() if ln.strip()] if lines else [raw]
    texts = [str(row["text"]) for _, row in read_jsonl(path, ("text",), key)]
    if not texts:
        raise TaskError(f"{key}: {path} holds no JSON lines")
    return texts


def read_jsonl(path: Path, fields: Iterable[str], key: str = "task.data") -> List[tuple]:
    """``(line_number, object)`` for each non-blank line of a JSON-lines file.

    Raises:
        TaskError: naming the file and line for bad JSON or a missing field.
    """
    rows = []
    for n, line in enumerate(read_text(path, key).splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise TaskError(f"{key}: {path} line {n}: invalid JSON: {e.msg}") from None
        missing = [f for f in fields if not isinstance(row, dict) or f not in row]
        if missing:
            raise TaskError(f"{key}: {path} line {n}: missing field(s) {', '.join(missing)}")
        rows.append((n, row))
    return rows


@contextlib.contextmanager
def long_documents_allowed():
    """Silence transformers' warning that a document is longer than model_max_length.

    Documents are cut into rows after tokenizing, so the warning is noise here.
    """
    quiet = logging.getLogger("transformers.tokenization_utils_base")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        yield
    finally:
        quiet.setLevel(level)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 24):
            h.update(block)
    return "sha256:" + h.hexdigest()
