"""Pre-quantized models: the quantization they were saved with, read as mlx-lm reads it.

Covers the ``quantization`` entry (with per-layer entries), the legacy
``quantization_config`` forms and ``hf_quant_config.json``, and calls
mlx-lm's own helpers for each.
"""

import json
from pathlib import Path
from typing import Any, Mapping, Optional, Tuple

import mlx.nn as nn

from ..errors import ConfigError


def find_quantization_config(model_dir: Path, config: dict) -> None:
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
                raise ConfigError(f"{hf_quant_config}: not readable as JSON: {e}") from e


def saved_quantization(config: dict, weights: dict) -> Tuple[Optional[dict], dict]:
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
    from .. import _upstream

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
            q = _upstream.compressed_tensors_quantization(qc)
        except ValueError as e:
            raise ConfigError(f"model.quantization_config: {e}") from e
    elif method == "modelopt":
        settings = qc.get("quantization", qc)
        if settings.get("quant_algo") != "NVFP4":
            raise ConfigError(f"quantization_config: unsupported modelopt quant_algo {settings.get('quant_algo')!r}")
        q = {"group_size": settings.get("group_size", 16), "bits": 4, "mode": "nvfp4"}
    elif method in ("awq", "gptq"):
        try:
            weights, q = _upstream.transform_awq_weights(weights, qc)
        except ValueError as e:
            raise ConfigError(f"model.quantization_config ({method}): {e}") from e
    else:
        return None, weights  # bitnet and float formats: handled by the caller / sanitize
    config["quantization"] = q
    config["quantization_config"] = q
    return q, weights


def quantize_saved_layout(model: nn.Module, quantization: dict, weights: dict) -> None:
    from .._upstream import infer_quant_config, takes_global_scale

    def class_predicate(path, module):
        if path in quantization:
            return quantization[path]
        if not hasattr(module, "to_quantized") or f"{path}.scales" not in weights:
            return False
        params = infer_quant_config(path, module, weights)
        if f"{path}.global_scale" in weights and takes_global_scale(module):
            params["global_scale"] = True
        return params

    nn.quantize(
        model,
        group_size=quantization["group_size"],
        bits=quantization["bits"],
        mode=quantization.get("mode", "affine"),
        class_predicate=class_predicate,
    )


def quantize_activations(model: nn.Module) -> None:
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


def describe_settings(q: Mapping[str, Any]) -> str:
    if "method" in q:
        return str(q["method"])
    return f"bits={q.get('bits')}, group_size={q.get('group_size')}, mode={q.get('mode', 'affine')}"
