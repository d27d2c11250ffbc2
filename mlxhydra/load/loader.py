"""The loader: classes → args → model → quantize → strict load.

Follows ``mlx_lm.utils.load_model`` step for step and calls mlx-lm's helpers,
with three differences: every weight mismatch is reported in one error,
runtime quantization happens layer by layer while the weights are read (so
the float model is never whole in memory), and each stage is timed in a
:class:`LoadReport`.
"""

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Tuple, Union

import mlx.core as mx
import mlx.nn as nn

from ..distributed.ranks import world
from ..errors import ConfigError, WeightsError
from . import architecture, sharding, weights_cache
from .adapters import apply_adapters
from .model_config import load_config
from .prequantized import (
    describe_settings,
    find_quantization_config,
    quantize_activations,
    quantize_saved_layout,
    saved_quantization,
)
from .quant_spec import QuantSpec, make_decider, same_settings
from .quantized_compute import apply_compute
from .runtime_quant import (
    config_entry,
    describe_request,
    quantizable_paths,
    quantization_summary,
    quantize_while_loading,
)
from .settings import DTYPE_NAMES, LoadSettings
from .weight_files import find_weight_files, read_header, require_weight_files
from .weight_fit import fit_problems

if TYPE_CHECKING:
    from .learned_quant import MethodRun

log = logging.getLogger(__name__)

DTYPES = {name: getattr(mx, name) for name in DTYPE_NAMES}


@dataclass
class LoadReport:
    """What loading did: stage times, files read, quantization applied, mismatches."""

    times: Dict[str, float] = field(default_factory=dict)  # instantiate, load_weights, quantize
    weight_files: List[str] = field(default_factory=list)
    weights_cache: Optional[str] = None  # "hit", "miss", or None without a cache key
    ignored_keys: List[str] = field(default_factory=list)  # keys ModelArgs.from_dict drops
    weight_mismatches: List[str] = field(default_factory=list)  # with strict=False
    quantization: Dict[str, Any] = field(default_factory=dict)  # see runs.record.QuantizationRecord
    model_config: Dict[str, Any] = field(default_factory=dict)  # as loaded: with its quantization entry
    file_identities: Dict[str, Tuple[int, ...]] = field(default_factory=dict)  # path -> size, mtime, inode
    adapter: Optional[Dict[str, Any]] = None  # see runs.record.AdapterRecord
    # sharded: mode, rank, layers, weight_files, weight_bytes_read, parameter_bytes
    sharding: Dict[str, Any] = field(default_factory=dict)


def _cast(model: nn.Module, weights: dict, dtype: Optional[str]) -> None:
    if dtype is None:
        return
    target = DTYPES[dtype]
    keep = getattr(model, "cast_predicate", lambda _: True)
    for k, v in weights.items():
        if mx.issubdtype(v.dtype, mx.floating) and keep(k):
            weights[k] = v.astype(target)


def read_weights(files: List[Path]) -> dict:
    """Open safetensors files (lazily, as ``mx.load`` does) into one dict.

    Raises:
        WeightsError: naming the file that cannot be read.
    """
    weights = {}
    for f in files:
        read_header(f)
        try:
            weights.update(mx.load(str(f)))
        except (RuntimeError, ValueError, OSError) as e:
            raise WeightsError(f"{f}: cannot be read as safetensors: {e}") from e
    return weights


@dataclass
class _Instantiated:
    """The model before any weight is read, and what the later stages need from that step."""

    model: nn.Module
    plan: Optional[sharding.ShardPlan]
    method_run: Optional["MethodRun"]  # a calibrated quant.method's data
    decide: Any = None  # on the whole model, before sharding: recipes count its layers
    paths: Any = None


def _instantiate(model_dir: Path, config: dict, settings: LoadSettings, classes: Optional[Tuple[type, type]],
                 method_run: Optional["MethodRun"], report: LoadReport) -> _Instantiated:
    spec, group = settings.quant, world().group
    model_cls, args_cls = classes or architecture.get_classes(
        config, model_dir, trust_remote_code=settings.trust_remote_code,
        model_class=settings.model_class, args_class=settings.args_class,
    )
    find_quantization_config(model_dir, config)
    report.ignored_keys = architecture.ignored_keys(config, args_cls)
    if _learned(spec):
        from . import learned_quant

        method_run = method_run or learned_quant.prepare_method(spec, model_dir, config)
        learned_quant.seed_before_instantiation(method_run)
    model = architecture.instantiate(model_cls, architecture.make_args(config, args_cls), config)
    if _learned(spec):
        learned_quant.choose_data(method_run)
    decide = paths = None
    if spec is not None and group is not None:  # on the whole model, before sharding splits it
        decide, paths = make_decider(spec, model), quantizable_paths(model)
    plan = sharding.plan_sharding(model, settings.shard, group, config)
    return _Instantiated(model, plan, method_run, decide, paths)


