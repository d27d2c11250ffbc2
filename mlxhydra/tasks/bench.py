"""``task=bench``: prompt and generation tokens/s and peak memory, as ``mlx_lm.benchmark``."""

import logging
import time
from typing import Any, Dict, List

from .._upstream import clear_eos_tokens
from ..config.checks import SettingsCheck
from ..load.tokenizer import load_tokenizer
from ..progress import progress
from .common import Metrics, TaskInput

log = logging.getLogger("mlxhydra")

# The tokenizer's files are checked with the settings, before any weight is read.
USES_TOKENIZER = True
# Runs on a model sharded across the ranks of a distributed run (load.shard).
RUNS_SHARDED = True

KEYS = ("prompt_tps", "generation_tps", "peak_memory")


def settings_problems(task: Dict[str, Any]) -> List[str]:
    """Every problem of task=bench's settings."""
    c = SettingsCheck(task)
    for key in ("prompt_tokens", "generation_tokens", "trials", "prefill_step_size"):
        c.integer(key)
    return c.problems


def execute(job: TaskInput) -> Metrics:
    """Time mlx-lm's ``stream_generate`` on random prompt tokens, as ``mlx_lm.benchmark`` does.

    One warm-up, then ``task.trials`` timed runs of ``prompt_tokens`` random
    prompt tokens and exactly ``generation_tokens`` generated tokens (eos is
    ignored); the statistics are mlx-lm's and are averaged over the trials.

    Returns:
        Metrics: prompt_tps, generation_tps, peak_memory_gb (averages), trials
        (each trial's values and total seconds), prompt_tokens, generation_tokens.
    """
    import mlx.core as mx
    from mlx_lm.generate import stream_generate

    task, config = job.task, job.model_config
    prompt_tokens, generation_tokens = task["prompt_tokens"], task["generation_tokens"]
    trials, prefill = task["trials"], task["prefill_step_size"]
    tokenizer = load_tokenizer(job.model_dir, config, trust_remote_code=job.trust_remote_code)
    clear_eos_tokens(tokenizer)  # as mlx_lm.benchmark: never stop early
    vocab_size = config.get("vocab_size") or config["text_config"]["vocab_size"]
    mx.random.seed(job.seed)
    prompt = mx.random.randint(0, vocab_size, (1, prompt_tokens)).tolist()[0]

    def once():
        for response in stream_generate(job.model, tokenizer, prompt, max_tokens=generation_tokens,
                                         prefill_step_size=prefill):
            pass
        return response

    once()  # warm-up
    results = []
    for _ in progress(range(trials), trials, "bench", unit="trials"):
        tic = time.perf_counter()
        r = once()
        results.append({**{k: getattr(r, k) for k in KEYS}, "total_time": time.perf_counter() - tic,
                        "generation_tokens": r.generation_tokens})
    avg = {k: sum(r[k] for r in results) / trials for k in KEYS}
    metrics = {
        "prompt_tps": avg["prompt_tps"], "generation_tps": avg["generation_tps"],
        "peak_memory_gb": avg["peak_memory"], "prompt_tokens": prompt_tokens,
        "generation_tokens": generation_tokens, "trials": results,
    }
    log.info("bench: prompt %.1f tokens/s, generation %.1f tokens/s, peak memory %.3f GB "
             "(%d+%d tokens, %d trials)", metrics["prompt_tps"], metrics["generation_tps"],
             metrics["peak_memory_gb"], prompt_tokens, generation_tokens, trials)
    return metrics
