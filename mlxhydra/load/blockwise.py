"""GPTQ one transformer block at a time, with mlx-lm's own ``gptq_quantize``.

``mlx_lm.quant.gptq.gptq_quantize(model, data, ...)`` runs the whole float
model over the calibration data to collect every layer's Hessian at once,
then quantizes each layer: the float model and all the Hessians are in
memory together. :func:`gptq_by_block` gets the same numbers with one block
in memory: it records what the model feeds its first block and the other
arguments of every block (masks), then calls ``gptq_quantize`` on one block
at a time with that block's float inputs (the previous float block's
outputs), and last on the model with its blocks stood in for, which
quantizes what lies outside them (``lm_head``). The embedding gets its
fallback settings as soon as the first block's inputs are recorded. The
batches are the same as mlx-lm's, so on a float32 model every Hessian, and so
every quantized weight, is the same. On float16/bfloat16 models each block and
its inputs are cast to float32 while its Hessians are collected: mlx-lm sums
them in the model's dtype, which on a bfloat16 model gives unusable weights
(``quant.gptq.hessian_dtype=model`` does as mlx-lm does).
"""

import logging
from typing import Any, Callable, Dict, List, Optional, Tuple

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_unflatten

log = logging.getLogger("mlxhydra.loading")

Call = Tuple[tuple, dict]  # a block's arguments after the hidden state: (args, kwargs)


class _Recorder(nn.Module):
    """Stands in for a block: records its arguments and passes the hidden state through.

    Attribute look-ups the model's loop makes on its blocks (``use_sliding``)
    go to the block stood in for, which is not a child (its weights stay
    out of the tree and unread).
    """

    def __init__(self, block: nn.Module):
        super().__init__()
        object.__setattr__(self, "_block", block)
        object.__setattr__(self, "inputs", [])
        object.__setattr__(self, "calls", [])

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(object.__getattribute__(self, "_block"), name)

    def __call__(self, x, *args, **kwargs):
        self.inputs.append(x)
        self.calls.append((args, kwargs))
        return x


class _Replay(_Recorder):
    """Stands in for the last block: returns its recorded outputs, batch after batch."""

    def __init__(self, block: nn.Module, outputs: List[mx.array]):
        super().__init__(block)
        object.__setattr__(self, "outputs", iter(outputs))

    def __call__(self, x, *args, **kwargs):
        return next(self.outputs)


class _BlockRunner(nn.Module):
    """One block as a "model" for ``gptq_quantize``: batch i runs with batch i's arguments.

    Its outputs (float: the layers are not quantized yet while the Hessians
    are collected) are kept as the next block's inputs.
    """

    def __init__(self, block: nn.Module, calls: List[Call]):
        super().__init__()
        self.block = block
        object.__setattr__(self, "calls", calls)
        object.__setattr__(self, "outputs", [])

    def __call__(self, x):
        args, kwargs = self.calls[len(self.outputs)]
        y = self.block(x, *args, **kwargs)
        mx.eval(y)
        self.outputs.append(y)
        return y


def block_list(model: nn.Module) -> Optional[List[nn.Module]]:
    """The list of transformer blocks the model runs (``model.layers``), or None.

    The list itself, which the model's loop reads: ``model.layers`` may return a
    copy (models with pipeline parallelism slice their list), so the list held in
    the module tree with the same blocks is looked up.
    """
    layers = getattr(model, "layers", None)
    if not (isinstance(layers, list) and layers and all(isinstance(b, nn.Module) for b in layers)):
        return None
    for _, module in model.named_modules():
        for value in module.values():
            if (isinstance(value, list) and len(value) == len(layers)
                    and all(a is b for a, b in zip(value, layers))):
                return value
    return None


def _module_path(model: nn.Module, module: nn.Module) -> str:
    return next(path for path, m in model.named_modules() if m is module)


