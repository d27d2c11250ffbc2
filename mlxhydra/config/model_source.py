"""Serve model directories as options of Hydra's ``model`` config group.

``model=./llama`` makes Hydra look up ``model/./llama``. The ``mlxmodel://``
config source answers those look-ups: a directory holding ``config.json``
becomes the ``model`` node (keys and values exactly as in the file) and its
absolute path becomes the top-level ``model_dir``. A Hugging Face id
(``model=org/name[@REVISION]``) with no local directory of that name is
resolved to its snapshot as ``mlx_lm.load`` resolves it (:mod:`.hub`), and
the resolution goes into the top-level ``model_hub``.

Hydra imports every ``hydra_plugins`` module at start-up, so this module
must stay import-light: standard library, hydra and omegaconf only.
"""

import json
import os
import re
import stat
from importlib import resources
from pathlib import Path
from typing import Any, List, Optional

from hydra.core.config_search_path import ConfigSearchPath, SearchPathQuery
from hydra.core.object_type import ObjectType
from hydra.plugins.config_source import ConfigLoadError, ConfigResult, ConfigSource
from hydra.plugins.search_path_plugin import SearchPathPlugin
from omegaconf import OmegaConf

from ..errors import ModelDirError, ModelDirNotFound
from ..file_checks import regular_file_problem, stat_path
from .hub import is_hub_id, resolve_hub_id

GROUP = "model"
SCHEME = "mlxmodel"
# The config tree that gets the model source (the CLI's and compose()'s).
MAIN_CONFIG = "pkg://mlxhydra.conf"
EXPECTED = "expected a model directory holding config.json"

_INTERPOLATION = re.compile(r"(\\*)\$\{")
# Limits of a JSON file served as a config node (real model configs are far smaller).
MAX_JSON_BYTES = 64 * 2**20
MAX_DEPTH = 32
MAX_VALUES = 100_000
# Where a sweep gets a model directory's error as a node rather than as an exception
# (set by the command for multiruns; see ModelDirConfigSource.load_config).
DEFER_ERRORS_ENV = "MLXHYDRA_DEFER_MODEL_ERRORS"
ERROR_KEY = "model_error"
MISSING_MARKER = "???"
LITERAL_MISSING = "${mlxhydra_question_marks:}"  # see mlxhydra.config.resolvers


def embedded_models_dir() -> Path:
    """The folder of the models shipped inside the package."""
    return Path(str(resources.files("mlxhydra") / "models"))


def embedded_model_names() -> List[str]:
    """Names of the shipped models (``model=<name>``)."""
    root = embedded_models_dir()
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if regular_file_problem(p / "config.json") is None)


def looks_like_path(option: str) -> bool:
    """True when a ``model=`` value is a path rather than a preset name."""
    return (
        "/" in option
        or os.sep in option
        or option.startswith((".", "~"))
        or os.path.isabs(option)
    )


def resolve_model_dir(option: str, cwd: Optional[str] = None) -> Path:
    """Turn a ``model=`` value into an absolute directory path.

    Args:
        option: A path (relative to ``cwd``, absolute or ``~``-prefixed) or the
            name of an embedded model.
        cwd: Directory that relative paths are taken from; the process's
            working directory by default.

    Returns:
        The absolute path. It is not checked for existence.
    """
    if not looks_like_path(option):
        embedded = embedded_models_dir() / option
        if regular_file_problem(embedded / "config.json") is None:
            return embedded
    path = Path(os.path.expanduser(option))
    if not path.is_absolute():
        path = Path(cwd or os.getcwd()) / path
    return Path(os.path.normpath(path))


def _shape_problem(value: Any, limit_depth: int, limit_nodes: int) -> Optional[str]:
    """Why a parsed JSON value is too deep or too large to be a model config, or None."""
    nodes, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit_depth:
            return f"nested more than {limit_depth} levels deep"
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        for child in children:
            nodes += 1
            if nodes > limit_nodes:
                return f"holds more than {limit_nodes} values"
            if isinstance(child, (dict, list)):
                stack.append((child, depth + 1))
    return None


