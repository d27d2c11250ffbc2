"""A second model named like ``model=`` (a path, a preset or a Hugging Face id), composed by Hydra.

Settings such as ``task.draft_model`` accept every form ``model=`` accepts.
They are composed through the same config tree and model source: inside a
job with the job's own Hydra instance (so presets from ``--config-dir`` are
found), elsewhere with :func:`~mlxhydra.config.composition.compose`.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional

from ..errors import ConfigError
from .composition import compose, to_plain
from .overrides import quote_model_paths


@dataclass(frozen=True)
class ModelOption:
    """What ``model=<value>`` composes to."""

    model_dir: Path
    config: Dict[str, Any]  # the model node (config.json with the preset's changes)
    hub: Optional[Dict[str, Any]]  # the Hugging Face resolution (runs.record.HubRecord), if any


def compose_model_option(value: str, key: str) -> ModelOption:
    """Compose ``model=<value>`` and return the model it names.

    Args:
        value: A model directory, a preset or embedded model name, or ``org/name[@REVISION]``.
        key: The setting that holds it, for messages (``task.draft_model``).

    Raises:
        ConfigError: one line naming the setting, the value and what went wrong.
    """
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.errors import HydraException, MissingConfigException

    overrides = quote_model_paths([f"model={value}"])
    try:
        if GlobalHydra.instance().is_initialized() and HydraConfig.initialized():
            from hydra import compose as hydra_compose

            cfg = hydra_compose(HydraConfig.get().job.config_name, overrides=overrides)
        else:
            cfg = compose(overrides)
    except MissingConfigException as e:  # a bare name that is no preset
        presets = ", ".join(getattr(e, "options", None) or []) or "none"
        raise ConfigError(f"{key}={value}: not a model directory, a preset (available: {presets}) "
                          "or a Hugging Face id 'org/name'") from e
    except HydraException as e:  # the model source's one-line errors
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        first = first.removeprefix(f"model={value}: ")
        raise ConfigError(f"{key}={value}: {first}") from e
    model_dir = cfg.get("model_dir")
    if not model_dir:
        raise ConfigError(f"{key}={value}: names no model directory")
    return ModelOption(Path(model_dir), to_plain(cfg.model), to_plain(cfg.get("model_hub")))
