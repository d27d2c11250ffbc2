"""The loader: classes → args → model → quantize → strict load.

Follows ``mlx_lm.utils.load_model`` step for step and calls mlx-lm's helpers,
with three differences: every weight mismatch is reported in one error,
runtime quantization happens layer by layer while the weights are read (so
the float model is never whole in memory), and each stage is timed in a
:class:`LoadReport`.
"""

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Tuple, Union

import mlx.core as mx
import mlx.nn as nn

from ..config.model_source import read_config_json
from ..errors import ConfigError, WeightsError
from ..file_checks import exists, regular_file_problem
from . import architecture, sharding, weights_cache
from .adapters import apply_adapters
from .load_settings import DTYPE_NAMES, check_dtype
from .prequantized import (
    describe_settings,
    find_quantization_config,
    quantize_activations,
    quantize_saved_layout,
    saved_quantization,
)
from .quant_spec import QuantSpec, make_decider, parse_quant, same_settings
from .quantized_compute import check_compute, use_dequantized
from .runtime_quant import (
    config_entry,
    describe_request,
    quantizable_paths,
    quantization_summary,
    quantize_while_loading,
)
from .weight_files import find_weight_files, read_header, require_weight_files
from .weight_fit import check_weights

if TYPE_CHECKING:
    from .learned_quant import MethodRun

log = logging.getLogger(__name__)

DTYPES = {name: getattr(mx, name) for name in DTYPE_NAMES}


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


