"""Every private name of mlx-lm and Hydra that mlxhydra uses, imported here and nowhere else.

These names are not part of either project's public API and may change in
any release; the supported ranges are pinned in pyproject.toml. When one is
missing, the error names it and the supported range, so an upgrade fails
where the cause is.

Names are imported on first use (``from mlxhydra._upstream import get_classes``):
Hydra's plugins import parts of mlxhydra at start-up, which must not pull in
mlx-lm.
"""

from importlib import import_module, metadata
from typing import Any, Dict, List, Tuple

from .errors import UpstreamError

SUPPORTED = {"mlx-lm": ">=0.32.2,<0.33", "hydra-core": ">=1.3.2,<1.4"}

# name used here -> (package, module, attribute path in that module)
NAMES: Dict[str, Tuple[str, str, str]] = {
    # mlx-lm: architecture lookup and the remapping of model_type names.
    "get_classes": ("mlx-lm", "mlx_lm.utils", "_get_classes"),
    "MODEL_REMAPPING": ("mlx-lm", "mlx_lm.utils", "MODEL_REMAPPING"),
    # mlx-lm: reading pre-quantized checkpoints as mlx_lm.utils.load_model does.
    "infer_quant_config": ("mlx-lm", "mlx_lm.utils", "infer_quant_config"),
    "takes_global_scale": ("mlx-lm", "mlx_lm.utils", "_takes_global_scale"),
    "transform_awq_weights": ("mlx-lm", "mlx_lm.utils", "_transform_awq_weights"),
    "compressed_tensors_quantization": ("mlx-lm", "mlx_lm.utils", "_compressed_tensors_quantization"),
    # Hydra: the command-line parser of @hydra.main (to read argv as Hydra will).
    "hydra_args_parser": ("hydra-core", "hydra._internal.utils", "get_args_parser"),
    # Hydra: how the basic sweeper expands sweep overrides into jobs.
    "split_sweep_arguments": ("hydra-core", "hydra._internal.core_plugins.basic_sweeper",
                              "BasicSweeper.split_arguments"),
    # Hydra: the basic sweeper itself, whose per-job composition check runs/job_sweeper.py adapts.
    "BasicSweeper": ("hydra-core", "hydra._internal.core_plugins.basic_sweeper", "BasicSweeper"),
    # Hydra: the config loader whose group listing --help repeats (config/help_cache.py).
    "ConfigLoaderImpl": ("hydra-core", "hydra._internal.config_loader_impl", "ConfigLoaderImpl"),
}


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def load(name: str) -> Any:
    """Import one upstream name.

    Raises:
        UpstreamError: naming the missing name, the installed version and the supported range.
    """
    package, module_name, attribute = NAMES[name]
    try:
        value: Any = import_module(module_name)
        for part in attribute.split("."):
            value = getattr(value, part)
    except (ImportError, AttributeError) as e:
        raise UpstreamError(
            f"{package} {_version(package)} has no {module_name}.{attribute} ({e}); "
            f"mlxhydra supports {package}{SUPPORTED[package]}"
        ) from e
    return value


def __getattr__(name: str) -> Any:
    if name in NAMES:
        value = load(name)
        globals()[name] = value  # once per process
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def missing() -> List[str]:
    """The message for every upstream name that cannot be imported (empty when all can)."""
    problems = []
    for name in NAMES:
        try:
            load(name)
        except UpstreamError as e:
            problems.append(str(e))
    return problems


def clear_eos_tokens(tokenizer: Any) -> None:
    """Make mlx-lm's TokenizerWrapper never stop at an end-of-sequence token.

    ``mlx_lm.benchmark`` does the same by emptying this private set.
    """
    if not hasattr(tokenizer, "_eos_token_ids"):
        raise UpstreamError(
            f"mlx-lm {_version('mlx-lm')}: TokenizerWrapper has no _eos_token_ids; "
            f"mlxhydra supports mlx-lm{SUPPORTED['mlx-lm']}"
        )
    tokenizer._eos_token_ids = set()
