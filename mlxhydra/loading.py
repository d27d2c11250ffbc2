"""Loading: classes → args → model → quantize → strict load.

Follows ``mlx_lm.utils.load_model`` step for step and calls mlx-lm's helpers,
with three differences: every weight mismatch is reported in one error,
runtime quantization happens layer by layer while the weights are read (so
the float model is never whole in memory), and each stage is timed.
"""

import json
import logging
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_unflatten

from . import arch
from .errors import ConfigError, WeightsError
from .model_source import read_config_json
from .quant import QuantSpec, make_decider, parse_quant, same_settings
from .weights import absent_shards, read_header, require_weight_files, weight_files

log = logging.getLogger(__name__)

DTYPES = {"float16": mx.float16, "bfloat16": mx.bfloat16, "float32": mx.float32}
SHOWN = 5


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
    return mlx_load_config(model_dir)


def apply_mlx_lm_adjustments(model_dir: Path, config: dict) -> List[str]:
    """Apply what mlx-lm's ``load_config`` derives, unless the user changed that key.

    Returns the keys that were changed.
    """
    raw = read_config_json(model_dir)
    derived = load_config(model_dir)
    changed = []
    for key, value in derived.items():
        if raw.get(key) != value and config.get(key) == raw.get(key):
            config[key] = value
            changed.append(key)
    return changed


def _legacy_quantization(model_dir: Path, config: dict) -> None:
    # mlx-lm also finds quantization_config in text_config or hf_quant_config.json.
    if "quantization_config" not in config:
        text_config = config.get("text_config") or {}
        if isinstance(text_config, dict) and "quantization_config" in text_config:
            config["quantization_config"] = text_config["quantization_config"]
    if "quantization_config" not in config:
        hf_quant_config = model_dir / "hf_quant_config.json"
        if hf_quant_config.exists():
            try:
                config["quantization_config"] = json.loads(hf_quant_config.read_text())
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
                raise ConfigError(f"{hf_quant_config}: not readable as JSON: {e}")


def _saved_quantization(config: dict, weights: dict) -> Tuple[Optional[dict], dict]:
    """The quantization a pre-quantized model was saved with, as mlx-lm reads it.

    Returns (quantization or None, weights) — AWQ/GPTQ weights are repacked.
    """
    if config.get("quantization") is not None:
        q = config["quantization"]
        if not isinstance(q, Mapping) or not all(isinstance(q.get(k), int) for k in ("group_size", "bits")):
            shown = {k: q.get(k) for k in ("group_size", "bits")} if isinstance(q, Mapping) else q
            raise ConfigError(
                f"model.quantization={shown!r}: expected a mapping with integer group_size and "
                "bits (and optionally mode), as mlx-lm saves it"
            )
        return q, weights
    qc = config.get("quantization_config")
    if not qc:
        return None, weights
    if not isinstance(qc, Mapping) or "quant_method" not in qc:
        raise ConfigError(
            f"model.quantization_config={qc!r}: expected a mapping with a quant_method "
            "(mxfp4, mxfp8, fp8, compressed-tensors, modelopt, awq, gptq, bitnet)"
        )
    from mlx_lm import utils as mu

    method = qc.get("quant_method")
    if method == "mxfp4":
        q = {"group_size": 32, "bits": 4, "mode": "mxfp4"}
    elif method == "mxfp8" or (
        method == "fp8"
        and qc.get("scale_fmt") == "ue8m0"
        and list(qc.get("weight_block_size", ())) == [32, 32]
    ):
        q = {"group_size": 32, "bits": 8, "mode": "mxfp8"}
    elif method == "compressed-tensors":
        try:
            q = mu._compressed_tensors_quantization(qc)
        except ValueError as e:
            raise ConfigError(f"model.quantization_config: {e}")
    elif method == "modelopt":
        settings = qc.get("quantization", qc)
        if settings.get("quant_algo") != "NVFP4":
            raise ConfigError(f"quantization_config: unsupported modelopt quant_algo {settings.get('quant_algo')!r}")
        q = {"group_size": settings.get("group_size", 16), "bits": 4, "mode": "nvfp4"}
    elif method in ("awq", "gptq"):
        try:
            weights, q = mu._transform_awq_weights(weights, qc)
        except ValueError as e:
            raise ConfigError(f"model.quantization_config ({method}): {e}")
    else:
        return None, weights  # bitnet and float formats: handled by the caller / sanitize
    config["quantization"] = q
    config["quantization_config"] = q
    return q, weights


