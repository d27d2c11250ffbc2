"""Every private name of mlx-lm and Hydra that mlxhydra uses, imported here and nowhere else.

These names are not part of either project's public API and may change in
any release; the supported ranges are pinned in pyproject.toml. When one is
missing, the error names it and the supported range, so an upgrade fails
where the cause is.

Names are imported on first use (``from mlxhydra._upstream import get_classes``):
Hydra's plugins import parts of mlxhydra at start-up, which must not pull in
mlx-lm.
"""

import warnings
from importlib import import_module, metadata
from typing import Any, Callable, Dict, List, Optional, Tuple

from .errors import UpstreamError

SUPPORTED = {"mlx-lm": ">=0.32.2,<0.33", "hydra-core": ">=1.3.2,<1.4",
             "hydra-optuna-sweeper": ">=1.2,<1.4"}

# Packages of optional extras ([search]): their names are checked only when installed.
OPTIONAL = ("hydra-optuna-sweeper",)
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
    # mlx-lm: how mlx_lm.load turns a Hugging Face repo id into a local snapshot (its allow patterns).
    "download_model": ("mlx-lm", "mlx_lm.utils", "_download"),
    # mlx-lm: mlx_lm.lora's defaults (the keys its adapter_config.json holds) and the YAML loader
    # that reads its config files (1e-5 as a float), for task=lora's task.config_file.
    "lora_config_defaults": ("mlx-lm", "mlx_lm.lora", "CONFIG_DEFAULTS"),
    "lora_yaml_loader": ("mlx-lm", "mlx_lm.lora", "yaml_loader"),
    # mlx-lm: its trainer's cache clearing between steps (task=lora's loop, tasks/lora_loop.py).
    "clear_cache": ("mlx-lm", "mlx_lm.tuner.trainer", "_clear_cache"),
    # Hydra: the command-line parser of @hydra.main (to read argv as Hydra will).
    "hydra_args_parser": ("hydra-core", "hydra._internal.utils", "get_args_parser"),
    # Hydra: how the basic sweeper expands sweep overrides into jobs.
    "split_sweep_arguments": ("hydra-core", "hydra._internal.core_plugins.basic_sweeper",
                              "BasicSweeper.split_arguments"),
    # Hydra: the basic sweeper itself, whose per-job composition check sweeps/sweeper.py adapts.
    "BasicSweeper": ("hydra-core", "hydra._internal.core_plugins.basic_sweeper", "BasicSweeper"),
    # Hydra: the config loader whose group listing --help repeats (config/help_cache.py).
    "ConfigLoaderImpl": ("hydra-core", "hydra._internal.config_loader_impl", "ConfigLoaderImpl"),
    # Hydra: the application object whose two compositions per command become one
    # (config/compose_once.py), and how its loader applies overrides to a composed config.
    "Hydra": ("hydra-core", "hydra._internal.hydra", "Hydra"),
    # hydra-optuna-sweeper: a search's Optuna distributions from its overrides (sweeps/resume_search.py).
    "optuna_params_from_overrides": ("hydra-optuna-sweeper", "hydra_plugins.hydra_optuna_sweeper._impl",
                                     "create_params_from_overrides"),
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
        if NAMES[name][0] in OPTIONAL and _version(NAMES[name][0]) == "not installed":
            continue  # an extra that is not installed: nothing to check
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


def tokenizer_copy(tokenizer: Any) -> Any:
    """A TokenizerWrapper that shares ``tokenizer``'s Hugging Face tokenizer and its
    detokenizer's token map, with the state mlx-lm changes in use of its own.

    What ``add_eos_token`` adds (``_eos_token_ids``) and the streaming detokenizer's text
    (``_detokenizer``, reset) are the copy's, as in a tokenizer just loaded; building the
    wrapper again would re-read the tokenizer's files (a second or more for a 32k vocabulary).
    """
    import copy

    if not all(hasattr(tokenizer, name) for name in ("_eos_token_ids", "_detokenizer")):
        raise UpstreamError(
            f"mlx-lm {_version('mlx-lm')}: TokenizerWrapper has no _eos_token_ids or _detokenizer; "
            f"mlxhydra supports mlx-lm{SUPPORTED['mlx-lm']}"
        )
    out = copy.copy(tokenizer)
    out._eos_token_ids = set(tokenizer._eos_token_ids)
    out._detokenizer = copy.copy(tokenizer._detokenizer)
    out._detokenizer.reset()
    return out


