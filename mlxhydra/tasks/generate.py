"""``task=generate``: text from one or several prompts, with mlx-lm's generation options.

The text is streamed to stdout as it is produced (between ``==========``
lines, as ``mlx_lm.generate`` prints it); the log file, ``metrics.json`` and
``generations.jsonl`` keep the full text of every prompt.
"""

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Dict, List

from ..config.checks import SettingsCheck
from ..distributed.ranks import world
from ..errors import TaskError
from ..load.tokenizer import load_tokenizer
from .common import Metrics, TaskInput
from .draft import draft_problems, draft_vocabulary_problems, load_draft_model
from .generation import (
    Generation,
    generate_text,
    make_sampler_from,
    sampling_problems,
    string_list,
    string_list_problems,
)
from .kv_cache import kv_options, kv_problems, quantization_failure, require_servable_cache
from .prompts import (
    chat_template_text,
    context_length,
    encode_prompt,
    prompt_items,
    prompt_length_problems,
    prompt_problems,
    unescape,
)

log = logging.getLogger("mlxhydra")

# The tokenizer's files are checked with the settings, before any weight is read.
USES_TOKENIZER = True
GENERATIONS = "generations.jsonl"
RULE = "=" * 10  # mlx_lm.generate's separator around the streamed text
# Not printed on the console (a filter in conf/hydra/job_logging): the streamed text is there.
FILE_ONLY = {"file_only": True}
# Runs on a model sharded across the ranks of a distributed run (load.shard).
RUNS_SHARDED = True


def settings_problems(task: Dict[str, Any]) -> List[str]:
    """Every problem of task=generate's settings."""
    c = SettingsCheck(task)
    c.integer("max_tokens", allow_negative_one=True)
    c.problems += prompt_problems(c.task)
    c.problems += sampling_problems(c.task)
    c.problems += string_list_problems(c.task, "stop")
    c.problems += string_list_problems(c.task, "extra_eos_token")
    c.boolean("stream")
    c.problems += kv_problems(c.task)
    c.problems += draft_problems(c.task)
    return c.problems


def problems_with_model(task: Dict[str, Any], model_config: Dict[str, Any], model_dir: Path,
                        load: Dict[str, Any]) -> List[str]:
    """task=generate's sound settings against the model, before any weight is read.

    The prompts must fit the model's context (:func:`~.prompts.prompt_length_problems`)
    and a draft model must share its vocabulary (:func:`~.draft.draft_vocabulary_problems`).
    A tokenizer that cannot be loaded is named where the tokenizer files are checked.
    """
    try:
        tokenizer = load_tokenizer(model_dir, model_config,
                                   chat_template=chat_template_text(task.get("chat_template")),
                                   trust_remote_code=load.get("trust_remote_code") is True)
    except TaskError:
        return []
    return (prompt_length_problems(task, tokenizer, context_length(model_config))
            + draft_vocabulary_problems(task, tokenizer, model_config, load))


