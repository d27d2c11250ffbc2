"""How quantized layers compute: ``quant.compute=native|dequantized|auto``.

mlx's CPU ``quantized_matmul`` is far slower than its float matmul (tens of
times for a batch of rows), while dequantizing a layer's weights at use and
multiplying in float costs little more than the float model. ``dequantized``
makes every quantized linear layer compute that way: the layer keeps its
packed weights, scales and biases (the model stays quantized in memory); each
call dequantizes them with ``mx.dequantize`` into a temporary float matrix and
multiplies. The values multiplied are exactly the quantized ones.

``auto`` picks ``dequantized`` on the CPU back end for quality tasks (their
figures do not depend on how the product is computed) and ``native`` for
everything else, so that speed figures (``bench``, ``generate``) are those of
mlx's own kernels.
"""

from typing import Any, Dict, List

import mlx.core as mx
import mlx.nn as nn

COMPUTE_MODES = ("native", "dequantized", "auto")
# Tasks whose metrics measure the model's outputs, not its speed.
QUALITY_TASKS = ("perplexity", "kl", "accuracy", "lm_eval")


def compute_problems(value: Any) -> List[str]:
    """Problems with ``quant.compute`` (null means native)."""
    if value is None or value in COMPUTE_MODES:
        return []
    return [f"quant.compute={value!r}: expected one of {', '.join(COMPUTE_MODES)}"]


def cpu_backend() -> bool:
    """True when mlx computes on the CPU (no Metal or CUDA device is the default)."""
    return mx.default_device().type == mx.DeviceType.cpu


def resolve_compute(setting: Any, task_name: Any) -> str:
    """``native`` or ``dequantized`` for this job.

    Args:
        setting: ``quant.compute`` (``native``, ``dequantized``, ``auto``; None is native).
        task_name: ``task.name``: ``auto`` dequantizes only for :data:`QUALITY_TASKS`.
    """
    if setting == "auto":
        return "dequantized" if cpu_backend() and task_name in QUALITY_TASKS else "native"
    return setting or "native"


def _dequantized_weight(layer: nn.Module) -> mx.array:
    # The scales' dtype is the model's float dtype: the product then runs in the same
    # matmul kernel as the float model's.
    return mx.dequantize(
        layer["weight"], scales=layer["scales"], biases=layer.get("biases"),
        group_size=layer.group_size, bits=layer.bits, mode=layer.mode,
    )


class DequantizedLinear(nn.QuantizedLinear):
    """A ``QuantizedLinear`` that dequantizes its weight at each call and multiplies in float."""

    def __call__(self, x: mx.array) -> mx.array:
        x = x @ _dequantized_weight(self).T
        if "bias" in self:
            x = x + self["bias"]
        return x


class DequantizedEmbedding(nn.QuantizedEmbedding):
    """A ``QuantizedEmbedding`` whose tied output projection (``as_linear``) is dequantized."""

    def as_linear(self, x: mx.array) -> mx.array:
        return x @ _dequantized_weight(self).T


# Exact classes only: a subclass may compute differently and is left as it is.
SWAPS = {nn.QuantizedLinear: DequantizedLinear, nn.QuantizedEmbedding: DequantizedEmbedding}


def _swap_classes(model: nn.Module, classes: Dict[type, type]) -> int:
    changed = 0
    for _, module in model.named_modules():
        swap = classes.get(type(module))
        if swap is not None:
            module.__class__ = swap
            changed += 1
    return changed


def use_dequantized(model: nn.Module) -> int:
    """Make the model's quantized linear layers compute with dequantized weights.

    The layers keep their parameters (the same arrays: nothing is copied or
    converted); only the method that multiplies changes. Layers of other
    kinds (MoE ``QuantizedSwitchLinear``, activation-quantized ``QQLinear``)
    stay native.

    Returns:
        The number of layers changed.
    """
    return _swap_classes(model, SWAPS)


def use_native(model: nn.Module) -> int:
    """Undo :func:`use_dequantized`; returns the number of layers changed."""
    return _swap_classes(model, {v: k for k, v in SWAPS.items()})


def apply_compute(model: nn.Module, setting: Any, task_name: Any) -> Dict[str, Any]:
    """Set how the model's quantized layers compute for this job.

    Returns:
        The record: ``compute`` (what was used) and ``dequantized_layers``.
    """
    layers = use_dequantized(model) if resolve_compute(setting, task_name) == "dequantized" else 0
    # A model without quantized layers computes natively whatever was asked.
    return {"compute": "dequantized" if layers else "native", "dequantized_layers": layers}