def _quantize_saved_layout(model: nn.Module, quantization: dict, weights: dict) -> None:
    from mlx_lm.utils import _takes_global_scale, infer_quant_config

    def class_predicate(path, module):
        if path in quantization:
            return quantization[path]
        if not hasattr(module, "to_quantized") or f"{path}.scales" not in weights:
            return False
        params = infer_quant_config(path, module, weights)
        if f"{path}.global_scale" in weights and _takes_global_scale(module):
            params["global_scale"] = True
        return params

    nn.quantize(
        model,
        group_size=quantization["group_size"],
        bits=quantization["bits"],
        mode=quantization.get("mode", "affine"),
        class_predicate=class_predicate,
    )


def _quantize_activations(model: nn.Module) -> None:
    def to_qq(m):
        if not isinstance(m, nn.QuantizedLinear):
            return m
        if m.mode not in ("nvfp4", "mxfp8") or "bias" in m:
            raise ConfigError(
                f"quantize_activations: needs nvfp4 or mxfp8 layers without bias, got mode {m.mode}"
            )
        out_dims, in_dims = m.weight.shape
        return nn.QQLinear(in_dims * 32 // m.bits, out_dims, m.group_size, m.bits, m.mode)

    from mlx.utils import tree_map

    model.update_modules(tree_map(to_qq, model.leaf_modules(), is_leaf=nn.Module.is_module))


def check_weights(model: nn.Module, weights: Mapping[str, mx.array], files: List[Path]) -> List[str]:
    """Compare weights with the model's parameters; one line per kind of mismatch."""
    expected = dict(tree_flatten(model.parameters()))
    missing = sorted(k for k in expected if k not in weights)
    unexpected = sorted(k for k in weights if k not in expected)
    shapes = sorted(
        f"{k} {tuple(weights[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in weights and weights[k].shape != v.shape
    )
    problems = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes)):
        if items:
            more = f" (+{len(items) - SHOWN} more)" if len(items) > SHOWN else ""
            problems.append(f"{len(items)} {label}: {', '.join(items[:SHOWN])}{more}")
    if problems:
        names = ", ".join(f.name for f in files) or "no files"
        problems.append(f"read {names}")
    absent = absent_shards(files[0].parent) if missing and files else []
    if absent:
        more = " ..." if len(absent) > SHOWN else ""
        problems.append(
            f"model.safetensors.index.json lists {len(absent)} missing file(s): "
            f"{', '.join(absent[:SHOWN])}{more} (an incomplete copy or download?)"
        )
    return problems


