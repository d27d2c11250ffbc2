"""task=lora's data: a directory of JSON-lines splits in mlx-lm's formats, checked row by row with
the model's tokenizer before any weight is read, then read with mlx-lm's own dataset classes.

mlx-lm reads every line of ``train.jsonl``, ``valid.jsonl`` and ``test.jsonl`` as JSON and picks
the format from the first row (``create_dataset``): ``{"prompt", "completion"}``
(completions), ``{"messages"}`` (chat; both may carry ``"tools"``) or ``{"text"}``. A bad row
there surfaces mid-training, or silently (rows over ``max_seq_length`` are truncated); here each
is one line naming the file and line.
"""

import json
import types
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

from ..load.data_files import file_sha256
from .lora_settings import SPLITS

SHOWN_PER_FILE = 5  # problem lines per file; the rest are counted


def dataset_config(s: Mapping[str, Any], test: bool = False) -> types.SimpleNamespace:
    """What mlx-lm's ``load_dataset``/``create_dataset`` read from mlx_lm.lora's arguments."""
    return types.SimpleNamespace(
        data=str(Path(s["data"]).expanduser().absolute()), train=True, test=test,
        mask_prompt=s["mask_prompt"], text_feature=s["text_feature"],
        prompt_feature=s["prompt_feature"], completion_feature=s["completion_feature"],
        chat_feature=s["chat_feature"])


def split_files(s: Mapping[str, Any]) -> Dict[str, Path]:
    """The split files training reads: train and valid, and test with ``test=true``."""
    root = Path(s["data"]).expanduser().absolute()
    wanted = SPLITS if s["test"] else SPLITS[:2]
    return {split: root / f"{split}.jsonl" for split in wanted}


def fingerprints(s: Mapping[str, Any]) -> Dict[str, str]:
    """``{split: "sha256:..."}`` of the split files."""
    return {split: file_sha256(path) for split, path in split_files(s).items()}


def row_format(row: Any, s: Mapping[str, Any]) -> Optional[str]:
    """The format mlx-lm's ``create_dataset`` picks for a row (its order), or None."""
    if not isinstance(row, dict):
        return None
    if s["prompt_feature"] in row and s["completion_feature"] in row:
        return "completions"
    if s["chat_feature"] in row:
        return "chat"
    if s["text_feature"] in row:
        return "text"
    return None


def _fields(fmt: str, s: Mapping[str, Any]) -> Tuple[str, ...]:
    return {"completions": (s["prompt_feature"], s["completion_feature"]),
            "chat": (s["chat_feature"],), "text": (s["text_feature"],)}[fmt]


def _field_problem(row: Dict[str, Any], fmt: str, s: Mapping[str, Any]) -> Optional[str]:
    """A row of the file's format that lacks a field or holds the wrong kind of value."""
    for name in _fields(fmt, s):
        if name not in row:
            return f"has no {name!r} (the file's format is {fmt}, from line 1)"
        value = row[name]
        if fmt == "chat":
            if not (isinstance(value, list) and value and all(isinstance(m, dict) for m in value)):
                return f"{name!r} is not a non-empty list of messages"
        elif not isinstance(value, str):
            return f"{name!r} is {type(value).__name__}, expected text"
    return None


def _token_problems(n: int, row: Dict[str, Any], dataset, s: Mapping[str, Any]) -> List[Tuple[int, str]]:
    """A row mlx-lm's dataset class cannot tokenize, or one over ``max_seq_length`` tokens."""
    try:
        tokens, _ = dataset.process(row)
    except Exception as e:  # the chat template's and the tokenizer's many errors
        return [(n, f"cannot be tokenized: {' '.join(str(e).split())}")]
    if len(tokens) > s["max_seq_length"]:
        return [(n, f"{len(tokens)} tokens, more than task.max_seq_length={s['max_seq_length']} "
                    "(mlx-lm would truncate it)")]
    return []


def read_rows(path: Path) -> Tuple[List[Tuple[int, Any]], List[Tuple[int, str]]]:
    """``(line number, parsed row)`` of every line, and ``(line number, problem)`` of those that
    are not JSON.

    mlx-lm parses every line (a blank one too) with ``json.loads``.
    """
    rows, problems = [], []
    with open(path, "rb") as f:
        raw_lines = f.read().split(b"\n")
    if raw_lines and raw_lines[-1] == b"":
        raw_lines.pop()  # the newline that ends the last line
    for n, raw in enumerate(raw_lines, 1):
        try:
            rows.append((n, json.loads(raw.decode("utf-8"))))
        except UnicodeDecodeError as e:
            problems.append((n, f"not UTF-8 text (byte {e.start + 1})"))
        except json.JSONDecodeError as e:
            problems.append((n, "a blank line (mlx-lm reads each line as JSON)"
                             if not raw.strip() else f"invalid JSON: {e.msg}"))
    return rows, problems


def file_problems(path: Path, s: Mapping[str, Any], tokenizer) -> List[str]:
    """Every problem of one split file: JSON, format, fields, token length, row count."""
    from mlx_lm.tuner.datasets import create_dataset

    rows, problems = read_rows(path)
    if not rows and not problems:
        return [f"task.data: {path} is empty (expected JSON lines in mlx-lm's formats)"]
    fmt = row_format(rows[0][1], s) if rows else None
    if rows and fmt is None:
        found = ", ".join(map(repr, rows[0][1])) if isinstance(rows[0][1], dict) else type(rows[0][1]).__name__
        problems.append((rows[0][0], (
            f"unknown format: expected {s['text_feature']!r}, "
            f"{s['prompt_feature']!r} and {s['completion_feature']!r}, or {s['chat_feature']!r} "
            f"(mlx-lm's text, completions and chat formats); found {found}")))
    elif fmt == "text" and s["mask_prompt"]:
        problems.append((0, "task.mask_prompt=true: the text format has no prompt to mask "
                         "(mlx-lm refuses it); use completions or chat rows"))
    elif fmt is not None:
        dataset = create_dataset([rows[0][1]], tokenizer, dataset_config(s))
        for n, row in rows:
            why = _field_problem(row, fmt, s) if isinstance(row, dict) else "is not a JSON object"
            problems += [(n, why)] if why else _token_problems(n, row, dataset, s)
    problems = [f"line {n}: {p}" if n else p for n, p in sorted(problems, key=lambda np_: np_[0])]
    shown = [f"task.data: {path} {p}" if p.startswith("line") else p
             for p in problems[:SHOWN_PER_FILE]]
    if len(problems) > SHOWN_PER_FILE:
        shown.append(f"task.data: {path}: {len(problems) - SHOWN_PER_FILE} more problem lines")
    if not problems and len(rows) < s["batch_size"]:
        shown.append(f"task.data: {path} has {len(rows)} rows, fewer than task.batch_size="
                     f"{s['batch_size']} (mlx-lm's batches need at least that many)")
    return shown


def data_problems(s: Mapping[str, Any], tokenizer) -> List[str]:
    """Every problem of the data directory's split files (checked with the model's tokenizer)."""
    problems = []
    for path in split_files(s).values():
        problems += file_problems(path, s, tokenizer)
    return problems


def load_splits(s: Mapping[str, Any], tokenizer):
    """``(train, valid, test)`` with mlx-lm's ``load_dataset`` (test is [] without test=true)."""
    from mlx_lm.tuner.datasets import load_dataset

    return load_dataset(dataset_config(s, test=s["test"]), tokenizer)
