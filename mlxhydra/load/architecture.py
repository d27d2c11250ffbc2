"""Architecture lookup: config → (Model, ModelArgs) classes → args.

Architectures come from mlx-lm's registry (``mlx_lm.models.<model_type>``
with its remapping tables), a model directory's own ``model_file`` (only with
``trust_remote_code``), or the user's classes named by import path.
"""

import contextlib
import dataclasses
import difflib
import importlib
import importlib.util
import inspect
import io
import pkgutil
import sys
import traceback
import typing
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Type

from ..errors import ConfigError, RemoteCodeError

# mlx_lm.models modules that hold layers, not architectures.
_HELPER_MODULES = {
    "activations", "base", "cache", "rope_utils", "switch_layers", "ssm",
    "bitlinear_layers", "pipeline", "gated_delta", "mla",
}


def supported_model_types() -> List[str]:
    """Every model_type that mlx-lm's registry resolves, remapped names included."""
    import mlx_lm.models

    from .._upstream import MODEL_REMAPPING

    names = {
        m.name
        for m in pkgutil.iter_modules(mlx_lm.models.__path__)
        if not m.name.startswith("_") and m.name not in _HELPER_MODULES
    }
    return sorted(names | set(MODEL_REMAPPING))


def import_object(path: str, default_attr: Optional[str] = None) -> Any:
    """Import ``package.module:Name`` or ``package.module.Name``."""
    module_name, sep, attr = path.partition(":")
    if not sep:
        module_name, _, attr = path.rpartition(".")
    if not module_name:
        module_name, attr = path, default_attr or ""
    try:
        module = importlib.import_module(module_name)
        return getattr(module, attr)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"cannot import {path!r}: {e}") from e


