"""The calibrated methods of ``mlx_lm.quant`` applied to a loaded float model.

Each method calls mlx-lm's own implementation with the settings and seed
order of mlx-lm's command-line tool (``mlx_lm.awq``, ``mlx_lm.gptq``,
``mlx_lm.dwq``, ``mlx_lm.dynamic_quant``), so the same model, text and seed
give the same quantized model. Differences, each for memory:

- GPTQ runs one transformer block at a time (:mod:`.blockwise`) where mlx-lm
  runs the whole float model; the Hessians, and so the weights, are the same.
- AWQ and GPTQ read the float weights lazily, so only the block being
  quantized is in memory as float (mlx-lm's tools load lazily too).
- dynamic with ``quant.dynamic.sensitivities`` skips the sensitivity pass and
  quantizes layer by layer.
"""

import copy
import json
import logging
import math
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten

from ..errors import ConfigError
from ..progress import progress
from .calibration import (
    CalibrationText,
    calibration_file,
    calibration_source,
    choose_rows,
    read_calibration,
    rows_sha256,
    split_rows,
)
from .method_settings import high_settings, read_sensitivities
from .quant_spec import QuantSpec
from .tokenizer import load_tokenizer

log = logging.getLogger("mlxhydra.loading")

SENSITIVITIES = "sensitivities.json"


@dataclass
class MethodRun:
    """One calibrated method's run: its data, the rows it chose, where side files go."""

    spec: QuantSpec
    text: CalibrationText
    output_dir: Optional[Path] = None  # sensitivities.json (dynamic); None: not written
    rows: Any = None  # chosen by choose_data()
    record: Dict[str, Any] = field(default_factory=dict)  # run.json's quantization.calibration


def prepare_method(spec: QuantSpec, model_dir: Path, model_config: Mapping[str, Any],
                   task: Optional[Mapping[str, Any]] = None,
                   output_dir: Optional[Path] = None) -> MethodRun:
    """Find and tokenize the calibration text of ``spec.method`` (before the model exists).

    Raises:
        TaskError: no tokenizer, or a missing or empty data file.
    """

    path = calibration_file(spec.calibration.get("data"), task, Path(model_dir))
    tokenizer = load_tokenizer(Path(model_dir), dict(model_config))
    key = calibration_source(spec.calibration.get("data"), task)[1]
    return MethodRun(spec, read_calibration(path, tokenizer, key), output_dir)


def seed_before_instantiation(run: MethodRun) -> None:
    """Seed as mlx-lm's tool does before it builds the model.

    ``mlx_lm.awq``/``gptq`` seed mlx, then load the model (its initialisation
    draws from the generator), then draw the rows; ``mlx_lm.dwq`` seeds numpy
    and mlx first. Calling this, then building the model, then
    :func:`choose_data` reproduces their rows.
    """
    seed = run.spec.calibration["seed"]
    if run.spec.method in ("awq", "gptq", "dwq"):
        mx.random.seed(seed)
    if run.spec.method == "dwq":
        np.random.seed(seed)


def choose_data(run: MethodRun) -> None:
    """Choose the calibration rows (right after the model is built, see above)."""
    spec, cal = run.spec, run.spec.calibration
    rows = run.text.rows(cal["sequence_length"])
    record = {**run.text.describe(), "sequence_length": cal["sequence_length"], "seed": cal["seed"]}
    if spec.method == "dwq":
        s = spec.settings
        wanted = s["steps"] * s["batch_size"] if s["steps"] else cal["num_samples"]
        train, valid = split_rows(rows, wanted if wanted > 0 else len(rows), s["num_valid_samples"])
        for name, part in (("training", train), ("validation", valid)):
            if len(part) < s["batch_size"]:
                raise ConfigError(
                    f"quant.method=dwq: {len(part)} {name} rows of {cal['sequence_length']} tokens "
                    f"in {run.text.path} ({len(rows)} rows in all), fewer than "
                    f"quant.dwq.batch_size={s['batch_size']} (use a longer file, shorter "
                    "quant.calibration.sequence_length or fewer quant.dwq.num_valid_samples)")
        run.rows = (train, valid)
        record.update(samples=len(train), validation_samples=len(valid),
                      steps=len(train) // s["batch_size"],
                      rows_sha256=rows_sha256([t for t, _ in train] + [t for t, _ in valid]))
    else:
        if spec.method == "dynamic":  # mlx_lm.dynamic_quant seeds after loading the model
            mx.random.seed(cal["seed"])
        run.rows = choose_rows(rows, cal["num_samples"])
        record.update(samples=int(run.rows.shape[0]), rows_sha256=rows_sha256(run.rows))
    run.record = record
    log.info("quant.method=%s: calibrating on %d rows of %d tokens from %s",
             spec.method, record["samples"], cal["sequence_length"], run.text.path)


