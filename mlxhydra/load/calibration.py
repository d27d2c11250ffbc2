"""Calibration data of the calibrated methods: which file, its tokens, the rows a method uses.

mlx-lm's tools download their calibration text (``mlx_lm.quant.utils.load_data``)
or a Hugging Face dataset (``mlx_lm.dwq``). Here the text is a local file:
``quant.calibration.data``, else the task's own data file (``task=perplexity``
and ``task=kl``), else the model directory's ``eval.txt``, else the embedded
model's (the embedded corpus). The rows are chosen as mlx-lm chooses them, so
the same text and seed give the same rows as mlx-lm's tool.
"""

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np

from ..errors import ConfigError
from .data_files import file_sha256, find_data, long_documents_allowed, read_texts

DEFAULT_NAME = "eval.txt"
# Tasks whose ``data`` is text that a model reads (their default file is eval.txt too).
TEXT_TASKS = ("perplexity", "kl")


@dataclass
class CalibrationText:
    """A calibration file read and tokenized: every token, in file order."""

    path: Path
    sha256: str
    tokens: List[int]

    def rows(self, sequence_length: int) -> np.ndarray:
        """The tokens cut into ``[rows, sequence_length]`` (the leftover dropped).

        Raises:
            ConfigError: fewer tokens than one row.
        """
        n = len(self.tokens) // sequence_length
        if n == 0:
            raise ConfigError(
                f"quant.calibration.sequence_length={sequence_length}: {self.path} has only "
                f"{len(self.tokens)} tokens (set a shorter sequence_length or a longer file)")
        return np.array(self.tokens[: n * sequence_length], dtype=np.int32).reshape(n, sequence_length)

    def describe(self) -> Dict[str, Any]:
        return {"data": str(self.path), "data_sha256": self.sha256, "data_tokens": len(self.tokens)}


def calibration_file(value: Optional[str], task: Optional[Mapping[str, Any]], model_dir: Path) -> Path:
    """The calibration text's path.

    Args:
        value: ``quant.calibration.data`` (None: the default, see the module doc).
        task: The run's task settings, when there is a run.
        model_dir: The model directory.

    Raises:
        TaskError: the file is missing or empty.
    """

    value, key = calibration_source(value, task)
    return find_data(value, model_dir, DEFAULT_NAME, key)


def calibration_source(value: Optional[str], task: Optional[Mapping[str, Any]]) -> Tuple[Optional[str], str]:
    """``(file setting, its key)``: ``quant.calibration.data``, or the text task's ``task.data``."""
    if value is None and task and task.get("name") in TEXT_TASKS and task.get("data"):
        return task["data"], "task.data"
    return value, "quant.calibration.data"


def read_calibration(path: Path, tokenizer, key: str = "quant.calibration.data") -> CalibrationText:
    """Tokenize a calibration file as ``mlx_lm.quant.utils.load_data`` tokenizes its text.

    A plain-text file is one document; a ``.jsonl`` file is one document per
    ``text`` field, their tokens joined in file order. ``key`` is the setting
    that named the file, for messages.
    """

    tokens: List[int] = []
    with long_documents_allowed():
        for text in read_texts(path, key=key):
            tokens.extend(tokenizer.encode(text))
    return CalibrationText(path, file_sha256(path), tokens)


def choose_rows(rows: np.ndarray, num_samples: int):
    """``num_samples`` rows in a random order drawn from mlx's global generator (-1: all).

    The same choice as ``mlx_lm.quant.utils.load_data`` (``mx.random.permutation``),
    so with the generator in the same state the same rows come out.
    """
    import mlx.core as mx

    tokens = mx.array(rows)
    segments = mx.random.permutation(tokens.shape[0])
    if num_samples > 0:
        segments = segments[:num_samples]
    return tokens[segments]


def split_rows(rows: np.ndarray, num_samples: int, num_valid: int) -> Tuple[list, list]:
    """Training and validation samples, as ``mlx_lm.quant.dwq.load_data`` draws them.

    numpy's global generator permutes the rows; the first ``num_samples`` train
    and the next ``num_valid`` validate. Each is ``(tokens, 0)``, the items
    ``mlx_lm.tuner.trainer.iterate_batches`` reads.
    """
    perm = np.random.permutation(len(rows))
    train = [(rows[i].tolist(), 0) for i in perm[:num_samples]]
    valid = [(rows[i].tolist(), 0) for i in perm[num_samples: num_samples + num_valid]]
    return train, valid


def rows_sha256(rows: Any) -> str:
    """Fingerprint of the token rows a method used, in their order."""
    return "sha256:" + hashlib.sha256(np.asarray(rows, dtype=np.int32).tobytes()).hexdigest()
