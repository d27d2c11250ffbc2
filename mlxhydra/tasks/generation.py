"""Text generation with mlx-lm: the sampler, stop strings, streaming, speculative decoding.

Shared by ``task=generate`` and ``task=accuracy``. The settings keep the
names of ``mlx_lm.generate``'s options (``xtc_probability``, ``kv_bits``,
``num_draft_tokens``...), and each is handed to the mlx-lm function that
takes it: ``make_sampler``, ``make_logits_processors``, ``stream_generate``.
"""

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

from ..config.checks import SettingsCheck


def sampling_problems(task: Mapping[str, Any]) -> List[str]:
    """Sampling settings: temperature, top_p, min_p, top_k, XTC, repetition_penalty."""
    c = SettingsCheck(task)
    c.number("temperature", 0.0, expected=">= 0", optional=True)
    c.number("top_p", 0.0, 1.0, expected="0..1 (0 or 1: off)", optional=True)
    c.number("min_p", 0.0, 1.0, expected="0..1", optional=True)
    if c.task.get("top_k") is not None:
        c.integer("top_k", minimum=0)
    if "min_tokens_to_keep" in c.task:
        c.integer("min_tokens_to_keep")
    c.number("xtc_probability", 0.0, 1.0, expected="0..1 (0: off)", optional=True)
    c.number("xtc_threshold", 0.0, 0.5, expected="0..0.5", optional=True)
    penalty = c.task.get("repetition_penalty")
    c.number("repetition_penalty", 0.0, expected="> 0, or null (off)", optional=True)
    if penalty == 0 and type(penalty) in (int, float):  # mlx-lm divides by it
        c.fail("repetition_penalty", "> 0, or null (off)")
    return c.problems


def string_list(value: Any) -> Optional[List[str]]:
    """A string or list of strings as a list (None for anything else; null is [])."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    return None


def string_list_problems(task: Mapping[str, Any], key: str) -> List[str]:
    """A setting that takes a non-empty string or a list of them."""
    c = SettingsCheck(task)
    values = string_list(c.task.get(key))
    if values is None or any(not v for v in values):
        c.fail(key, "a non-empty string, a list of them, or []")
    return c.problems


def make_sampler_from(task: Mapping[str, Any], tokenizer=None):
    """mlx-lm's sampler and logits processors for the task's (checked) sampling settings.

    XTC never drops the newline and eos tokens, as in ``mlx_lm.generate``.
    """
    from mlx_lm.sample_utils import make_logits_processors, make_sampler

    special = []
    if tokenizer is not None and (task.get("xtc_probability") or 0.0) > 0:
        special = list(tokenizer.encode("\n")) + list(tokenizer.eos_token_ids)
    sampler = make_sampler(
        float(task.get("temperature") or 0.0),
        top_p=float(task.get("top_p") or 0.0),
        min_p=float(task.get("min_p") or 0.0),
        min_tokens_to_keep=int(task.get("min_tokens_to_keep") or 1),
        top_k=task.get("top_k") or 0,
        xtc_probability=float(task.get("xtc_probability") or 0.0),
        xtc_threshold=float(0.1 if task.get("xtc_threshold") is None else task["xtc_threshold"]),
        xtc_special_tokens=special,
    )
    penalty = task.get("repetition_penalty")
    processors = make_logits_processors(repetition_penalty=penalty) if penalty else None
    return sampler, processors


@dataclass
class Generation:
    """How to generate: mlx-lm's ``stream_generate`` arguments, stop strings and the text sink."""

    max_tokens: int
    sampler: Any = None
    logits_processors: Optional[list] = None
    stop: Sequence[str] = ()
    on_text: Optional[Callable[[str], None]] = None  # called with each piece of text as it is final
    draft_model: Any = None
    num_draft_tokens: int = 3
    options: Dict[str, Any] = field(default_factory=dict)  # kv settings, prefill_step_size


def generate_text(model, tokenizer, prompt: List[int], how: Generation) -> Dict[str, Any]:
    """Run mlx-lm's ``stream_generate`` and collect the text and its statistics.

    Stop strings are matched on the decoded text with mlx-lm's
    ``TextStateMachine``: text that may begin a stop string is held back until
    it is known not to, so ``on_text`` never sees any part of one, and the
    text ends just before the first stop string.

    Returns:
        text, finish_reason ("stop": eos or a stop string; "length"),
        prompt/generation token counts, tokens/s, peak memory (GB), and with a
        draft model the number of accepted draft tokens.
    """
    from mlx_lm.generate import TextStateMachine, stream_generate

    emit = how.on_text or (lambda _: None)
    machine = TextStateMachine({"normal": [(s, None) for s in how.stop]}) if how.stop else None
    state = machine.make_state() if machine is not None else None
    kwargs = dict(how.options, max_tokens=how.max_tokens, sampler=how.sampler,
                  logits_processors=how.logits_processors)
    if how.draft_model is not None:
        kwargs.update(draft_model=how.draft_model, num_draft_tokens=how.num_draft_tokens)
    text, last, stopped, accepted = "", None, False, 0
    for last in stream_generate(model, tokenizer, prompt, **kwargs):
        piece = last.text
        accepted += bool(last.from_draft)
        if machine is not None:
            state, piece, name = TextStateMachine.step(state, piece)
            stopped = name is None
        text += piece
        emit(piece)
        if stopped:
            break
    if machine is not None and not stopped:
        state, rest, _ = TextStateMachine.flush(state)
        text += rest
        emit(rest)
    out = {
        "text": text,
        "finish_reason": "stop" if stopped else (last.finish_reason or "stop"),
        "prompt_tokens": last.prompt_tokens,
        "generation_tokens": last.generation_tokens,
        "prompt_tps": last.prompt_tps,
        "generation_tps": last.generation_tps,
        "peak_memory_gb": last.peak_memory,
    }
    if how.draft_model is not None:
        out["draft_tokens_accepted"] = accepted
    return out
