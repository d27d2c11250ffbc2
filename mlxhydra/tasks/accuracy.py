"""``task=accuracy``: exact-match accuracy of greedy answers on ``{prompt, answer}`` lines."""

import json
import logging
import time
from typing import Any, Dict, List

from ..config.checks import SettingsCheck
from ..errors import TaskError
from ..load.data_files import find_data, read_jsonl
from ..load.tokenizer import load_tokenizer
from ..progress import progress
from ..stats import wilson_interval  # the interval the summary figure draws, too
from .common import Metrics, TaskInput, peak_memory_gb
from .generation import Generation, generate_text
from .prompts import PromptItem, chat_problems, encode_prompt

log = logging.getLogger("mlxhydra")

# The tokenizer's files are checked with the settings, before any weight is read.
USES_TOKENIZER = True

DEFAULT_DATA = "accuracy.jsonl"
PREDICTIONS = "predictions.jsonl"


def settings_problems(task: Dict[str, Any]) -> List[str]:
    """Every problem of task=accuracy's settings."""
    c = SettingsCheck(task)
    c.integer("max_tokens")
    c.integer("num_samples", allow_negative_one=True)
    c.data_file()
    c.problems += chat_problems(c.task)
    return c.problems


def execute(job: TaskInput) -> Metrics:
    """Greedy-decode each prompt (stop at eos or a newline) and compare with the answer.

    The prediction and the answer are compared after stripping surrounding
    whitespace. Each prediction is written to ``<run_dir>/predictions.jsonl``.

    Returns:
        Metrics: accuracy, accuracy_ci95_low/high (Wilson), correct, total, data,
        predictions, seconds, peak_memory_gb.

    Raises:
        TaskError: missing, empty or malformed data file.
    """
    from mlx_lm.sample_utils import make_sampler

    task = job.task
    max_tokens, limit = task["max_tokens"], task["num_samples"]
    path = find_data(task.get("data"), job.model_dir, DEFAULT_DATA, "task.data")
    rows = read_jsonl(path, ("prompt", "answer"))
    if not rows:
        raise TaskError(f"task.data: {path} holds no JSON lines")
    if limit > 0:
        rows = rows[:limit]
    tokenizer = load_tokenizer(job.model_dir, job.model_config, trust_remote_code=job.trust_remote_code)
    how = Generation(max_tokens=max_tokens, sampler=make_sampler(0.0), stop=["\n"])
    start = time.perf_counter()
    correct = 0
    predictions = job.run_dir / PREDICTIONS
    with open(predictions, "w", encoding="utf-8") as f:
        for line, row in progress(rows, len(rows), "accuracy", unit="rows"):
            item = PromptItem(f"task.data line {line}", prompt=str(row["prompt"]))
            out = generate_text(job.model, tokenizer, encode_prompt(tokenizer, task, item), how)
            ok = out["text"].strip() == str(row["answer"]).strip()
            correct += ok
            f.write(json.dumps({"line": line, "prompt": row["prompt"], "answer": row["answer"],
                                "prediction": out["text"], "correct": ok},
                               ensure_ascii=False) + "\n")
    total = len(rows)
    low, high = wilson_interval(correct, total)
    metrics = {
        "accuracy": correct / total, "accuracy_ci95_low": low, "accuracy_ci95_high": high,
        "correct": correct, "total": total, "data": str(path),
        "predictions": str(predictions), "seconds": time.perf_counter() - start,
        "peak_memory_gb": peak_memory_gb(),
    }
    log.info("accuracy: %d/%d = %.4f (95%% interval %.4f-%.4f) on %s", correct, total,
             metrics["accuracy"], low, high, path.name)
    return metrics
