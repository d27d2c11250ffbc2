"""``task=perplexity``: perplexity ± standard error with mlx-lm's ``eval_ppl``."""

import contextlib
import io
import logging
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping

from ..config.checks import SettingsCheck
from ..load.data_files import file_sha256, find_data, read_texts
from ..load.tokenizer import load_tokenizer
from ..progress import progress, ticking
from .common import Metrics, TaskInput, peak_memory_gb, token_chunks
from .kv_cache import ThroughCache, kv_problems, uses_cache

log = logging.getLogger("mlxhydra")

# The tokenizer's files are checked with the settings, before any weight is read.
USES_TOKENIZER = True
# Runs on a model sharded across the ranks of a distributed run (load.shard).
RUNS_SHARDED = True

DEFAULT_DATA = "eval.txt"


def eval_data_problems(task: Mapping[str, Any]) -> List[str]:
    """The data settings shared with task=kl."""
    c = SettingsCheck(task)
    c.integer("sequence_length", minimum=2)
    c.integer("num_samples", allow_negative_one=True)
    c.integer("batch_size")
    c.boolean("lines")
    c.data_file()
    return c.problems


def settings_problems(task: Dict[str, Any]) -> List[str]:
    """Every problem of task=perplexity's settings."""
    c = SettingsCheck(task)
    c.problems += eval_data_problems(c.task)
    c.problems += kv_problems(c.task)
    return c.problems


def eval_data(task: Dict[str, Any], tokenizer, model_dir: Path):
    """Resolve, read and tokenize ``task.data`` into ``[samples, sequence_length]`` rows.

    Returns:
        (tokens, path): the token rows and the data file's path.

    Raises:
        TaskError: missing, empty or malformed data file.
    """
    path = find_data(task.get("data"), model_dir, DEFAULT_DATA, "task.data")
    texts = read_texts(path, task["lines"])
    tokens = token_chunks(tokenizer, texts, task["sequence_length"], task["num_samples"], path)
    return tokens, path


def compute_perplexity(model, tokens, batch_size: int) -> Dict[str, Any]:
    """mlx-lm's ``eval_ppl`` on token rows, timed.

    Its raw ``Processed i/N batches`` prints are dropped: mlxhydra's progress
    (a bar with an ETA on a terminal, else a log line a minute) counts the
    batches instead (:func:`mlxhydra.progress.ticking`).

    Returns:
        perplexity, perplexity_stderr (delta method), tokens_evaluated,
        tokens_per_second, seconds.
    """
    from mlx_lm.perplexity import eval_ppl

    batches = -(-tokens.shape[0] // batch_size)
    start = time.perf_counter()
    with ticking(model, progress(range(batches), batches, "perplexity")) as counted, \
            contextlib.redirect_stdout(io.StringIO()):
        ppl, se = eval_ppl(counted, tokens, batch_size=batch_size)
    seconds = time.perf_counter() - start
    evaluated = tokens.shape[0] * (tokens.shape[1] - 1)
    return {
        "perplexity": ppl,
        "perplexity_stderr": se,
        "tokens_evaluated": evaluated,
        "tokens_per_second": evaluated / seconds if seconds > 0 else None,
        "seconds": seconds,
    }


def execute(job: TaskInput) -> Metrics:
    """Perplexity of the model on ``task.data`` (default: the model's ``eval.txt``).

    Returns:
        Metrics: perplexity, perplexity_stderr, tokens_evaluated, samples,
        sequence_length, tokens_per_second, seconds, peak_memory_gb, data, data_sha256.
    """
    model = ThroughCache(job.model, job.task) if uses_cache(job.task) else job.model
    tokenizer = load_tokenizer(job.model_dir, job.model_config, trust_remote_code=job.trust_remote_code)
    tokens, path = eval_data(job.task, tokenizer, job.model_dir)
    out = compute_perplexity(model, tokens, job.task["batch_size"])
    out.update(
        samples=tokens.shape[0], sequence_length=tokens.shape[1],
        peak_memory_gb=peak_memory_gb(), data=str(path), data_sha256=file_sha256(path),
    )
    log.info(
        "perplexity: %.4f ± %.4f on %d tokens of %s (%.0f tokens/s, peak memory %.3f GB)",
        out["perplexity"], out["perplexity_stderr"], out["tokens_evaluated"], path.name,
        out["tokens_per_second"] or 0.0, out["peak_memory_gb"],
    )
    return out
