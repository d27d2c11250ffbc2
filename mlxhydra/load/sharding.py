"""Sharding a model across the ranks of an MLX distributed group (``load.shard``).

The steps and their order are those of ``mlx_lm.utils.sharded_load``: the
architecture's own ``shard(group)`` (tensor parallelism) is preferred, then
``model.model.pipeline(group)`` (pipeline parallelism).

- tensor: the whole model is loaded lazily (and quantized lazily), then
  ``shard()`` slices every layer and the slices are evaluated layer by layer:
  each rank reads every tensor once and keeps its part.
- pipeline: ``pipeline()`` first, so that each rank reads only the weight
  files that hold its own layers (found with ``model.safetensors.index.json``,
  as sharded_load does) and quantizes only those layers.
"""

import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import mlx.core as mx
from mlx.utils import tree_flatten

from ..errors import ConfigError
from .weight_files import read_header, read_weight_map

# sharded_load's pattern: a checkpoint key of decoder layer N (any prefix).
CHECKPOINT_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")
# A parameter of layer N of model.model, the module pipeline() splits.
PIPELINED_LAYER = re.compile(r"^model\.layers\.(\d+)\.")


def supported_modes(model: Any) -> List[str]:
    """The kinds of sharding mlx-lm implements for this model, in sharded_load's order."""
    modes = []
    if hasattr(model, "shard"):
        modes.append("tensor")
    if hasattr(model, "model") and hasattr(model.model, "pipeline"):
        modes.append("pipeline")
    return modes


@dataclass
class ShardPlan:
    """How this rank holds its part of the model."""

    mode: str  # "tensor" or "pipeline"
    group: Any  # mx.distributed.Group
    layers: Tuple[int, int]  # [start, end) of the decoder layers this rank runs

    def describe(self) -> Dict[str, Any]:
        return {"mode": self.mode, "rank": self.group.rank(), "layers": list(self.layers)}


def plan_sharding(model: Any, requested: Optional[str], group: Any, config: Dict[str, Any]
                  ) -> Optional[ShardPlan]:
    """Choose the sharding and, for pipeline parallelism, split the layers.

    Args:
        model: The instantiated model, before any weight is loaded.
        requested: ``load.shard`` (auto, none, tensor, pipeline; None is auto).
        group: The distributed group, or None in a single process.
        config: The model config (for the attention head counts).

    Returns:
        None when the model is not sharded (one process, or ``none``).

    Raises:
        ConfigError: the architecture lacks the requested sharding, or the
            model cannot be split evenly across the ranks.
    """
    if group is None or group.size() == 1 or requested == "none":
        return None
    size, model_type = group.size(), config.get("model_type")
    modes = supported_modes(model)
    if not modes:
        raise ConfigError(f"load.shard={requested or 'auto'}: mlx-lm's {model_type} supports "
                          "neither tensor nor pipeline parallelism; run it in one process")
    mode = modes[0] if requested in (None, "auto") else requested
    if mode not in modes:
        raise ConfigError(f"load.shard={mode}: mlx-lm's {model_type} has no {mode} parallelism "
                          f"(it supports: {', '.join(modes)})")
    num_layers = len(getattr(getattr(model, "model", None), "layers", None) or model.layers)
    if mode == "tensor":
        for key in ("num_attention_heads", "num_key_value_heads"):
            heads = config.get(key)
            if isinstance(heads, int) and heads % size:
                raise ConfigError(f"load.shard=tensor: {key}={heads} cannot be split evenly "
                                  f"across {size} ranks")
        return ShardPlan(mode, group, (0, num_layers))
    try:
        model.model.pipeline(group)
    except ValueError as e:  # more ranks than layers
        raise ConfigError(f"load.shard=pipeline: {num_layers} layers across {size} ranks: {e}") from e
    return ShardPlan(mode, group, (model.model.start_idx, model.model.end_idx))


