"""``task=generate``: text from a prompt or chat messages, with mlx-lm's sampler."""

import logging
from typing import Any, Dict, List, Optional

from ..errors import TaskError
from .common import Metrics, SettingsCheck, TaskInput, load_tokenizer

log = logging.getLogger("mlxhydra")

# The tokenizer's files are checked with the settings, before any weight is read.
USES_TOKENIZER = True


def check_prompt(check: SettingsCheck) -> None:
    """The prompt settings shared with task=accuracy: chat, prompt or messages."""
    task = check.task
    check.choice("chat", ("auto", True, False), default="auto")
    messages = task.get("messages")
    if messages is not None:
        if not isinstance(messages, list) or not messages or not all(
            isinstance(m, dict) and {"role", "content"} <= set(m)
            and isinstance(m["role"], str) and isinstance(m["content"], str) for m in messages
        ):
            check.problems.append("task.messages: expected a non-empty list of {role, content} items")
        elif task.get("chat", "auto") is False:
            check.problems.append("task.messages needs task.chat=auto or true (a chat template)")
    system = task.get("system_prompt")
    if system is not None and not isinstance(system, str):
        check.fail("system_prompt", "a string or null")


def check_sampling(check: SettingsCheck) -> None:
    """Sampling settings: temperature, top_p, min_p, top_k, repetition_penalty."""
    check.number("temperature", 0.0, expected=">= 0", optional=True)
    check.number("top_p", 0.0, 1.0, expected="0..1 (0 or 1: off)", optional=True)
    check.number("min_p", 0.0, 1.0, expected="0..1", optional=True)
    top_k = check.task.get("top_k")
    if top_k is not None:
        check.integer("top_k", minimum=0)
    penalty = check.task.get("repetition_penalty")
    check.number("repetition_penalty", 0.0, expected="> 0, or null (off)", optional=True)
    if penalty == 0 and type(penalty) in (int, float):  # mlx-lm divides by it
        check.fail("repetition_penalty", "> 0, or null (off)")


def check(task: Dict[str, Any]) -> List[str]:
    """Every problem of task=generate's settings."""
    c = SettingsCheck(task)
    c.integer("max_tokens")
    check_prompt(c)
    if task.get("messages") is None:
        prompt = task.get("prompt")
        if not isinstance(prompt, str) or not prompt:
            c.fail("prompt", "a non-empty string (or set task.messages)")
    check_sampling(c)
    return c.problems


def make_prompt(tokenizer, task: Dict[str, Any]) -> List[int]:
    """The prompt tokens for ``task.prompt``/``task.messages`` and ``task.chat``.

    ``chat: auto`` applies the tokenizer's chat template when it has one (as
    ``mlx_lm.generate`` does); ``true`` requires one; ``false`` encodes the
    prompt as plain text. ``messages`` (a list of ``{role, content}``) always
    need a chat template.

    Raises:
        TaskError: a chat template required but absent.
    """
    chat, prompt, messages = task.get("chat", "auto"), task.get("prompt"), task.get("messages")
    use_chat = tokenizer.has_chat_template if chat == "auto" and messages is None else chat is not False
    if use_chat and not tokenizer.has_chat_template:
        what = "task.messages" if messages is not None else "task.chat=true"
        raise TaskError(f"{what}: the model's tokenizer has no chat template")
    if not use_chat:
        return tokenizer.encode(prompt)
    if messages is None:
        messages = ([{"role": "system", "content": task["system_prompt"]}]
                    if task.get("system_prompt") else []) + [{"role": "user", "content": prompt}]
    return list(tokenizer.apply_chat_template(messages, add_generation_prompt=True))


def make_sampler_from(task: Dict[str, Any]):
    """mlx-lm's sampler and logits processors for the task's (checked) sampling settings."""
    from mlx_lm.sample_utils import make_logits_processors, make_sampler

    temp = float(task.get("temperature") or 0.0)
    top_p = float(task.get("top_p") or 0.0)
    min_p = float(task.get("min_p") or 0.0)
    top_k = task.get("top_k") or 0
    penalty = task.get("repetition_penalty")
    processors = make_logits_processors(repetition_penalty=penalty) if penalty else None
    return make_sampler(temp, top_p=top_p, min_p=min_p, top_k=top_k), processors


def generate_text(model, tokenizer, prompt: List[int], max_tokens: int, sampler,
                  logits_processors=None, stop: Optional[str] = None) -> Dict[str, Any]:
    """Run mlx-lm's ``stream_generate`` and collect the text and its statistics.

    Args:
        stop: Stop once the text holds this string (it is cut off there).

    Returns:
        text, finish_reason, prompt/generation token counts, tokens/s, peak memory (GB).
    """
    from mlx_lm.generate import stream_generate

    text, last = "", None
    for last in stream_generate(model, tokenizer, prompt, max_tokens=max_tokens,
                                sampler=sampler, logits_processors=logits_processors):
        text += last.text
        if stop is not None and stop in text:
            text = text[: text.index(stop)]
            break
    return {
        "text": text,
        "finish_reason": last.finish_reason or "stop",
        "prompt_tokens": last.prompt_tokens,
        "generation_tokens": last.generation_tokens,
        "prompt_tps": last.prompt_tps,
        "generation_tps": last.generation_tps,
        "peak_memory_gb": last.peak_memory,
    }


def execute(job: TaskInput) -> Metrics:
    """Generate text; the seed is reset to the job's seed just before sampling.

    Returns:
        Metrics: text, finish_reason, prompt_tokens, generation_tokens,
        prompt_tps, generation_tps, peak_memory_gb.
    """
    import mlx.core as mx

    task = job.task
    tokenizer = load_tokenizer(job.model_dir, job.model_config, trust_remote_code=job.trust_remote_code)
    prompt = make_prompt(tokenizer, task)
    sampler, processors = make_sampler_from(task)
    mx.random.seed(job.seed)
    out = generate_text(job.model, tokenizer, prompt, task["max_tokens"], sampler, processors)
    log.info(
        "generate: %d prompt tokens at %.1f tokens/s, %d generated at %.1f tokens/s, "
        "peak memory %.3f GB: %r",
        out["prompt_tokens"], out["prompt_tps"], out["generation_tokens"],
        out["generation_tps"], out["peak_memory_gb"], out["text"][:200],
    )
    return out
