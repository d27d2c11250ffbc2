"""The loading half's checks and records before any weight is read: the composed model config
against its architecture, and the weight files' fingerprints."""

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from ..config.composition import changed_keys, removed_keys
from ..config.model_source import read_config_json
from ..distributed import ranks
from ..errors import ConfigError
from ..record.run_dir import RunDir
from ..record.schema import RecordWriter
from .validation import Settings

log = logging.getLogger("mlxhydra")


@dataclass
class CheckedModel:
    """The architecture of a composed model config, checked, and what the record says of it."""

    classes: Tuple[type, type]  # (Model, ModelArgs)
    entry: Dict[str, Any]  # run.json's model entry


def require_architecture(settings: Settings, config: dict, run_dir: Optional[RunDir]) -> CheckedModel:
    """Look the architecture up and check the config against it, as mlx-lm will read it.

    ``config`` gets what mlx-lm's ``load_config`` derives (unless the user changed that
    key); ``model_config.json`` is rewritten then, as the dict ModelArgs.from_dict receives.

    Raises:
        ConfigError: values of the wrong type (config.json's too), task files that cannot serve.
    """
    from ..load import architecture
    from ..load.model_config import apply_mlx_lm_adjustments
    from ..tasks import task_file_problems

    model_dir, loading = Path(settings.model_dir), settings.loading
    raw = read_config_json(model_dir)
    user_keys = changed_keys(config, raw)
    model_cls, args_cls = architecture.get_classes(
        config, model_dir, trust_remote_code=loading.trust_remote_code,
        model_class=loading.model_class, args_class=loading.args_class,
    )
    # config.json's own values as strictly as the command line's, each named with its origin
    architecture.require_types(config, args_cls, list(config), user_keys, model_dir / "config.json")
    problems = task_file_problems(settings.task, model_dir, loading.trust_remote_code)
    if problems:
        raise ConfigError(problems)
    ignored = [k for k in architecture.ignored_keys(config, args_cls) if k in user_keys]
    if ignored:
        log.warning(
            "%s.ModelArgs ignores these model keys (not passed to the model): %s",
            args_cls.__module__, ", ".join(ignored),
        )
    derived = apply_mlx_lm_adjustments(model_dir, config, raw)
    if derived and run_dir is not None:
        run_dir.write_model_config(config)
    entry = {
        "model_type": config.get("model_type"),
        "architecture": f"{model_cls.__module__}.{model_cls.__name__}",
        "changed_keys": user_keys,
        "removed_keys": removed_keys(config, raw),
        "ignored_user_keys": ignored,
        "derived_keys": derived,
    }
    return CheckedModel((model_cls, args_cls), entry)


def record_weight_files(settings: Settings, record: Optional[RecordWriter],
                        model_entry: Dict[str, Any]) -> Tuple[Dict[str, Tuple[int, ...]], Optional[str]]:
    """Fingerprint the weight files for the record (and a multirun's cache key).

    The other ranks of a distributed run keep no record and read no file beyond their own.

    Returns:
        (each file's identity before reading, to compare after; the combined fingerprint or None).
    """
    from ..load.weight_files import (
        combined_fingerprint,
        describe_files,
        find_weight_files,
        identities,
        require_sound_headers,
    )

    paths: List[Path] = find_weight_files(Path(settings.model_dir)) if record is not None else []
    if not ranks.world().distributed:  # sound headers now; each rank checks those it reads itself
        require_sound_headers(paths)
    before = identities(paths)
    if record is None:
        return before, None
    files = describe_files(paths, settings.loading.fingerprint)
    fingerprint = combined_fingerprint(files)
    record.update(model=model_entry, weight_files=files, weights_fingerprint=fingerprint)
    return before, fingerprint
