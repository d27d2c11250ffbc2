"""Settings of the quantization methods (``quant.method``) and their calibration data.

``rtn`` is round-to-nearest (mlx-lm's ``quantize_model``, applied layer by
layer while the weights are read). ``awq``, ``gptq``, ``dwq`` and ``dynamic``
are mlx-lm's calibrated methods (``mlx_lm.quant``); their settings live in
``quant.<method>`` and their data in ``quant.calibration``, with mlx-lm's
command-line defaults. :func:`parse_method` checks them for
:func:`~mlxhydra.load.quant_spec.parse_quant`, before any weight is read.
"""

import json
import math
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

from ..config.checks import SettingsCheck
from ..config.declared import shipped_defaults
from ..errors import ConfigError
from .tokenizer import has_tokenizer

# The bits and group sizes of mlx-lm's affine quantization (quant_spec checks quant.bits with them).
AFFINE_BITS = (2, 3, 4, 5, 6, 8)
AFFINE_GROUP_SIZES = (32, 64, 128)
METHODS = ("rtn", "awq", "gptq", "dwq", "dynamic")
LEARNED = METHODS[1:]
# (num_samples, sequence_length) each mlx-lm tool uses by default; -1: every row.
CALIBRATION_DEFAULTS = {"awq": (128, 512), "gptq": (-1, 512), "dwq": (2048, 1025),
                        "dynamic": (-1, 512)}
CALIBRATION_KEYS = ("data", "num_samples", "sequence_length", "seed")
# GPTQ's Hessians: summed in float32, or in the model's dtype as mlx_lm.gptq sums them.
HESSIAN_DTYPES = ("float32", "model")
# mlx_lm.quant.gptq packs 2, 4 or 8 bits only (its quantize() asserts it).
GPTQ_BITS = (2, 4, 8)
ACCUMULATION_DTYPES = ("float32", "bfloat16")


def _is_int(v: Any) -> bool:
    return type(v) is int


POSITIVE = math.ulp(0.0)  # the smallest positive float: number(low=POSITIVE) means "> 0"


def read_sensitivities(value: str) -> Dict[str, Any]:
    """``quant.dynamic.sensitivities``: mlx_lm.dynamic_quant's JSON list of [layer, sensitivity] pairs.

    Args:
        value: The setting (a path, already checked to be a regular file).

    Raises:
        ConfigError: naming the file, when it is not such a list.
    """
    path = Path(value).expanduser().absolute()
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError, TypeError, RecursionError) as e:
        raise ConfigError(f"quant.dynamic.sensitivities={path}: not a JSON list of "
                          f"[layer, sensitivity] pairs ({e})") from e


def _checker(node: str, values: Mapping[str, Any], problems: List[str]):
    """A settings check whose problems read ``quant.<node>.<key>=<value>: expected ...``."""

    c = SettingsCheck(values, prefix=f"quant.{node}")
    c.problems = problems
    return c


def _node(quant: Mapping[str, Any], name: str, defaults: Mapping[str, Any],
          problems: List[str]) -> Dict[str, Any]:
    """``quant.<name>`` with defaults filled in; unknown keys are problems."""
    given = quant.get(name)
    if given is None:
        given = {}
    if not isinstance(given, Mapping):
        problems.append(f"quant.{name}={given!r}: expected a mapping of settings")
        return dict(defaults)
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        problems.append(f"quant.{name}: unknown keys {unknown}; expected {sorted(defaults)}")
    return {**defaults, **{k: v for k, v in given.items() if k in defaults}}


def high_settings(bits: int, group_size: int, settings: Mapping[str, Any]) -> Optional[Tuple[int, int]]:
    """(bits, group size) of dynamic's sensitive layers, or None when there is no default.

    ``quant.dynamic.high_bits`` null means the next affine width above
    ``quant.bits`` with ``high_group_size``; 8 bits has none, so then 8 bits
    with half of ``quant.group_size``.
    """
    high, high_group = settings.get("high_bits"), settings.get("high_group_size")
    if high is None:
        high = next((b for b in AFFINE_BITS if b > bits), None)
        if high is None:
            high, high_group = bits, group_size // 2
            if high_group not in AFFINE_GROUP_SIZES:
                return None
    return high, high_group