def _fallback_outside(model: nn.Module, blocks: List[nn.Module], bits: int,
                      group_size: int) -> Dict[str, Any]:
    """Quantize, now, what ``gptq`` would give the fallback settings outside the blocks.

    That is every quantizable layer outside the blocks that is not a GPTQ layer (the
    embedding): its float output is no longer needed once the first block's inputs are
    recorded, and quantizing it at once frees its float weights for the rest of the run.
    """
    from mlx_lm.models.switch_layers import SwitchLinear

    inside = {id(m) for b in blocks for _, m in b.named_modules()}
    leaves = tree_flatten(model.leaf_modules(), is_leaf=nn.Module.is_module)
    outside = [(path, m) for path, m in leaves if id(m) not in inside and hasattr(m, "to_quantized")
               and type(m) not in (nn.Linear, SwitchLinear)]
    settings = {"bits": bits, "group_size": group_size}
    quantized = [(path, m.to_quantized(**settings)) for path, m in outside]
    model.update_modules(tree_unflatten(quantized))
    mx.eval([m.parameters() for _, m in quantized])
    return {path: settings for path, _ in quantized}


def _float_dtype(block: nn.Module) -> mx.Dtype:
    """The dtype of the block's floating-point parameters (float32 when it has none)."""
    for _, v in tree_flatten(block.parameters()):
        if mx.issubdtype(v.dtype, mx.floating):
            return v.dtype
    return mx.float32


def gptq_by_block(model: nn.Module, data: mx.array, gptq: Callable, bits: int, group_size: int,
                  fallback_bits: int, fallback_group_size: int, batch_size: int,
                  progress: Callable = lambda it, total, desc: it,
                  float32_hessians: bool = True) -> Dict[str, Any]:
    """Quantize ``model`` in place as ``gptq(model, data, ...)`` would, one block at a time.

    Args:
        model: A float model with a ``layers`` list (see :func:`block_list`).
        data: Calibration token rows ``[samples, length]``.
        gptq: ``mlx_lm.quant.gptq.gptq_quantize``.
        bits, group_size, fallback_bits, fallback_group_size, batch_size: as for ``gptq``.
        progress: ``progress(iterable, total, desc)`` wrapping the loop over blocks.
        float32_hessians: Run each block and its inputs in float32 while its
            Hessians are collected (no change for a float32 model); False: in the
            model's dtype, as ``gptq`` does.

    Returns:
        The ``quantization`` config entry, as ``gptq`` returns it.
    """
    blocks = block_list(model)
    originals = list(blocks)
    batches = [data[s: s + batch_size] for s in range(0, len(data), batch_size)]
    recorders = [_Recorder(b) for b in originals]
    blocks[:] = recorders
    try:
        for batch in batches:
            model(batch)  # lazy: only what the recorders saw is evaluated
            arrays = [v for r in recorders for _, v in tree_flatten(r.calls[-1])
                      if isinstance(v, mx.array)]  # masks; "causal" and None are not arrays
            mx.eval(recorders[0].inputs[-1], arrays)
    finally:
        blocks[:] = originals
    hidden = recorders[0].inputs
    entry: Dict[str, Any] = {"bits": bits, "group_size": group_size}
    entry.update(_fallback_outside(model, originals, fallback_bits, fallback_group_size))
    dtype = _float_dtype(originals[0])
    work = mx.float32 if float32_hessians else dtype
    for i in progress(range(len(originals)), len(originals), "GPTQ"):
        # The Hessians are sums of x^T x in the inputs' dtype: in float32 by default (mlx-lm's
        # own whole-model pass sums them in the model's dtype, which bfloat16 ruins).
        originals[i].set_dtype(work)
        runner = _BlockRunner(originals[i], recorders[i].calls)
        _, block_entry = gptq(runner, mx.concatenate(hidden, axis=0).astype(work), bits,
                              group_size, fallback_bits, fallback_group_size,
                              batch_size=batch_size)
        originals[i].set_dtype(dtype)  # scales and biases, norms: as mlx-lm leaves them
        prefix = _module_path(model, originals[i])
        entry.update({f"{prefix}.{k[len('block.'):]}": v for k, v in block_entry.items()
                      if k.startswith("block.")})
        hidden = runner.outputs
        del runner
        mx.clear_cache()
    # What lies outside the blocks (lm_head, the embedding), with the blocks stood in for:
    # the first returns the last block's float outputs, the others pass them on.
    stand_ins = [_Replay(originals[0], hidden)] + [_Recorder(b) for b in originals[1:]]
    blocks[:] = stand_ins
    try:
        _, outer_entry = gptq(model, data, bits, group_size, fallback_bits, fallback_group_size,
                              batch_size=batch_size)
    finally:
        blocks[:] = originals
    entry.update({k: v for k, v in outer_entry.items() if k not in ("bits", "group_size")})
    return entry