def _learned(spec: Optional[QuantSpec]) -> bool:
    return spec is not None and spec.method != "rtn"


def _open_weights(model_dir: Path, config: dict, built: _Instantiated, settings: LoadSettings,
                  weights_key: Optional[str], report: LoadReport) -> Tuple[dict, List[Path], Optional[dict]]:
    """(weights as the model names them, the files read, the saved quantization or None)."""
    plan = built.plan
    files = require_weight_files(model_dir) if settings.strict else find_weight_files(model_dir)
    if plan is not None:  # a cache would keep every rank's whole float model
        weights_key = None
        if plan.mode == "pipeline":
            files = sharding.files_for_layers(files, plan.layers)
    report.weight_files = [str(f) for f in files]
    weights, report.weights_cache = weights_cache.open_weights(weights_key, lambda: read_weights(files))
    if hasattr(built.model, "sanitize"):
        weights = built.model.sanitize(weights)
    if plan is not None and plan.mode == "pipeline":
        weights = sharding.drop_other_layers(weights, plan.layers)
    saved, weights = saved_quantization(config, weights)
    return weights, files, saved


def _quantize(model_dir: Path, config: dict, built: _Instantiated, settings: LoadSettings, weights: dict,
              files: List[Path], saved: Optional[dict], report: LoadReport) -> Dict[str, Any]:
    """Quantize the model as saved or as asked, check the weights fit; returns what was applied."""
    spec, model = settings.quant, built.model
    qc = config.get("quantization_config") or {}
    if saved is None and isinstance(qc, dict) and qc.get("quant_method") == "bitnet":
        from mlx_lm.models.bitlinear_layers import bitnet_quantize

        saved = {"method": "bitnet"}
        built.model = model = bitnet_quantize(model, qc)
    if saved is not None:
        if spec is not None and not same_settings(spec, saved):
            raise ConfigError(
                f"{model_dir} is already quantized ({describe_settings(saved)}); re-quantizing to "
                f"{describe_request(spec)} is refused: load the float model instead, or use quant=none"
            )
        if "method" not in saved:
            quantize_saved_layout(model, saved, weights)
        _cast(model, weights, settings.dtype)
        applied = {"source": "pre-quantized", "settings": saved}
    else:
        _cast(model, weights, settings.dtype)
        applied = {"source": "none"}
    if config.get("quantize_activations", False):
        quantize_activations(model)
    model.eval()  # QQLinear layers (quantize_activations) take their packed shapes only in eval mode
    problems = fit_problems(model, weights, files)
    if problems and settings.strict:
        raise WeightsError(f"weights do not fit the model ({model_dir}): " + "; ".join(problems))
    report.weight_mismatches = problems
    if saved is None and spec is not None and not _learned(spec):
        # Tensor parallelism: quantized lazily, evaluated slice by slice after shard().
        evaluate = built.plan is None or built.plan.mode != "tensor"
        applied = {"source": "runtime", **spec.describe(),
                   **quantize_while_loading(model, weights, spec, decide=built.decide, paths=built.paths,
                                            evaluate=evaluate)}
        config["quantization"] = config_entry(spec, applied["layers"])
        config["quantization_config"] = config["quantization"]
    return applied