def build_model(
    model_dir: Union[str, Path],
    config: dict,
    *,
    quant: Union[QuantSpec, Mapping[str, Any], None] = None,
    strict: bool = True,
    lazy: bool = False,
    trust_remote_code: bool = False,
    dtype: Optional[str] = None,
    model_class: Optional[str] = None,
    args_class: Optional[str] = None,
    classes: Optional[Tuple[type, type]] = None,
    weights_key: Optional[str] = None,
    method_run: Optional["MethodRun"] = None,
    adapter_path: Optional[str] = None,
    fuse: bool = False,
    shard: Optional[str] = None,
    group: Any = None,
) -> Tuple[nn.Module, dict, LoadReport]:
    """Instantiate, quantize and load a model from a ready config dict.

    Args:
        model_dir: Directory with the weight files (and any model_file).
        config: The complete model config (it is modified as mlx-lm modifies it).
        quant: Runtime quantization (a QuantSpec or a ``quant`` mapping).
        strict: Report missing, unexpected and mis-shaped weights as an error.
        lazy: Leave the parameters unevaluated.
        trust_remote_code: Allow the directory's ``model_file``.
        dtype: Cast floating-point weights (float16, bfloat16, float32).
        model_class, args_class: Import paths of your own classes.
        classes: (Model, ModelArgs) already looked up with ``architecture.get_classes``.
        weights_key: The weights fingerprint: reuse (and keep) this process's
            opened float weights (:mod:`.weights_cache`; for multirun jobs only).
        method_run: The calibration data of a calibrated ``quant.method``
            (:func:`.learned_quant.prepare_method`); by default the model
            directory's ``eval.txt`` or the embedded corpus.
        adapter_path: LoRA/DoRA adapters applied after quantization, as
            ``mlx_lm.load(adapter_path=...)`` applies them (:mod:`.adapters`).
        fuse: Fuse the adapters into the weights.
        shard: ``load.shard`` (auto, none, tensor, pipeline): how to split the
            model across ``group`` (:mod:`.sharding`).
        group: The ``mx.distributed`` group of the ranks, or None in one process.

    Returns:
        (model, config, report).

    Raises:
        ConfigError, WeightsError: with every problem named.
    """
    model_dir = Path(model_dir)
    spec = quant if isinstance(quant, QuantSpec) or quant is None else parse_quant(quant)
    problems = check_dtype(dtype)
    if problems:
        raise ConfigError(problems)
    report = LoadReport()
    times = report.times

    t = time.perf_counter()
    model_cls, args_cls = classes or architecture.get_classes(
        config, model_dir, trust_remote_code=trust_remote_code,
        model_class=model_class, args_class=args_class,
    )
    find_quantization_config(model_dir, config)
    report.ignored_keys = architecture.ignored_keys(config, args_cls)
    learned = spec is not None and spec.method != "rtn"
    if learned:
        from . import learned_quant

        method_run = method_run or learned_quant.prepare_method(spec, model_dir, config)
        learned_quant.seed_before_instantiation(method_run)
    model = architecture.instantiate(model_cls, architecture.make_args(config, args_cls), config)
    if learned:
        learned_quant.choose_data(method_run)
    decide = paths = None
    if spec is not None and group is not None:  # on the whole model: recipes count its layers
        decide, paths = make_decider(spec, model), quantizable_paths(model)
    plan = sharding.plan_sharding(model, shard, group, config)
    times["instantiate"] = time.perf_counter() - t

    t = time.perf_counter()
    files = require_weight_files(model_dir) if strict else find_weight_files(model_dir)
    if plan is not None:  # a cache would keep every rank's whole float model
        weights_key = None
        if plan.mode == "pipeline":
            files = sharding.files_for_layers(files, plan.layers)
    report.weight_files = [str(f) for f in files]
    weights, report.weights_cache = weights_cache.open_weights(weights_key, lambda: read_weights(files))
    if hasattr(model, "sanitize"):
        weights = model.sanitize(weights)
    if plan is not None and plan.mode == "pipeline":
        weights = sharding.drop_other_layers(weights, plan.layers)
    saved, weights = saved_quantization(config, weights)
    times["load_weights"] = time.perf_counter() - t

    t = time.perf_counter()
    qc = config.get("quantization_config") or {}
    if saved is None and isinstance(qc, dict) and qc.get("quant_method") == "bitnet":
        from mlx_lm.models.bitlinear_layers import bitnet_quantize

        saved = {"method": "bitnet"}
        model = bitnet_quantize(model, qc)
    if saved is not None:
        if spec is not None and not same_settings(spec, saved):
            raise ConfigError(
                f"{model_dir} is already quantized ({describe_settings(saved)}); re-quantizing to "
                f"{describe_request(spec)} is refused: load the float model instead, or use quant=none"
            )
        if "method" not in saved:
            quantize_saved_layout(model, saved, weights)
        _cast(model, weights, dtype)
        applied = {"source": "pre-quantized", "settings": saved}
    else:
        _cast(model, weights, dtype)
        applied = {"source": "none"}
    if config.get("quantize_activations", False):
        quantize_activations(model)
    model.eval()  # QQLinear layers (quantize_activations) take their packed shapes only in eval mode
    problems = check_weights(model, weights, files)
    if problems and strict:
        raise WeightsError(f"weights do not fit the model ({model_dir}): " + "; ".join(problems))
    report.weight_mismatches = problems
    if saved is None and spec is not None and not learned:
        # Tensor parallelism: quantized lazily, evaluated slice by slice after shard().
        evaluate = plan is None or plan.mode != "tensor"
        applied = {"source": "runtime", **spec.describe(),
                   **quantize_while_loading(model, weights, spec, decide=decide, paths=paths,
                                            evaluate=evaluate)}
        config["quantization"] = config_entry(spec, applied["layers"])
        config["quantization_config"] = config["quantization"]
    times["quantize"] = time.perf_counter() - t

    t = time.perf_counter()
    model.eval()
    model.load_weights(list(weights.items()), strict=strict)
    del weights
    if saved is None and learned:  # the float weights are read lazily, as the method reaches them
        start = time.perf_counter()
        model, applied = learned_quant.quantize_with_method(model, config, method_run)
        times["quantize"] += time.perf_counter() - start
        t += time.perf_counter() - start
    report.quantization = {**applied, **quantization_summary(model)}  # tensor: of the whole model
    if plan is not None:
        report.sharding = sharding.shard_and_evaluate(model, plan, files, lazy)
    elif not lazy:
        mx.eval(model.parameters())
    times["load_weights"] += time.perf_counter() - t
    report.model_config = config
    if adapter_path is not None:
        t = time.perf_counter()
        report.adapter = apply_adapters(model, adapter_path, fuse)
        if not lazy:
            mx.eval(model.parameters())
        times["adapters"] = time.perf_counter() - t
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
    """Load a model directory as ``mlx_lm.utils.load_model`` does.

    Args:
        path: The model directory.
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
    """
    compute = quant.get("compute") if isinstance(quant, Mapping) else None
    problems = check_compute(compute)
    if problems:
        raise ConfigError(problems)
    model_dir = Path(path).expanduser()
    config = load_config(model_dir)
    if model_config is not None:
        config.update(model_config)
    model, config, _ = build_model(
        model_dir, config, quant=quant, strict=strict, lazy=lazy,
        trust_remote_code=trust_remote_code,
    )
    if compute == "dequantized":  # auto needs a task to decide: native here
        use_dequantized(model)
    return model, config