def _check_method_settings(method: str, s: Dict[str, Any], bits: Any, group_size: Any,
                           problems: List[str]) -> None:

    c = _checker(method, s, problems)
    if method == "awq":
        c.choice("embed_bits", AFFINE_BITS)
        c.choice("embed_group_size", AFFINE_GROUP_SIZES)
        c.integer("n_grid")
    elif method == "gptq":
        c.choice("fallback_bits", AFFINE_BITS)
        c.choice("fallback_group_size", AFFINE_GROUP_SIZES)
        c.integer("batch_size")
        c.choice("hessian_dtype", HESSIAN_DTYPES)
        if _is_int(bits) and bits not in GPTQ_BITS:
            problems.append(f"quant.bits={bits}: mlx-lm's GPTQ packs 2, 4 or 8 bits only")
    elif method == "dwq":
        c.number("learning_rate", POSITIVE, expected="a positive number")
        c.integer("batch_size")
        c.integer("steps", optional=True)
        c.integer("num_valid_samples")
        c.number("temperature", POSITIVE, expected="a positive number")
        c.boolean("grad_checkpoint")
    elif method == "dynamic":
        c.number("target_bpw", POSITIVE, expected="a positive number or null", optional=True)
        c.choice("high_bits", AFFINE_BITS + (None,))
        c.choice("high_group_size", AFFINE_GROUP_SIZES)
        before = len(problems)
        c.data_file("sensitivities")
        if s["sensitivities"] is not None and len(problems) == before:  # the file's contents, too
            try:
                read_sensitivities(s["sensitivities"])
            except ConfigError as e:
                problems.append(str(e))
        c.integer("batch_size")
        c.choice("accumulation_dtype", ACCUMULATION_DTYPES)
        c.boolean("grad_checkpoint")
        bits = 4 if bits is None else bits  # the affine defaults
        group_size = 64 if group_size is None else group_size
        if not (_is_int(bits) and _is_int(group_size)):
            return
        high = high_settings(bits, group_size, s)
        if high is None:
            problems.append(f"quant.method=dynamic with quant.bits={bits}, group_size={group_size}: "
                            "no finer default for its sensitive layers; set quant.dynamic.high_bits")
        elif _is_int(high[0]) and _is_int(high[1]) and high[0] <= bits and high[1] >= group_size:
            problems.append(
                f"quant.dynamic.high_bits={high[0]}, high_group_size={high[1]}: the sensitive "
                f"layers must get more bits than quant.bits={bits}, group_size={group_size}")


def parse_method(quant: Mapping[str, Any], bits: Any, group_size: Any, mode: Any, recipe: Any,
                 rules: List[Any], problems: List[str]) -> Tuple[str, Dict[str, Any], Dict[str, Any]]:
    """Check ``quant.method``, its settings and ``quant.calibration``.

    Args:
        quant: The ``quant`` node (plain Python).
        bits, group_size, mode, recipe, rules: The node's other values, as given.
        problems: Where each invalid value is appended.

    Returns:
        (method, settings of that method, calibration settings with the
        method's defaults filled in); empty dicts for rtn.
    """
    method = quant.get("method", "rtn")
    if method is None:
        method = "rtn"
    if method not in METHODS:
        problems.append(f"quant.method={method!r}: expected one of {', '.join(METHODS)}")
        return "rtn", {}, {}
    # Each method's settings default to mlx-lm's command-line defaults, written once in
    # conf/quant/none.yaml (as are the calibration's).
    shipped = shipped_defaults("quant", "none")
    every = {name: _node(quant, name, shipped[name], problems) for name in LEARNED}
    calibration = _node(quant, "calibration", shipped["calibration"], problems)
    c = _checker("calibration", calibration, problems)
    c.data_file("data")
    c.integer("num_samples", allow_negative_one=True, optional=True)
    c.integer("sequence_length", optional=True)
    seed = calibration.get("seed")
    if not _is_int(seed) or not 0 <= seed < 2**32:
        c.fail("seed", "an integer from 0 to 2**32-1")
    if method == "rtn":
        return method, {}, {}
    if mode != "affine":
        problems.append(f"quant.method={method}: mlx-lm's {method} quantizes in affine mode only, "
                        f"not mode {mode}")
    if recipe is not None or rules:
        what = "quant.recipe" if recipe is not None else "quant.rules"
        problems.append(f"quant.method={method}: {what} applies to quant.method=rtn only "
                        f"({method} chooses each layer's settings itself)")
    settings = every[method]
    _check_method_settings(method, settings, bits, group_size, problems)
    num, length = CALIBRATION_DEFAULTS[method]
    if method == "dwq" and settings.get("steps") is not None and calibration["num_samples"] is not None:
        problems.append("quant.dwq.steps and quant.calibration.num_samples both set: dwq trains "
                        "on steps x batch_size samples; set one of them")
    if calibration["num_samples"] is None:
        calibration["num_samples"] = num
    if calibration["sequence_length"] is None:
        calibration["sequence_length"] = length
    return method, settings, calibration


def model_problems(method: str, model_config: Mapping[str, Any], model_dir: Optional[str]) -> List[str]:
    """What a method needs from the model, checked before any weight is read.

    Args:
        method: ``quant.method``.
        model_config: The composed model config (its ``model_type``).
        model_dir: The model directory (its tokenizer).
    """
    if method not in LEARNED:
        return []
    problems = []
    model_type = model_config.get("model_type")
    if method == "awq":
        from mlx_lm.quant.awq import AWQ_MODEL_CONFIGS

        if model_type not in AWQ_MODEL_CONFIGS:
            problems.append(f"quant.method=awq: mlx-lm's AWQ supports model types "
                            f"{', '.join(sorted(AWQ_MODEL_CONFIGS))}, not {model_type!r}")
    if model_dir:
        if (Path(model_dir) / "config.json").is_file() and not has_tokenizer(Path(model_dir)):
            problems.append(f"quant.method={method}: {model_dir} has no tokenizer (tokenizer.json "
                            "or tokenizer_config.json); the calibration data needs one")
    return problems