def _awq(model: nn.Module, config: dict, run: MethodRun) -> nn.Module:
    from mlx_lm.quant.awq import AWQ_MODEL_CONFIGS, awq_quantize, update_config

    s, d = run.spec.settings, run.spec.default
    awq_quantize(model, run.rows, AWQ_MODEL_CONFIGS[config["model_type"]], group_size=d["group_size"],
                 bits=d["bits"], embed_group_size=s["embed_group_size"], embed_bits=s["embed_bits"],
                 n_grid=s["n_grid"])
    update_config(model, config)
    return model


def _gptq(model: nn.Module, config: dict, run: MethodRun) -> nn.Module:
    from mlx_lm.quant.gptq import gptq_quantize

    from .blockwise import block_list, gptq_by_block

    s, d = run.spec.settings, run.spec.default
    args = (d["bits"], d["group_size"], s["fallback_bits"], s["fallback_group_size"])
    if block_list(model) is None:
        log.info("quant.method=gptq: %s has no list of blocks (model.layers): the whole model "
                 "is calibrated at once, as mlx-lm does", type(model).__module__)
        model, config["quantization"] = gptq_quantize(model, run.rows, *args, batch_size=s["batch_size"])
    else:
        config["quantization"] = gptq_by_block(model, run.rows, gptq_quantize, *args,
                                               batch_size=s["batch_size"], progress=partial(progress, unit="blocks"),
                                               float32_hessians=s["hessian_dtype"] == "float32")
    return model


def _dwq(model: nn.Module, config: dict, run: MethodRun) -> nn.Module:
    import mlx.optimizers as optimizers
    from mlx_lm.quant.dwq import dwq_quantize
    from mlx_lm.utils import quantize_model

    s, d = run.spec.settings, run.spec.default
    train, valid = run.rows
    student = copy.deepcopy(model)
    student, quantized = quantize_model(student, config, group_size=d["group_size"], bits=d["bits"])
    config.update(quantized)
    opt = optimizers.Adam(learning_rate=s["learning_rate"], bias_correction=True)
    dwq_quantize(student, lambda batch, idx, split: model(batch), opt, train, valid,
                 batch_size=s["batch_size"], max_seq_length=run.spec.calibration["sequence_length"],
                 seed=run.spec.calibration["seed"], gradient_checkpoint=s["grad_checkpoint"],
                 temperature=s["temperature"])
    student.eval()
    return student


def _over_threshold_high(sensitivities: Dict[str, float], threshold: float, high: Tuple[int, int]):
    """The quantization predicate of dynamic quantization: the layers more sensitive than
    ``threshold`` at the high (bits, group size), the others at the model-wide low ones."""

    def predicate(path, module):
        if not hasattr(module, "to_quantized"):
            return False
        return {"bits": high[0], "group_size": high[1]} if sensitivities[path] > threshold else True

    return predicate


def _bits_per_weight(model: nn.Module, sensitivities: Dict[str, float], threshold: float,
                     low: Tuple[int, int], high: Tuple[int, int]) -> float:
    """Bits per weight with the layers over ``threshold`` at the high settings (lazily, no weight read)."""
    from mlx_lm.utils import compute_bits_per_weight

    q = copy.deepcopy(model)
    nn.quantize(q, group_size=low[1], bits=low[0],
                class_predicate=_over_threshold_high(sensitivities, threshold, high))
    return compute_bits_per_weight(q)