def _quantize_while_loading(
    model: nn.Module, weights: dict, spec: QuantSpec
) -> Dict[str, Any]:
    """Quantize each chosen layer as soon as its float weights are read.

    At most two layers' float weights are in memory at a time: each is read,
    quantized and put in place while the layer before is evaluated.
    """
    decide = make_decider(spec, model)
    layers: Dict[str, dict] = {}
    counts = {"quantized": 0, "float_by_rule_or_predicate": 0, "float_indivisible": 0}
    plan = []
    for path, module in model.named_modules():
        if not hasattr(module, "to_quantized") or not hasattr(module, "weight"):
            continue
        params = decide(path, module)
        if params is None:
            counts["float_by_rule_or_predicate"] += 1
        elif module.weight.shape[-1] % params.get("group_size", 64) != 0:  # to_quantized's default
            counts["float_indivisible"] += 1
        else:
            plan.append((path, module, params))
    # A rule that matches nothing is most likely a typo in its pattern (but a
    # sweep may share rules between architectures): warn and report it.
    paths = [p for p, m in model.named_modules() if hasattr(m, "to_quantized") and hasattr(m, "weight")]
    unmatched = [r.pattern.pattern for r in spec.rules if not any(r.matches(p) for p in paths)]
    if unmatched:
        log.warning("quant.rules patterns that match no quantizable layer: %s", ", ".join(unmatched))
    # Popped one by one and every reference dropped after use: a float module
    # still referenced (by the plan, a loop variable) keeps its evaluated float
    # weights alive, and the float model would pile up in memory layer by layer.
    plan.reverse()
    # Each layer is evaluated in MLX's thread while Python prepares the next
    # one; waiting on the layer before keeps at most two in flight.
    pending: List[list] = []
    while plan:
        path, module, params = plan.pop()
        own = {}
        for name, _ in tree_flatten(module.parameters()):
            key = f"{path}.{name}"
            if key in weights:
                own[name] = weights.pop(key)
        module.update(tree_unflatten(list(own.items())))
        qmodule = module.to_quantized(**params)
        arrays = []
        for name, value in tree_flatten(qmodule.parameters()):
            weights[f"{path}.{name}"] = value
            arrays.append(value)
        mx.async_eval(arrays)
        pending.append(arrays)
        if len(pending) > 1:
            mx.eval(pending.pop(0))
        model.update_modules(tree_unflatten([(path, qmodule)]))
        del module, own, qmodule, arrays
        layers[path] = params
        counts["quantized"] += 1
    for arrays in pending:
        mx.eval(arrays)
    return {"layers": layers, **counts, "unmatched_rules": unmatched}


def _cast(model: nn.Module, weights: dict, dtype: Optional[str]) -> None:
    if dtype is None:
        return
    if dtype not in DTYPES:
        raise ConfigError(f"load.dtype={dtype!r}: expected one of {', '.join(DTYPES)} or null")
    target = DTYPES[dtype]
    keep = getattr(model, "cast_predicate", lambda _: True)
    for k, v in weights.items():
        if mx.issubdtype(v.dtype, mx.floating) and keep(k):
            weights[k] = v.astype(target)