def build_model(model_dir: Union[str, Path], config: dict, settings: Optional[LoadSettings] = None, *,
                task: Optional[str] = None, classes: Optional[Tuple[type, type]] = None,
                weights_key: Optional[str] = None, method_run: Optional["MethodRun"] = None,
                ) -> Tuple[nn.Module, dict, LoadReport]:
    """Instantiate, quantize and load the model that ``settings`` describe, from a ready config dict.

    The one loading function: the job, the KL reference, the draft model and
    :func:`load_model` all call it. In a distributed run (``mlx.launch``) the
    model is split across the ranks as ``settings.shard`` says (:mod:`.sharding`).

    Args:
        model_dir: Directory with the weight files (and any model_file).
        config: The complete model config (it is modified as mlx-lm modifies it).
        settings: How to load it (None: the shipped defaults, no quantization).
        task: ``task.name``, for ``quant.compute=auto`` (None: native compute).
        classes: (Model, ModelArgs) already looked up with ``architecture.get_classes``.
        weights_key: The weights fingerprint: reuse (and keep) this process's
            opened float weights (:mod:`.weights_cache`; for multirun jobs only).
        method_run: The calibration data of a calibrated ``quant.method``
            (:func:`.learned_quant.prepare_method`); by default the model
            directory's ``eval.txt`` or the embedded corpus.

    Returns:
        (model, config, report).

    Raises:
        ConfigError, WeightsError: with every problem named.
    """
    model_dir, settings = Path(model_dir), settings or LoadSettings.from_groups()
    report = LoadReport()
    times = report.times

    t = time.perf_counter()
    built = _instantiate(model_dir, config, settings, classes, method_run, report)
    times["instantiate"] = time.perf_counter() - t

    t = time.perf_counter()
    weights, files, saved = _open_weights(model_dir, config, built, settings, weights_key, report)
    times["load_weights"] = time.perf_counter() - t

    t = time.perf_counter()
    applied = _quantize(model_dir, config, built, settings, weights, files, saved, report)
    times["quantize"] = time.perf_counter() - t

    t = time.perf_counter()
    model = built.model
    model.eval()
    model.load_weights(list(weights.items()), strict=settings.strict)
    del weights  # before a calibrated method reads the float weights, layer by layer
    if saved is None and _learned(settings.quant):
        from . import learned_quant

        start = time.perf_counter()
        model, applied = learned_quant.quantize_with_method(model, config, built.method_run)
        times["quantize"] += time.perf_counter() - start
        t += time.perf_counter() - start
    report.quantization = {**applied, **quantization_summary(model)}  # tensor: of the whole model
    if built.plan is not None:
        report.sharding = sharding.shard_and_evaluate(model, built.plan, files, settings.lazy)
    elif not settings.lazy:
        mx.eval(model.parameters())
    times["load_weights"] += time.perf_counter() - t
    report.model_config = config
    if settings.adapter_path is not None:
        t = time.perf_counter()
        report.adapter = apply_adapters(model, settings.adapter_path, settings.fuse)
        if not settings.lazy:
            mx.eval(model.parameters())
        times["adapters"] = time.perf_counter() - t
    report.quantization.update(apply_compute(model, settings.compute, task))
    return model, config, report


def load_model(
    path: Union[str, Path],
    model_config: Optional[Dict[str, Any]] = None,
    *,
    quant: Union[QuantSpec, Mapping[str, Any], None] = None,
    strict: bool = True,
    lazy: bool = False,
    trust_remote_code: bool = False,
) -> Tuple[nn.Module, dict]:
    """Load a model directory (or a Hugging Face id) as ``mlx_lm.utils.load_model`` does.

    Args:
        path: The model directory, or a Hugging Face id ``org/name[@REVISION]`` when no
            file or directory of that name exists here (resolved as ``mlx_lm.load`` does:
            the Hugging Face cache, downloading when needed; see :mod:`mlxhydra.config.hub`).
        model_config: Merged on top of config.json with ``dict.update`` (shallow,
            as in mlx-lm).
        quant: Runtime quantization, e.g. ``{"bits": 4, "group_size": 64}``; with
            ``"compute": "dequantized"`` the quantized layers (pre-quantized ones too)
            multiply with dequantized weights (:mod:`.quantized_compute`).
        strict: Report every missing, unexpected or mis-shaped weight at once.
        lazy: Leave the parameters unevaluated.
        trust_remote_code: Allow the directory's ``model_file``.

    Returns:
        (model, config) — the same model and config as mlx-lm's for the same
        directory; with ``quant``, the config carries the ``quantization`` entry.

    Raises:
        FileNotFoundError: the directory, its config.json or its weights are missing.
        ValueError: bad config or weights (ConfigError, WeightsError).
        HubError: a Hugging Face id that cannot be resolved (one line naming it and what to do).
    """
    from ..config.hub import is_hub_id, resolve_hub_id

    settings = LoadSettings.from_groups(
        {"strict": strict, "lazy": lazy, "trust_remote_code": trust_remote_code}, quant)
    model_dir = Path(path).expanduser()
    if is_hub_id(str(path)):
        model_dir = resolve_hub_id(str(path)).path
    config = load_config(model_dir)
    if model_config is not None:
        config.update(model_config)
    model, config, _ = build_model(model_dir, config, settings)
    return model, config