def _sensitivities(model: nn.Module, run: MethodRun, low, high) -> Dict[str, float]:
    from mlx_lm.quant.dynamic_quant import estimate_sensitivities

    s = run.spec.settings
    if s["sensitivities"] is not None:
        values = read_sensitivities(s["sensitivities"])  # checked in the validate stage
        run.record["sensitivities"] = str(Path(s["sensitivities"]).expanduser().absolute())
    else:
        values = dict(estimate_sensitivities(
            model, run.rows, low[0], low[1], high[0], high[1], batch_size=s["batch_size"],
            gradient_accum_dtype=getattr(mx, s["accumulation_dtype"]),
            gradient_checkpoint=s["grad_checkpoint"]))
        if run.output_dir is not None:
            out = Path(run.output_dir) / SENSITIVITIES
            out.write_text(json.dumps(sorted(values.items()), indent=1))
            run.record["sensitivities"] = str(out)
    paths = [p for p, m in model.named_modules() if hasattr(m, "to_quantized")]
    missing = [p for p in paths if p not in values]
    if missing:
        raise ConfigError(f"quant.dynamic.sensitivities: no value for {len(missing)} layer(s) of "
                          f"this model, e.g. {missing[0]} (computed for another model?)")
    return values


def _dynamic(model: nn.Module, config: dict, run: MethodRun) -> nn.Module:
    from mlx_lm.quant.dynamic_quant import estimate_threshold
    from mlx_lm.utils import quantize_model


    s, d = run.spec.settings, run.spec.default
    low = (d["bits"], d["group_size"])
    high = high_settings(d["bits"], d["group_size"], s)
    sensitivities = _sensitivities(model, run, low, high)
    target = s["target_bpw"]
    if target is None:  # halfway between every layer low and every layer high
        target = (_bits_per_weight(model, sensitivities, math.inf, low, high)
                  + _bits_per_weight(model, sensitivities, -math.inf, low, high)) / 2
    threshold = estimate_threshold(model, sensitivities, target, low[0], low[1], high[0], high[1])
    predicate = _over_threshold_high(sensitivities, threshold, high)
    model, quantized = quantize_model(model, config, low[1], low[0], quant_predicate=predicate)
    config.update(quantized)
    run.record.update(target_bpw=target, threshold=threshold, high_bits=high[0],
                      high_group_size=high[1],
                      high_layers=sum(1 for v in sensitivities.values() if v > threshold))
    return model


METHODS = {"awq": _awq, "gptq": _gptq, "dwq": _dwq, "dynamic": _dynamic}


def quantize_with_method(model: nn.Module, config: dict, run: MethodRun) -> Tuple[nn.Module, Dict[str, Any]]:
    """Apply ``run.spec.method`` to a float model; ``config`` gets its ``quantization`` entry.

    Returns:
        (model, applied): the quantized model (the same object, or a new one
        for dwq), evaluated one module at a time so that lazily read float
        weights are freed as their layer is done; and run.json's
        ``quantization`` fields for it (the request, each layer's settings,
        the calibration record).
    """
    try:
        model = METHODS[run.spec.method](model, config, run)
        for _, leaf in tree_flatten(model.leaf_modules(), is_leaf=nn.Module.is_module):
            mx.eval(leaf.parameters())
        mx.eval(model.parameters())
    except RuntimeError as e:  # an mlx kernel this back end lacks
        hint = (" (mlx's CPU back end runs mixture-of-experts layers in float32 only: "
                "load.dtype=float32, or a GPU)" if "only supports float32" in str(e) else "")
        raise ConfigError(f"quant.method={run.spec.method} cannot run on this back end "
                          f"({mx.default_device()}): {str(e).splitlines()[0]}{hint}") from e
    layers = {path: {"group_size": m.group_size, "bits": m.bits, "mode": getattr(m, "mode", "affine")}
              for path, m in model.named_modules() if hasattr(m, "bits") and hasattr(m, "group_size")}
    floating = sum(1 for _, m in model.named_modules() if hasattr(m, "to_quantized"))
    return model, {"source": "runtime", **run.spec.describe(), "layers": layers,
                   "quantized": len(layers), "float_by_rule_or_predicate": floating,
                   "float_indivisible": 0, "unmatched_rules": [], "calibration": run.record}

