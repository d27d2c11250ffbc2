"""Runtime quantization of float weights, layer by layer while they are read."""

import logging
import os
import threading
from typing import Any, Callable, Dict, List, Optional

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_unflatten

from .prequantized import describe_settings
from .quant_spec import QuantSpec, make_decider

log = logging.getLogger("mlxhydra.loading")

MAX_CPU_STREAMS = 4  # each stream in flight holds one more layer's float weights


def quantize_streams() -> list:
    """The streams layers are quantized on: one per CPU core (at most MAX_CPU_STREAMS) on
    the CPU back end, where each stream is one thread and ``mx.quantize`` uses one thread;
    the default stream on a GPU."""
    if mx.default_device().type != mx.DeviceType.cpu:
        return [mx.default_stream(mx.default_device())]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return [mx.default_stream(mx.cpu)] + _extra_cpu_streams(max(1, min(cores or 1, MAX_CPU_STREAMS)) - 1)


_per_thread = threading.local()


def _extra_cpu_streams(count: int) -> list:
    # Created once per Python thread: a stream is a thread that lives as long as the process, and
    # MLX lets only the thread that made it use it (the Python API loads on the caller's thread,
    # a job runs on the job thread).
    made = _per_thread.__dict__.setdefault("streams", {})
    if count not in made:
        made[count] = [mx.new_stream(mx.cpu) for _ in range(count)]
    return made[count]


def quantizable_paths(model: nn.Module) -> List[str]:
    """The paths of the layers that can be quantized."""
    return [p for p, m in model.named_modules() if hasattr(m, "to_quantized") and hasattr(m, "weight")]


def quantize_while_loading(
    model: nn.Module, weights: dict, spec: QuantSpec,
    decide: Optional[Callable[[str, Any], Optional[dict]]] = None,
    paths: Optional[List[str]] = None, evaluate: bool = True,
) -> Dict[str, Any]:
    """Quantize each chosen layer as soon as its float weights are read.

    At most one layer per quantization stream, plus one, has its float weights
    in memory at a time (:func:`quantize_streams`: two on a 2-core CPU, one on a
    GPU): each is read, quantized and put in place while the layers before it
    are evaluated.

    Args:
        decide: ``make_decider(spec, model)`` made earlier (on the whole model,
            before a pipeline rank dropped layers); made here when None.
        paths: ``quantizable_paths`` of the whole model, for the rules that
            match none; this model's when None.
        evaluate: False leaves the quantized layers lazy (tensor parallelism
            evaluates each rank's slices after sharding).
    """
    decide = decide or make_decider(spec, model)
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
    paths = quantizable_paths(model) if paths is None else paths
    unmatched = [r.pattern.pattern for r in spec.rules if not any(r.matches(p) for p in paths)]
    if unmatched:
        log.warning("quant.rules patterns that match no quantizable layer: %s", ", ".join(unmatched))
    # Popped one by one and every reference dropped after use: a float module
    # still referenced (by the plan, a loop variable) keeps its evaluated float
    # weights alive, and the float model would pile up in memory layer by layer.
    plan.reverse()
    # Each layer is evaluated in MLX's threads while Python prepares the next
    # one; waiting on the oldest keeps at most len(streams) + 1 in flight.
    streams = quantize_streams()
    pending: List[list] = []
    while plan:
        path, module, params = plan.pop()
        own = {}
        for name, _ in tree_flatten(module.parameters()):
            key = f"{path}.{name}"
            if key in weights:
                own[name] = weights.pop(key)
        module.update(tree_unflatten(list(own.items())))
        with mx.stream(streams[counts["quantized"] % len(streams)]):
            qmodule = module.to_quantized(**params)
        arrays = []
        for name, value in tree_flatten(qmodule.parameters()):
            weights[f"{path}.{name}"] = value
            arrays.append(value)
        if evaluate:
            mx.async_eval(arrays)
            pending.append(arrays)
        if len(pending) > len(streams):
            mx.eval(pending.pop(0))
        model.update_modules(tree_unflatten([(path, qmodule)]))
        del module, own, qmodule, arrays
        layers[path] = params
        counts["quantized"] += 1
    for arrays in pending:
        mx.eval(arrays)
    return {"layers": layers, **counts, "unmatched_rules": unmatched}


def describe_request(spec: QuantSpec) -> str:
    """A runtime request in words, for error messages."""
    if spec.recipe is not None:
        parts = [f"recipe={spec.recipe}, group_size={spec.default['group_size']}"]
    else:
        parts = [describe_settings(spec.default)] if spec.default else []
    if spec.rules:
        parts.append(f"{len(spec.rules)} per-layer rule(s)")
    return ", ".join(parts)


def config_entry(spec: QuantSpec, layers: Dict[str, dict]) -> dict:
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