def _print(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def add_eos_tokens(tokenizer, tokens: List[str]) -> None:
    """``extra_eos_token``: more tokens that end generation (mlx-lm's ``add_eos_token``).

    Raises:
        TaskError: a token the tokenizer does not have.
    """
    for token in tokens:
        try:
            tokenizer.add_eos_token(token)
        except ValueError as e:
            raise TaskError(f"task.extra_eos_token={token!r}: {e}") from e


def totals(results: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Run-level metrics over several prompts: sums, token-weighted speeds, the peak memory."""
    prompt_tokens = sum(r["prompt_tokens"] for r in results)
    generated = sum(r["generation_tokens"] for r in results)
    prompt_seconds = sum(r["prompt_tokens"] / r["prompt_tps"] for r in results if r["prompt_tps"])
    gen_seconds = sum(r["generation_tokens"] / r["generation_tps"] for r in results
                      if r["generation_tps"])
    out = {
        "prompts": len(results),
        "prompt_tokens": prompt_tokens,
        "generation_tokens": generated,
        "prompt_tps": prompt_tokens / prompt_seconds if prompt_seconds else 0.0,
        "generation_tps": generated / gen_seconds if gen_seconds else 0.0,
        "peak_memory_gb": max(r["peak_memory_gb"] for r in results),
    }
    if "draft_tokens_accepted" in results[0]:
        out["draft_tokens_accepted"] = sum(r["draft_tokens_accepted"] for r in results)
    return out


def execute(job: TaskInput) -> Metrics:
    """Generate text for each prompt; the seed is reset to the job's seed before each one.

    Returns:
        Metrics: ``results`` (one per prompt: prompt, source, text,
        finish_reason, token counts, tokens/s, peak memory), the totals
        (prompts, prompt_tokens, generation_tokens, prompt_tps, generation_tps,
        peak_memory_gb) and, for a single prompt, its text and finish_reason;
        with a draft model, draft_model and draft_tokens_accepted.

    Raises:
        TaskError: unusable prompts, tokens or draft model.
    """
    import mlx.core as mx

    task = job.task
    require_servable_cache(job.model, kv_options(task))  # before any token, whatever the prompt length
    tokenizer = load_tokenizer(job.model_dir, job.model_config,
                               chat_template=chat_template_text(task.get("chat_template")),
                               trust_remote_code=job.trust_remote_code)
    add_eos_tokens(tokenizer, string_list(task.get("extra_eos_token")) or [])
    items = prompt_items(task)
    sampler, processors = make_sampler_from(task, tokenizer)
    # Under mlx.launch every rank generates; rank 0 alone prints and writes files.
    leads = world().leads
    stream = task["stream"] and leads
    how = Generation(
        max_tokens=task["max_tokens"], sampler=sampler, logits_processors=processors,
        stop=[unescape(s) for s in string_list(task.get("stop")) or []],
        on_text=_print if stream else None,
        num_draft_tokens=task.get("num_draft_tokens") or 3,
        options={**kv_options(task), "prefill_step_size": task.get("prefill_step_size") or 2048},
    )
    extra: Dict[str, Any] = {}
    if task.get("draft_model") is not None:
        how.draft_model, extra["draft_model"] = load_draft_model(task["draft_model"], job.load,
                                                                 tokenizer, job.model)
        if "hub" in extra["draft_model"]:
            job.hub["task.draft_model"] = extra["draft_model"]["hub"]
    results = []
    with open(job.run_dir / GENERATIONS if leads else os.devnull, "w", encoding="utf-8") as f:
        for i, item in enumerate(items):
            prompt = encode_prompt(tokenizer, task, item)
            if len(items) > 1:
                log.info("generate: prompt %d of %d (%s)", i + 1, len(items), item.source)
            mx.random.seed(job.seed)
            if stream:
                _print(RULE + "\n")
            try:
                out = generate_text(job.model, tokenizer, prompt, how)
            except (NotImplementedError, ValueError) as e:
                raise (quantization_failure(how.options, e) or e) from e
            if stream:
                _print("\n" + RULE + "\n")
            result = {"prompt": item.shown(), "source": item.source, **out}
            results.append(result)
            f.write(json.dumps(result, ensure_ascii=False) + "\n")
            f.flush()
            log.info(
                "generate: %d prompt tokens at %.1f tokens/s, %d generated at %.1f tokens/s "
                "(%s), peak memory %.3f GB", out["prompt_tokens"], out["prompt_tps"],
                out["generation_tokens"], out["generation_tps"], out["finish_reason"],
                out["peak_memory_gb"],
            )
            log.info("generate: text %r", out["text"], extra=FILE_ONLY if stream else None)
    metrics = totals(results)
    if len(results) == 1:
        metrics.update({k: v for k, v in results[0].items() if k not in ("prompt", "source")})
    metrics.update(extra, results=results)
    return metrics
