"""The draft model of speculative decoding (``task.draft_model``): a path, a preset or a Hub id."""

from typing import Any, Dict, Mapping, Tuple

from ..config.checks import SettingsCheck
from ..config.model_option import compose_model_option
from ..errors import ConfigError, TaskError
from ..load.tokenizer import load_tokenizer

KEY = "task.draft_model"


def check_draft(c: SettingsCheck) -> None:
    """``draft_model`` names a model (composed now: a bad one fails before any weight is read)."""
    task = c.task
    c.integer("num_draft_tokens")
    value = task.get("draft_model")
    if value is None:
        return
    if not isinstance(value, str) or not value:
        c.fail("draft_model", "a model directory, a preset, a Hugging Face id, or null")
        return
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


def load_draft_model(value: str, load: Mapping[str, Any], tokenizer) -> Tuple[Any, Dict[str, Any]]:
    """Load the draft model as stored (as ``mlx_lm.generate --draft-model`` does).

    Args:
        value: ``task.draft_model``.
        load: The run's ``load`` settings (``strict`` and ``trust_remote_code`` apply).
        tokenizer: The main model's tokenizer; the draft's must have as many tokens.

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
    model, config, report = build_model(option.model_dir, config, settings)
    draft_tokenizer = load_tokenizer(option.model_dir, config,
                                     trust_remote_code=settings.trust_remote_code)
    if draft_tokenizer.vocab_size != tokenizer.vocab_size:
        raise TaskError(
            f"{KEY}={value}: its tokenizer has {draft_tokenizer.vocab_size} tokens, the model's "
            f"{tokenizer.vocab_size} (speculative decoding needs the same vocabulary)"
        )
    files = describe_files(find_weight_files(option.model_dir), settings.fingerprint)
    description: Dict[str, Any] = {
        "model_dir": str(option.model_dir),
        "weights_fingerprint": combined_fingerprint(files),
        "parameters": report.quantization.get("parameters"),
    }
    if option.hub:
        description["hub"] = option.hub
    return model, description

