"""The draft model of speculative decoding (``task.draft_model``): a path, a preset or a Hub id."""

from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

from ..config.checks import SettingsCheck
from ..config.model_option import compose_model_option
from ..errors import ConfigError, TaskError
from ..load.tokenizer import load_tokenizer

KEY = "task.draft_model"


def draft_problems(task: Mapping[str, Any]) -> List[str]:
    """``draft_model`` names a model (composed now: a bad one fails before any weight is read)."""
    c = SettingsCheck(task)
    c.integer("num_draft_tokens")
    value = task.get("draft_model")
    if value is None:
        return c.problems
    if not isinstance(value, str) or not value:
        c.fail("draft_model", "a model directory, a preset, a Hugging Face id, or null")
        return c.problems
    try:
        compose_model_option(value, KEY)
    except ConfigError as e:
        c.problems.extend(e.problems)
    if task.get("max_tokens") == -1:
        c.problems.append("task.max_tokens=-1 with task.draft_model: speculative decoding needs "
                          "a limit; set task.max_tokens to a positive number")
    if task.get("max_kv_size") is not None:
        c.problems.append("task.max_kv_size with task.draft_model: speculative decoding needs a "
                          "trimmable KV cache, which a bounded one is not; set only one of them")
    return c.problems


def vocab_rows(config: Mapping[str, Any]) -> Optional[int]:
    """The token ids a model config gives the model (``vocab_size``, or its ``text_config``'s)."""
    for node in (config, config.get("text_config")):
        if isinstance(node, Mapping) and type(node.get("vocab_size")) is int:
            return node["vocab_size"]
    return None


def vocabulary_problem(value: str, tokenizer, draft_tokenizer, rows: Optional[int],
                       draft_rows: Optional[int]) -> Optional[str]:
    """Why the draft model cannot draft for the model, or None.

    mlx-lm's own condition (``mlx_lm.generate``): both tokenizers have the same
    ``vocab_size``. Beyond it, the models' own vocabularies (their logits): the
    model reads every id the draft proposes (the draft's are not more than the
    model's), and the draft reads every token of the tokenizer the model may
    generate. A draft with fewer padding rows than the model passes (Qwen2.5's
    0.5B drafting for its 7B, 151936 and 152064 ids, tokenizer 151665).
    """
    if draft_tokenizer.vocab_size != tokenizer.vocab_size:
        return (f"{KEY}={value}: its tokenizer has {draft_tokenizer.vocab_size} tokens, the model's "
                f"{tokenizer.vocab_size} (speculative decoding needs the same vocabulary)")
    if draft_rows is not None and rows is not None and draft_rows > rows:
        return (f"{KEY}={value}: the draft model has {draft_rows} token ids, the model only {rows}: "
                "it would propose ids the model does not have (speculative decoding needs the same "
                "vocabulary)")
    if draft_rows is not None and draft_rows < len(tokenizer):
        return (f"{KEY}={value}: the draft model has {draft_rows} token ids, fewer than the "
                f"tokenizer's {len(tokenizer)} tokens: it cannot read every token the model "
                "generates (speculative decoding needs the same vocabulary)")
    return None


def draft_vocabulary_problems(task: Mapping[str, Any], tokenizer, model_config: Mapping[str, Any],
                   load: Mapping[str, Any]) -> List[str]:
    """The draft model against the model, from their configs and tokenizers (validate stage)."""
    value = task.get("draft_model")
    if value is None:
        return []
    option = compose_model_option(value, KEY)
    try:
        draft_tokenizer = load_tokenizer(Path(option.model_dir), dict(option.config),
                                         trust_remote_code=load.get("trust_remote_code") is True)
    except TaskError as e:
        return [f"{KEY}={value}: {e}"]
    problem = vocabulary_problem(value, tokenizer, draft_tokenizer, vocab_rows(model_config),
                                 vocab_rows(option.config))
    return [problem] if problem else []


def logit_rows(model) -> int:
    """How many token ids a built model scores: its logits' last size (a lazy call, nothing computed)."""
    import mlx.core as mx

    return model(mx.array([[0]])).shape[-1]


def load_draft_model(value: str, load: Mapping[str, Any], tokenizer, model) -> Tuple[Any, Dict[str, Any]]:
    """Load the draft model as stored (as ``mlx_lm.generate --draft-model`` does).

    Args:
        value: ``task.draft_model``.
        load: The run's ``load`` settings (``strict`` and ``trust_remote_code`` apply).
        tokenizer: The main model's tokenizer; the draft's must have as many tokens.
        model: The main model: the draft's logits must fit its vocabulary (see
            :func:`vocabulary_problem`; the configs were compared in the validate stage).

    Returns:
        (model, description): the description names the directory, weights
        fingerprint, parameters and any Hub resolution (``hub``).

    Raises:
        ConfigError, TaskError: a model that cannot be found or does not share the vocabulary.
    """
    from ..load.loader import build_model
    from ..load.model_config import apply_mlx_lm_adjustments
    from ..load.settings import LoadSettings
    from ..load.weight_files import combined_fingerprint, describe_files, find_weight_files

    option = compose_model_option(value, KEY)
    config = dict(option.config)
    apply_mlx_lm_adjustments(option.model_dir, config)
    # As stored: the run's strict check and consent only, in one piece on every rank.
    kept = {k: load[k] for k in ("strict", "trust_remote_code", "fingerprint") if k in load}
    settings = LoadSettings.from_groups({**kept, "shard": "none"})
    draft, config, report = build_model(option.model_dir, config, settings)
    draft_tokenizer = load_tokenizer(option.model_dir, config,
                                     trust_remote_code=settings.trust_remote_code)
    problem = vocabulary_problem(value, tokenizer, draft_tokenizer, logit_rows(model),
                                 logit_rows(draft))
    if problem:
        raise TaskError(problem)
    files = describe_files(find_weight_files(option.model_dir), settings.fingerprint)
    description: Dict[str, Any] = {
        "model_dir": str(option.model_dir),
        "weights_fingerprint": combined_fingerprint(files),
        "parameters": report.quantization.get("parameters"),
    }
    if option.hub:
        description["hub"] = option.hub
    return draft, description

