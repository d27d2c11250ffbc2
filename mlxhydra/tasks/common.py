"""What the tasks share: their input, settings checks, tokenizer, data files, token chunks, progress."""

import contextlib
import hashlib
import json
import logging
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence

from ..config.model_source import embedded_models_dir
from ..errors import TaskError
from ..file_checks import exists, regular_file_problem
from .tokenizer_files import tokenizer_problems

log = logging.getLogger("mlxhydra")

Metrics = Dict[str, Any]


@dataclass
class TaskInput:
    """Everything a task gets: its validated settings and the loaded model.

    ``task``, ``load`` and ``seed`` are plain Python (the config resolved).
    """

    task: Dict[str, Any]
    seed: int
    load: Dict[str, Any]
    model: Any
    model_config: Dict[str, Any]  # with the quantization entry when quantized
    model_dir: Path
    run_dir: Path
    # Hugging Face ids the task resolves (task.draft_model, task.reference): the setting ->
    # its resolution (mlxhydra.config.hub.HubSnapshot.record()), recorded in run.json's "hub".
    hub: Dict[str, Any] = field(default_factory=dict)

    @property
    def trust_remote_code(self) -> bool:
        """This command's consent to run the model directory's code (never a record's)."""
        return self.load.get("trust_remote_code") is True


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json",
                   "spiece.model", "tiktoken.model")


def has_tokenizer(model_dir: Path) -> bool:
    """Whether a model directory has one of the tokenizer files mlx-lm reads (regular files)."""
    model_dir = Path(model_dir)
    return (any(not regular_file_problem(model_dir / f) for f in TOKENIZER_FILES)
            or bool(list(model_dir.glob("*.tiktoken"))))


def load_tokenizer(model_dir: Path, config: Optional[dict] = None,
                   chat_template: Optional[str] = None, *, trust_remote_code: bool = False):
    """Load the model directory's tokenizer with mlx-lm, as ``mlx_lm.load`` does.

    Args:
        model_dir: The model directory.
        config: The model config; its ``eos_token_id`` is passed on as mlx-lm does.
        chat_template: A Jinja chat template that replaces the tokenizer's (passed
            as mlx-lm's server passes ``--chat-template``).
        trust_remote_code: This command's ``load.trust_remote_code``, handed to
            transformers (which never asks again, and never runs code without it).

    Returns:
        mlx-lm's ``TokenizerWrapper``.

    Raises:
        TaskError: the directory has no tokenizer, or it cannot be read.
    """
    from mlx_lm.utils import load_tokenizer as mlx_load_tokenizer

    model_dir = Path(model_dir)
    if not has_tokenizer(model_dir):
        raise TaskError(
            f"{model_dir}: no tokenizer (expected tokenizer.json or tokenizer_config.json "
            "next to config.json); this task needs one"
        )
    problems = tokenizer_problems(model_dir, trust_remote_code)
    if problems:
        raise TaskError("; ".join(problems))
    eos = (config or {}).get("eos_token_id")
    try:
        extra: Dict[str, Any] = {"trust_remote_code": bool(trust_remote_code)}
        if chat_template is not None:
            extra["chat_template"] = chat_template
        return mlx_load_tokenizer(model_dir, extra, eos_token_ids=eos)
    except Exception as e:  # transformers raises many kinds
        detail = " ".join(str(e).split())[:300]
        raise TaskError(
            f"{model_dir}: the tokenizer cannot be loaded: {type(e).__name__}: {detail}"
        ) from e


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


def read_texts(path: Path, lines: bool = False, key: str = "task.data") -> List[str]:
    """The documents of a data file.

    A ``.jsonl``/``.json`` file holds one JSON object per line with a ``text``
    field (one document each); any other file is plain text: one document, or
    with ``lines`` one document per non-blank line.

    Raises:
        TaskError: naming the file and line, for bad JSON or a missing ``text``.
    """
    raw = path.read_text(encoding="utf-8")
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
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
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