def quiet_basic_sweeper_schema_warning() -> None:
    """Silence Hydra's warning that ``conf/hydra/sweeper/basic.yaml`` matches its own schema.

    mlxhydra's sweeper (sweeps/sweeper.py) is named ``basic`` so that it is the default
    while an experiment can still pick another sweeper (an ``override hydra/sweeper`` in the
    primary config would win over the experiment's). Hydra then merges it with its registered
    ``BasicSweeperConf`` (the same keys) and, deprecating that automatic match since 1.1,
    warns on every multirun.
    """
    warnings.filterwarnings(
        "ignore", message=r"\s*'hydra/sweeper/basic' is validated against ConfigStore schema",
        category=UserWarning)


_IN_MEMORY_MLXLM: Any = None


def in_memory_mlxlm(model: Any, tokenizer: Any, max_tokens: Optional[int] = None,
                    batch_size: int = 8, use_chat_template: Optional[bool] = None,
                    sampler: Optional[Callable] = None,
                    chat_template_args: Optional[Dict[str, Any]] = None,
                    model_info: Optional[Dict[str, Any]] = None) -> Any:
    """mlx-lm's lm-evaluation-harness model (``mlx_lm.evaluate.MLXLM``) around a model in memory.

    ``MLXLM.__init__`` takes a path and loads the model itself; task=lm_eval
    must score the model mlxhydra has built (quantized, patched, with
    adapters), so this subclass skips that constructor and sets the private
    attributes it would have set (``_model``, ``_max_tokens``,
    ``_batch_size``, ``_sampler``). Everything else — log-likelihoods,
    batched greedy generation, the chat template — is mlx-lm's own code.
    Importing it imports lm-eval (mlx_lm.evaluate does).

    Args:
        model: The mlx-lm model.
        tokenizer: mlx-lm's ``TokenizerWrapper`` for it.
        max_tokens: Cap on generated tokens; None: each task's own ``max_gen_toks``.
        batch_size: Sequences scored or generated at once.
        use_chat_template: None: the tokenizer's chat template when it has one
            (``mlx_lm.evaluate``'s rule).
        sampler: None: greedy, as ``mlx_lm.evaluate``'s default sampler.
        chat_template_args: Extra arguments for ``apply_chat_template``
            (``mlx_lm.evaluate --chat-template-args``), per instance.
        model_info: What lm-eval's results JSON records under ``config``.
    """
    global _IN_MEMORY_MLXLM
    if _IN_MEMORY_MLXLM is None:
        _IN_MEMORY_MLXLM = _define_in_memory_mlxlm()
    return _IN_MEMORY_MLXLM(model, tokenizer, max_tokens, batch_size, use_chat_template,
                            sampler, chat_template_args, model_info)


def _define_in_memory_mlxlm() -> Any:
    from types import MethodType

    from lm_eval.api.model import LM
    from mlx_lm.evaluate import MLXLM, chat_template_fn

    class InMemoryMLXLM(MLXLM):
        def __init__(self, model, tokenizer, max_tokens, batch_size, use_chat_template,
                     sampler, chat_template_args, model_info) -> None:
            LM.__init__(self)  # not MLXLM.__init__, which loads a model from a path
            self._model = model
            self.tokenizer = tokenizer
            self._max_tokens = max_tokens
            self._batch_size = batch_size
            self.use_chat_template = (tokenizer.chat_template is not None
                                      if use_chat_template is None else use_chat_template)
            self._sampler = sampler
            if chat_template_args:
                # mlx_lm.evaluate sets this on the class for the whole process; per instance here.
                self.apply_chat_template = MethodType(chat_template_fn(**chat_template_args), self)
            self._model_info = dict(model_info or {})

        def get_model_info(self) -> Dict[str, Any]:
            """Merged into the ``config`` entry of lm-eval's results by ``simple_evaluate``."""
            return dict(self._model_info)

    return InMemoryMLXLM