def _from_model_file(model_dir: Path, model_file: Any, trust_remote_code: bool):
    file = model_dir / str(model_file)
    if not trust_remote_code:
        raise RemoteCodeError(
            f"{model_dir / 'config.json'} sets model_file={model_file!r}: running {file} "
            "is refused; set load.trust_remote_code=true if you trust this model"
        )
    if not file.is_file():
        raise ConfigError(f"model_file {file} does not exist")
    spec = importlib.util.spec_from_file_location("mlxhydra_custom_model", file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    missing = [name for name in ("Model", "ModelArgs") if not hasattr(module, name)]
    if missing:
        raise ConfigError(f"model_file {file} defines no {' or '.join(missing)} (expected both classes)")
    return module.Model, module.ModelArgs


def get_classes(
    config: Dict[str, Any],
    model_dir: Optional[Path] = None,
    *,
    trust_remote_code: bool = False,
    model_class: Optional[str] = None,
    args_class: Optional[str] = None,
) -> Tuple[Type, Type]:
    """Pick the Model and ModelArgs classes for a config.

    Args:
        config: The model config (needs ``model_type`` unless classes are given).
        model_dir: The model directory, for a ``model_file``.
        trust_remote_code: Allow running the directory's ``model_file``.
        model_class: Import path of a Model class, overriding the registry.
        args_class: Import path of its ModelArgs (default: ``ModelArgs`` in
            the Model class's module).

    Returns:
        (Model, ModelArgs).

    Raises:
        ConfigError: model_type missing or unknown (with the closest names).
        RemoteCodeError: a ``model_file`` without ``trust_remote_code``.
    """
    if model_class:
        model_cls = import_object(model_class)
        if args_class:
            return model_cls, import_object(args_class)
        module = importlib.import_module(model_cls.__module__)
        if not hasattr(module, "ModelArgs"):
            raise ConfigError(
                f"load.model_class={model_class}: its module has no ModelArgs; set load.args_class"
            )
        return model_cls, module.ModelArgs
    if config.get("model_file") is not None:
        return _from_model_file(model_dir or Path("."), config["model_file"], trust_remote_code)
    model_type = config.get("model_type")
    if not isinstance(model_type, str) or not model_type:
        raise ConfigError(
            f"model.model_type is {'missing' if model_type is None else repr(model_type)}: "
            "expected the name of an mlx-lm architecture such as 'llama'"
        )
    from .._upstream import get_classes as mlx_lm_get_classes

    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            classes = mlx_lm_get_classes(config)
        sys.stdout.write(printed.getvalue())
        return classes
    except SystemExit:
        # mlx-lm's olmo module prints what it needs and exits when that is missing.
        hint = " ".join(printed.getvalue().split()) or "it exited while importing"
        raise ConfigError(
            f"model.model_type={model_type!r}: mlx-lm cannot import its module: {hint}"
        ) from None
    except ValueError:
        known = supported_model_types()
        close = difflib.get_close_matches(model_type, known, n=3, cutoff=0.5)
        hint = f"; closest: {', '.join(close)}" if close else ""
        raise ConfigError(
            f"model.model_type={model_type!r} is not an architecture mlx-lm supports{hint}"
        ) from None


def args_parameters(args_cls: Type) -> Dict[str, inspect.Parameter]:
    """The keyword parameters that ``args_cls.from_dict`` keeps."""
    return dict(inspect.signature(args_cls).parameters)


def ignored_keys(config: Dict[str, Any], args_cls: Type) -> List[str]:
    """Config keys that ``ModelArgs.from_dict`` drops silently."""
    params = args_parameters(args_cls)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return []
    return sorted(k for k in config if k not in params)


def _fits(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if hint is Any or hint is inspect.Parameter.empty:
        return True
    if origin is typing.Union or type(hint).__name__ == "UnionType":
        return any(_fits(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin in (list, tuple, List, typing.Tuple) or hint in (list, tuple):
        return isinstance(value, (list, tuple))
    if origin in (dict, Dict) or hint is dict:
        return isinstance(value, dict)
    return True


def require_types(config: Dict[str, Any], args_cls: Type, keys: List[str],
                user_keys: Optional[List[str]] = None, file: Optional[Path] = None) -> None:
    """Check the given keys' values against the ModelArgs field types.

    Args:
        keys: The keys to check.
        user_keys: Keys the command line or a patch changed (all of ``keys`` when None);
            the others are named as values of ``file``.
        file: The config.json the other keys come from.

    A value that config.json leaves null is accepted (mlx-lm hands it to the
    model, whose defaults may fill it); one the user set is checked as given.

    Raises:
        ConfigError: naming each key, where its value comes from, the expected type and the value.
    """
    if not dataclasses.is_dataclass(args_cls):
        return
    try:
        hints = typing.get_type_hints(args_cls)
    except Exception:
        return
    problems = []
    for key in keys:
        if key not in hints or key not in config:
            continue
        from_user = user_keys is None or key in user_keys
        if config[key] is None and not from_user:
            continue
        if not _fits(config[key], hints[key]):
            expected = getattr(hints[key], "__name__", None) or str(hints[key]).replace("typing.", "")
            origin = "" if from_user or file is None else f" in {file}"
            problems.append(
                f"model.{key}={config[key]!r}{origin}: expected {expected}, "
                f"got {type(config[key]).__name__}"
            )
    if problems:
        raise ConfigError(problems)


def instantiate(model_cls: Type, args: Any, config: Dict[str, Any]) -> Any:
    """``model_cls(args)`` with a clear error when the config's values cannot build it.

    A config can have the right types and still not build a model (``hidden_size: 0``,
    heads that do not divide the hidden size): the layers then fail deep inside.

    Raises:
        ConfigError: naming the class, the error, and any non-positive or huge integers in the config.
    """
    try:
        return model_cls(args)
    except (AssertionError, ValueError, TypeError, ArithmeticError, KeyError, IndexError,
            AttributeError, RuntimeError, MemoryError) as e:  # MemoryError: num_hidden_layers: 2**40
        last = traceback.extract_tb(e.__traceback__)[-1]  # where it failed: an assert has no message
        where = f" at {Path(last.filename).name}:{last.lineno}: {last.line}"
        raise ConfigError(
            f"{model_cls.__module__}.{model_cls.__name__} cannot be built from the model config: "
            f"{type(e).__name__}{f': {e}' if str(e) else ''}{where}{_suspects(config)}".replace("\n", " ")
        ) from e


def _suspects(config: Dict[str, Any]) -> str:
    """`` (suspect values: k=v, ...)`` for integers that are non-positive or huge, else ''."""
    suspects = [
        f"{k}={v}" for k, v in config.items()
        if isinstance(v, int) and not isinstance(v, bool) and not 0 < v < 2**31
    ]
    return f" (suspect values: {', '.join(suspects)})" if suspects else ""


def make_args(config: Dict[str, Any], args_cls: Type) -> Any:
    """``args_cls.from_dict(config)`` with a clear error when it refuses."""
    try:
        return args_cls.from_dict(config)
    except (TypeError, ValueError, KeyError, AttributeError, AssertionError, IndexError,
            ArithmeticError, MemoryError) as e:  # __post_init__ checks too; 2**70 layers overflow
        raise ConfigError(
            f"{args_cls.__module__}.{args_cls.__name__} rejects the model config: "
            f"{type(e).__name__}: {e}{_suspects(config)}".replace("\n", " ")
        ) from e