def token_chunks(tokenizer, texts: List[str], sequence_length: int, num_samples: int,
                 path: Path):
    """Tokenize documents and cut them into ``[samples, sequence_length]`` rows.

    Each document is encoded and ends with the eos token (mlx-lm's
    ``TextDataset.process``); documents are joined in file order and the
    leftover tokens at the end are dropped. ``num_samples`` <= 0 keeps every row.

    Raises:
        TaskError: when the file is too short for one row.
    """
    import mlx.core as mx
    from mlx_lm.tuner.datasets import TextDataset

    dataset = TextDataset([{"text": t} for t in texts], tokenizer)
    wanted = sequence_length * num_samples if num_samples > 0 else None
    tokens: List[int] = []
    with long_documents_allowed():
        for i in range(len(dataset)):
            tokens.extend(dataset.process(dataset[i])[0])
            if wanted is not None and len(tokens) >= wanted:
                break
    rows = len(tokens) // sequence_length
    if num_samples > 0:
        rows = min(rows, num_samples)
    if rows == 0:
        raise TaskError(
            f"task.data: {path} has {len(tokens)} tokens, fewer than "
            f"task.sequence_length={sequence_length}"
        )
    return mx.array(tokens[: rows * sequence_length]).reshape(rows, sequence_length)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 24):
            h.update(block)
    return "sha256:" + h.hexdigest()


def progress(iterable: Iterable[Any], total: int, desc: str):
    """A tqdm bar on stderr, shown only when stderr is a terminal."""
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, disable=not sys.stderr.isatty(), leave=False)


MAX_INTEGER = 2**31 - 1  # the largest MLX array dimension (int32)


class SettingsCheck:
    """Collects every problem of a task's settings, each as ``task.KEY=VALUE: expected ...``.

    Each task's ``check(task)`` uses one and returns its ``problems``; the
    validate stage reports them together before any weight is read. Other
    nodes use it with their own ``prefix`` (``quant.dwq``).
    """

    def __init__(self, task: Mapping[str, Any], prefix: str = "task"):
        self.task = task
        self.prefix = prefix
        self.problems: List[str] = []

    def fail(self, key: str, expected: str) -> None:
        self.problems.append(f"{self.prefix}.{key}={self.task.get(key)!r}: expected {expected}")

    def integer(self, key: str, minimum: int = 1, allow_negative_one: bool = False,
                maximum: int = MAX_INTEGER, optional: bool = False) -> None:
        """An integer from ``minimum`` (1: positive, 0: or 0) to ``maximum``, or -1 when
        allowed (null when optional).

        The default maximum is what an MLX array dimension holds (2**31 - 1).
        """
        value = self.task.get(key)
        if value is None and optional:
            return
        if type(value) is int and value > maximum:
            self.fail(key, f"at most {maximum}")
            return
        ok = type(value) is int and (value >= minimum or (allow_negative_one and value == -1))
        if not ok:
            expect = ("a positive integer" if minimum == 1 else "a positive integer or 0"
                      if minimum == 0 else f"at least {minimum}")
            self.fail(key, expect + (" or -1" if allow_negative_one else "")
                      + (" or null" if optional else ""))

    def number(self, key: str, low: float, high: Optional[float] = None, expected: str = "",
               optional: bool = False) -> None:
        """A finite number in [low, high] (null allowed when optional)."""
        value = self.task.get(key)
        if value is None and optional:
            return
        ok = (isinstance(value, (int, float)) and not isinstance(value, bool)
              and math.isfinite(value) and value >= low and (high is None or value <= high))
        if not ok:
            self.fail(key, expected or (f"a number in {low}..{high}" if high is not None
                                        else f"a number >= {low}"))

    def boolean(self, key: str) -> None:
        if not isinstance(self.task.get(key, False), bool):
            self.fail(key, "true or false")

    def choice(self, key: str, choices: Sequence[Any], default: Any = None) -> None:
        if self.task.get(key, default) not in choices:
            self.fail(key, "one of " + ", ".join(
                "null" if c is None else str(c).lower() if isinstance(c, bool) else str(c)
                for c in choices))

    def data_file(self, key: str = "data") -> None:
        """An explicit data file must exist and not be empty (null: the default file)."""
        value = self.task.get(key)
        if value is None:
            return
        if not isinstance(value, str) or not value:
            self.fail(key, "a file path or null")
            return
        path = Path(value).expanduser().absolute()
        problem = regular_file_problem(path)  # a FIFO or a device is never opened
        if problem:
            self.problems.append(f"{self.prefix}.{key}={value}: {path} {problem}")
        elif path.stat().st_size == 0:
            self.problems.append(f"{self.prefix}.{key}: {path} is empty")


def peak_memory_gb() -> float:
    import mlx.core as mx

    return mx.get_peak_memory() / 1e9