def _open_weights(files: List[Path]) -> dict:
    weights = {}
    for f in files:
        read_header(f)
        try:
            weights.update(mx.load(str(f)))
        except (RuntimeError, ValueError, OSError) as e:
            raise WeightsError(f"{f}: cannot be read as safetensors: {e}")
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
) -> Tuple[nn.Module, dict, Dict[str, Any]]:
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
        classes: (Model, ModelArgs) already looked up with ``arch.get_classes``.
        weights_key: The weights fingerprint: reuse (and keep) this process's
            opened float weights (``mlxhydra.cache``; for multirun jobs only).

    Returns:
        (model, config, report): the report has the stage times, the
        quantization applied and the weight files read.

    Raises:
        ConfigError, WeightsError: with every problem named.
    """
    model_dir = Path(model_dir)
    spec = quant if isinstance(quant, QuantSpec) or quant is None else parse_quant(quant)
    times: Dict[str, float] = {}
    report: Dict[str, Any] = {"times": times}

    t = time.perf_counter()
    model_cls, args_cls = classes or arch.get_classes(
        config, model_dir, trust_remote_code=trust_remote_code,
        model_class=model_class, args_class=args_class,
    )
    _legacy_quantization(model_dir, config)
    report["ignored_keys"] = arch.ignored_keys(config, args_cls)
    model = arch.instantiate(model_cls, arch.make_args(config, args_cls), config)
    times["instantiate"] = time.perf_counter() - t

    t = time.perf_counter()
    files = require_weight_files(model_dir) if strict else weight_files(model_dir)
    report["weight_files"] = [str(f) for f in files]
    from . import cache

    weights, report["weights_cache"] = cache.open_weights(weights_key, lambda: _open_weights(files))
    if hasattr(model, "sanitize"):
        weights = model.sanitize(weights)
    saved, weights = _saved_quantization(config, weights)
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
                f"{model_dir} is already quantized ({_settings(saved)}); re-quantizing to "
                f"{_request(spec)} is refused: load the float model instead, or use quant=none"
            )
        if "method" not in saved:
            _quantize_saved_layout(model, saved, weights)
        _cast(model, weights, dtype)
        applied = {"source": "pre-quantized", "settings": saved}
    else:
        _cast(model, weights, dtype)
        applied = {"source": "none"}
    if config.get("quantize_activations", False):
        _quantize_activations(model)
    model.eval()  # QQLinear layers (quantize_activations) take their packed shapes only in eval mode
    problems = check_weights(model, weights, files)
    if problems and strict:
        raise WeightsError(f"weights do not fit the model ({model_dir}): " + "; ".join(problems))
    report["weight_mismatches"] = problems
    if saved is None and spec is not None:
        applied = {"source": "runtime", **spec.describe(), **_quantize_while_loading(model, weights, spec)}
        config["quantization"] = _config_entry(spec, applied["layers"])
        config["quantization_config"] = config["quantization"]
    times["quantize"] = time.perf_counter() - t

    t = time.perf_counter()
    model.eval()
    model.load_weights(list(weights.items()), strict=strict)
    del weights
    if not lazy:
        mx.eval(model.parameters())
    times["load_weights"] += time.perf_counter() - t
    report["quantization"] = {**applied, **quantization_summary(model)}
    return model, config, report


def _settings(q: Mapping[str, Any]) -> str:
    if "method" in q:
        return str(q["method"])
    return f"bits={q.get('bits')}, group_size={q.get('group_size')}, mode={q.get('mode', 'affine')}"


def _request(spec: QuantSpec) -> str:
    """A runtime request in words, for error messages."""
    if spec.recipe is not None:
        parts = [f"recipe={spec.recipe}, group_size={spec.default['group_size']}"]
    else:
        parts = [_settings(spec.default)] if spec.default else []
    if spec.rules:
        parts.append(f"{len(spec.rules)} per-layer rule(s)")
    return ", ".join(parts)


def _config_entry(spec: QuantSpec, layers: Dict[str, dict]) -> dict:
    """The ``quantization`` entry that reloads these layers (mlx-lm's format)."""
    default = spec.default or next(iter(layers.values()), {"group_size": 64, "bits": 4, "mode": "affine"})
    entry: Dict[str, Any] = dict(default)
    for path, params in layers.items():
        if params != default or spec.recipe is not None:  # mlx-lm records every recipe layer
            entry[path] = params
    return entry


def quantization_summary(model: nn.Module) -> Dict[str, Any]:
    """Counts of quantized and float layers, bits per weight and parameters."""
    from mlx_lm.utils import compute_bits_per_weight, get_total_parameters

    quantized = floating = 0
    for _, m in model.named_modules():
        if hasattr(m, "bits") and hasattr(m, "group_size"):
            quantized += 1
        elif hasattr(m, "to_quantized") and hasattr(m, "weight"):
            floating += 1
    params = get_total_parameters(model)
    return {
        "quantized_layers": quantized,
        "float_layers": floating,
        "bits_per_weight": compute_bits_per_weight(model) if params else None,
        "parameters": params,
    }


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
        quant: Runtime quantization, e.g. ``{"bits": 4, "group_size": 64}``.
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
    model_dir = Path(path).expanduser()
    config = load_config(model_dir)
    if model_config is not None:
        config.update(model_config)
    model, config, _ = build_model(
        model_dir, config, quant=quant, strict=strict, lazy=lazy,
        trust_remote_code=trust_remote_code,
    )
    return model, config
