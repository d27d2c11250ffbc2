"""Whether read weights fit the model: names, shapes and kinds of dtype, every mismatch counted."""

from pathlib import Path
from typing import List, Mapping

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from .weight_files import absent_shards

SHOWN = 5


def _dtype_name(dtype: mx.Dtype) -> str:
    return str(dtype).rsplit(".", 1)[-1]


def _dtype_kind(dtype: mx.Dtype) -> str:
    """``floating`` (complex too), ``bool`` or ``integer``: integer data never fills a float parameter.

    Quantized layers' packed weights are integer parameters, so packed integers still load.
    """
    if mx.issubdtype(dtype, mx.inexact):
        return "floating"
    return "bool" if dtype == mx.bool_ else "integer"


def fit_problems(model: nn.Module, weights: Mapping[str, mx.array], files: List[Path]) -> List[str]:
    """Compare weights with the model's parameters; one line per kind of mismatch.

    Names, shapes and the kind of dtype (floating, integer, bool) must agree.
    """
    expected = dict(tree_flatten(model.parameters()))
    missing = sorted(k for k in expected if k not in weights)
    unexpected = sorted(k for k in weights if k not in expected)
    shapes = sorted(
        f"{k} {tuple(weights[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in weights and weights[k].shape != v.shape
    )
    dtypes = sorted(
        f"{k} {_dtype_name(weights[k].dtype)} vs model {_dtype_name(v.dtype)}"
        for k, v in expected.items()
        if k in weights and weights[k].shape == v.shape  # a wrong shape says enough
        and _dtype_kind(weights[k].dtype) != _dtype_kind(v.dtype)
    )
    problems = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes),
                         ("wrong dtype", dtypes)):
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
