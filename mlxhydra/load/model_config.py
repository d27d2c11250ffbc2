"""The model config as mlx-lm reads it: ``config.json``, ``generation_config.json``'s eos ids, and
what mlx-lm's ``load_config`` derives (applied unless the user changed that key)."""

import json
import logging
from pathlib import Path
from typing import List, Optional, Union

from ..config.model_source import read_config_json
from ..errors import ConfigError
from ..file_checks import exists, regular_file_problem

log = logging.getLogger(__name__)


def load_config(path: Union[str, Path]) -> dict:
    """Read a model directory's config as mlx-lm does.

    ``config.json`` with non-finite float tags decoded and ``eos_token_id``
    taken from ``generation_config.json`` when it has one.

    Raises:
        FileNotFoundError: naming the path, when it or its config.json is missing.
        OSError: when config.json is unreadable, not JSON or not an object.
    """
    from mlx_lm.utils import load_config as mlx_load_config

    model_dir = Path(path).expanduser()
    read_config_json(model_dir)  # clear errors for every way config.json can fail
    problems = generation_config_problems(model_dir)
    if problems:
        raise ConfigError(problems)
    return mlx_load_config(model_dir)


def generation_config_problems(model_dir: Path) -> List[str]:
    """What mlx-lm could not use in ``generation_config.json`` (read by its load_config).

    mlx-lm skips a file that is not JSON, and so does this; a file that is not a
    regular file (never opened), a top level that is not an object, or an
    ``eos_token_id`` that is not a token id or a list of them is named.
    """
    file = Path(model_dir) / "generation_config.json"
    if not exists(file):
        return []
    problem = regular_file_problem(file)
    if problem:
        return [f"{file} {problem} (expected a JSON file)"]
    try:
        value = json.loads(file.read_text(encoding="utf-8"))
    except (ValueError, RecursionError):
        log.warning("%s is not valid JSON: ignored, as mlx-lm ignores it", file)
        return []
    except OSError as e:
        return [f"{file}: cannot be read: {e.strerror or e}"]
    if not isinstance(value, dict):
        return [f"{file}: expected a JSON object at the top level, found {type(value).__name__}"]
    eos = value.get("eos_token_id")
    ids = eos if isinstance(eos, list) else [eos]
    if eos is not None and eos is not False and not all(
            type(i) is int and i >= 0 for i in ids):
        return [f"{file}: eos_token_id={eos!r}: expected a token id or a list of token ids"]
    return []


def apply_mlx_lm_adjustments(model_dir: Path, config: dict, raw: Optional[dict] = None) -> List[str]:
    """Apply what mlx-lm's ``load_config`` derives, unless the user changed that key.

    Args:
        raw: config.json as read already (read here when None).

    Returns the keys that were changed.
    """
    raw = read_config_json(model_dir) if raw is None else raw
    derived = load_config(model_dir)
    changed = []
    for key, value in derived.items():
        if raw.get(key) != value and config.get(key) == raw.get(key):
            config[key] = value
            changed.append(key)
    return changed