def own_checkpoint_key(key: str, layers: Tuple[int, int]) -> bool:
    """Whether a checkpoint tensor belongs to this rank: not a layer's, or one of its layers'.

    Every rank keeps the embeddings, the final norm and the head (as sharded_load).
    """
    m = CHECKPOINT_LAYER.search(key)
    return m is None or layers[0] <= int(m.group(1)) < layers[1]


def files_for_layers(files: List[Path], layers: Tuple[int, int]) -> List[Path]:
    """The weight files that hold this rank's tensors, by the safetensors index.

    Without an index (one file) every file is opened; only the rank's tensors
    are read from it, since MLX loads each tensor when it is first used.
    """
    if not files:
        return files
    weight_map = read_weight_map(files[0].parent)
    if weight_map is None:
        return files
    wanted = {f for k, f in weight_map.items() if own_checkpoint_key(k, layers)}
    return [f for f in files if f.name in wanted]


def drop_other_layers(weights: Dict[str, Any], layers: Tuple[int, int]) -> Dict[str, Any]:
    """The weights without those of layers another pipeline rank runs (never read)."""
    def own(key: str) -> bool:
        m = PIPELINED_LAYER.match(key)
        return m is None or layers[0] <= int(m.group(1)) < layers[1]

    return {k: v for k, v in weights.items() if own(k)}


def bytes_to_read(files: List[Path], layers: Tuple[int, int]) -> int:
    """Data bytes of the checkpoint tensors this rank loads, from the safetensors headers."""
    total = 0
    for f in files:
        for name, info in read_header(f).items():
            if name != "__metadata__" and own_checkpoint_key(name, layers):
                begin, end = info["data_offsets"]
                total += end - begin
    return total


def shard_tensors(model: Any, plan: ShardPlan) -> None:
    """Tensor parallelism: the architecture's ``shard()`` slices the (lazy) layers.

    Raises:
        ConfigError: a layer that cannot be split across the ranks (e.g. a
            quantization group that would straddle two ranks).
    """
    try:
        model.shard(plan.group)
    except ValueError as e:
        raise ConfigError(f"load.shard=tensor: the model cannot be split across "
                          f"{plan.group.size()} ranks: {e}") from e


def evaluate_by_layer(model: Any) -> None:
    """Evaluate the parameters one decoder layer at a time.

    Each sharded layer reads its full tensors and keeps a slice: one layer
    at a time, so a rank never holds more than its part plus one layer.
    """
    groups: Dict[Optional[str], list] = defaultdict(list)
    for key, value in tree_flatten(model.parameters()):
        m = CHECKPOINT_LAYER.search(key)
        groups[m.group(1) if m else None].append(value)
    for arrays in groups.values():
        mx.eval(arrays)


def parameter_bytes(model: Any) -> int:
    """Bytes of the parameters this rank holds."""
    return sum(v.nbytes for _, v in tree_flatten(model.parameters()))


def synchronize(group: Any) -> None:
    """Wait for every rank to finish loading (sharded_load's closing all_sum)."""
    mx.eval(mx.distributed.all_sum(mx.array(1.0), group=group, stream=mx.cpu))


def shard_and_evaluate(model: Any, plan: ShardPlan, files: List[Path], lazy: bool) -> Dict[str, Any]:
    """The end of a sharded load: shard (tensor), evaluate, wait for the other ranks.

    Args:
        model: The model with its (lazy) weights loaded.
        files: The weight files this rank opened.
        lazy: Leave the parameters unevaluated.

    Returns:
        What this rank holds: mode, rank, layers, weight_files,
        weight_bytes_read, parameter_bytes.
    """
    if plan.mode == "tensor":
        shard_tensors(model, plan)
    if not lazy:
        evaluate_by_layer(model)
    synchronize(plan.group)
    return {
        **plan.describe(), "weight_files": [f.name for f in files],
        "weight_bytes_read": bytes_to_read(files, plan.layers),
        "parameter_bytes": parameter_bytes(model),
    }
