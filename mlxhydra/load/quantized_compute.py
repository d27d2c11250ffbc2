"""How quantized layers compute: ``quant.compute=native|dequantized|auto``.

mlx's CPU ``quantized_matmul`` is far slower than its float matmul (tens of
times for a batch of rows), while dequantizing a layer's weights at use and
multiplying in float costs little more than the float model. ``dequantized``
makes every quantized linear layer compute that way: the layer keeps its
packed weights, scales and biases (the model stays quantized in memory); each
call dequantizes them with ``mx.dequantize`` into a temporary float matrix and
multiplies. The values multiplied are the quantized ones, each rounded once to
the dtype the product is computed in (the model's float dtype; for the
non-affine modes the activations' dtype, as mlx's ``quantized_matmul``).

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


def _affine(scales: mx.array) -> bool:
    # Affine scales and biases carry the model's float dtype; the other modes' scales are
    # integers (e8m0 or fp8 bits) and their values are exact in any float dtype.
    return mx.issubdtype(scales.dtype, mx.floating)


def dequantize_rounded_once(layer: nn.Module, weight: mx.array, scales: mx.array,
                            biases: Any, dtype: Any) -> mx.array:
    """The layer's ``weight`` rows dequantized into ``dtype``, each value rounded once.

    Affine: ``scale * q + bias`` in float32, then rounded to ``dtype``, so each weight is
    the quantized value as closely as ``dtype`` holds it. mlx's dequantize from float16 or
    bfloat16 scales differs from that in about half the values and, in float16, takes about
    twice the time on the CPU. The casts touch one value per group.
    """
    if _affine(scales):
        scales = scales.astype(mx.float32)
        biases = None if biases is None else biases.astype(mx.float32)
    return mx.dequantize(weight, scales=scales, biases=biases, group_size=layer.group_size,
                         bits=layer.bits, mode=layer.mode, dtype=dtype)


def dequantized_matmul(layer: nn.Module, x: mx.array) -> mx.array:
    """``x @ W.T`` with ``W`` the layer's weight dequantized into a temporary float matrix.

    The product's dtype is the float model's: ``x @ W.T`` with ``W`` in the scales' dtype
    (affine), or the activations' dtype, which mlx's ``quantized_matmul`` returns (other modes).
    """
    scales = layer["scales"]
    dtype = mx.result_type(x, scales) if _affine(scales) else x.dtype
    return x @ dequantize_rounded_once(layer, layer["weight"], scales, layer.get("biases"), dtype).T


class DequantizedLinear(nn.QuantizedLinear):
    """A ``QuantizedLinear`` that dequantizes its weight at each call and multiplies in float."""

    def __call__(self, x: mx.array) -> mx.array:
        x = dequantized_matmul(self, x)
        if "bias" in self:
            x = x + self["bias"]
        return x


class DequantizedEmbedding(nn.QuantizedEmbedding):
    """A ``QuantizedEmbedding`` that looks up and projects (``as_linear``, tied output) with
    its weights rounded once, as :class:`DequantizedLinear` multiplies."""

    def __call__(self, x: mx.array) -> mx.array:
        scales = self["scales"]
        if not _affine(scales):
            return super().__call__(x)
        biases = self.get("biases")
        return dequantize_rounded_once(self, self["weight"][x], scales[x],
                                       None if biases is None else biases[x], scales.dtype)

    def as_linear(self, x: mx.array) -> mx.array:
        return dequantized_matmul(self, x)


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