def read_json_object(file: Path, what: str, error: type = None, bounded: bool = True) -> dict:
    """Read a JSON file that must hold an object, with one clear error for each way it can fail.

    The file must be a regular file (a FIFO or a device is never opened) of at
    most MAX_JSON_BYTES; a config (``bounded``) is nested at most MAX_DEPTH
    levels with at most MAX_VALUES values: OmegaConf and Hydra recurse into every value.

    Args:
        what: What the file should be, for messages (``a model config``).
        error: The error class to raise (ModelDirError by default).
        bounded: Apply the depth and size limits of a config node.

    Raises:
        ``error``: naming the file and what was expected.
    """
    error = error or ModelDirError
    problem = regular_file_problem(file)
    if problem:
        raise error(f"{file} {problem} (expected a JSON file)")
    if file.stat().st_size > MAX_JSON_BYTES:
        raise error(f"{file}: {file.stat().st_size} bytes, more than {MAX_JSON_BYTES} "
                    f"(expected {what})")
    try:
        text = file.read_text(encoding="utf-8")
    except PermissionError:
        raise error(f"{file}: permission denied (expected a readable file)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise error(f"{file}: cannot be read: {e}") from e
    if not text.strip():
        raise error(f"{file} is empty (expected a JSON object)")
    try:
        config = json.loads(text)
    except json.JSONDecodeError as e:
        raise error(f"{file}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    except RecursionError:
        raise error(f"{file}: nested too deeply (expected {what})") from None
    if not isinstance(config, dict):
        raise error(f"{file}: expected a JSON object at the top level, found {type(config).__name__}")
    shape = _shape_problem(config, MAX_DEPTH, MAX_VALUES) if bounded else None
    if shape:
        raise error(f"{file}: {shape} (expected {what})")
    return config


def require_model_path(option: Optional[str]) -> None:
    """Refuse a ``model=`` path whose name is too long for the file system.

    Raises:
        ModelDirError: naming the option and the path.
    """
    if not isinstance(option, str) or not looks_like_path(option):
        return
    model_dir = resolve_model_dir(option)
    _, why = stat_path(model_dir)
    if why.startswith("has a name too long"):
        raise ModelDirError(f"model={option}: {model_dir} {why} ({EXPECTED})")


def read_config_json(model_dir: Path, option: Optional[str] = None) -> dict:
    """Read ``model_dir/config.json`` with one clear error for each way it can fail.

    Raises:
        ModelDirError: naming the path and what was expected.
    """
    shown = f"model={option}: " if option is not None else ""
    info, why = stat_path(model_dir)
    if info is None:
        error = ModelDirNotFound if why == "does not exist" else ModelDirError
        raise error(f"{shown}{model_dir} {why} ({EXPECTED})")
    if not stat.S_ISDIR(info.st_mode):
        raise ModelDirError(f"{shown}{model_dir} is not a directory ({EXPECTED})")
    config_file = model_dir / "config.json"
    if stat_path(config_file)[1] == "does not exist":
        raise ModelDirNotFound(f"{shown}{model_dir} has no config.json ({EXPECTED})")
    return read_json_object(config_file, "a model config")


def escape_interpolations(value: Any) -> Any:
    """Escape ``${`` in every string so OmegaConf keeps it as literal data.

    The string ``???`` (OmegaConf's "missing value" marker) becomes a resolver
    call that gives the same three characters back.
    """
    if value == MISSING_MARKER:
        return LITERAL_MISSING
    if isinstance(value, str):
        return _INTERPOLATION.sub(lambda m: m.group(1) * 2 + "\\${", value)
    if isinstance(value, dict):
        return {k: escape_interpolations(v) for k, v in value.items()}
    if isinstance(value, list):
        return [escape_interpolations(v) for v in value]
    return value


def _option(config_path: str) -> Optional[str]:
    if config_path.endswith(".yaml"):
        config_path = config_path[: -len(".yaml")]
    prefix = GROUP + "/"
    if not config_path.startswith(prefix) or len(config_path) == len(prefix):
        return None
    return config_path[len(prefix) :]


class ModelDirConfigSource(ConfigSource):
    """Config source for the ``mlxmodel://`` search-path entry."""

    @staticmethod
    def scheme() -> str:
        return SCHEME

    def load_config(self, config_path: str) -> ConfigResult:
        option = _option(config_path)
        if option is None:
            raise ConfigLoadError(f"{SCHEME}:// serves only '{GROUP}/...', not {config_path}")
        model_dir = resolve_model_dir(option)
        extra = {}
        # Everything written into the config is escaped: a path with "${" stays a path.
        try:
            if not model_dir.exists() and is_hub_id(option):
                snapshot = resolve_hub_id(option, GROUP)
                model_dir, extra["model_hub"] = snapshot.path, escape_interpolations(snapshot.record())
            config = read_config_json(model_dir, option)
            content = {GROUP: escape_interpolations(config)}
        except ModelDirError as e:  # HubError included
            if os.environ.get(DEFER_ERRORS_ENV) != "1":
                raise
            # A sweep composes every job before running any: this job fails alone, at validation.
            content = {GROUP: {}, ERROR_KEY: escape_interpolations(str(e))}
        content["model_dir"] = escape_interpolations(str(model_dir))
        content.update(extra)
        node = OmegaConf.create(content)
        return ConfigResult(
            config=node,
            path=f"{SCHEME}://{self.path}",
            provider=self.provider,
            header={"package": "_global_"},
        )

    def available(self) -> bool:
        return True

    def is_group(self, config_path: str) -> bool:
        return config_path in ("", GROUP)

    def is_config(self, config_path: str) -> bool:
        option = _option(config_path)
        if option is None:
            return False
        if looks_like_path(option):
            # Claim every path so that a bad one gets this source's clear error.
            return True
        return regular_file_problem(resolve_model_dir(option) / "config.json") is None

    def list(self, config_path: str, results_filter: Optional[ObjectType]) -> List[str]:
        if config_path == "" and results_filter in (None, ObjectType.GROUP):
            return [GROUP]
        if config_path == GROUP and results_filter in (None, ObjectType.CONFIG):
            return embedded_model_names()
        return []


class ModelDirSearchPath(SearchPathPlugin):
    """Adds ``mlxmodel://`` after mlxhydra's own config tree.

    Added by a plugin rather than the primary config's ``hydra.searchpath``, so
    that a user's ``hydra.searchpath=[file://my_conf]`` adds to it instead of
    removing it. Other Hydra applications are left alone.
    """

    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        paths = [element.path for element in search_path.get_path()]
        if MAIN_CONFIG in paths and f"{SCHEME}://" not in paths:
            search_path.append("mlxhydra", f"{SCHEME}://", anchor=SearchPathQuery(path=MAIN_CONFIG))
