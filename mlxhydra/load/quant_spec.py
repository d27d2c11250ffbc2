"""Quantization settings: validation, per-layer rules and the per-layer decision.

The ``quant`` config node has ``bits``, ``group_size``, ``mode``, ``recipe``,
``rules`` and the method settings (``method``, ``calibration``, one node per
method: :mod:`.method_settings`). :func:`parse_quant` checks all of it before any weight is read
and returns a :class:`QuantSpec`, or ``None`` when nothing is to be quantized.
"""

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Union

from ..config.declared import unknown_key_problems
from ..errors import ConfigError
from .method_settings import AFFINE_BITS, AFFINE_GROUP_SIZES, parse_method

# mlx-lm's defaults per mode (mlx_lm.utils.quantize_model): (bits, group_size).
MODE_DEFAULTS = {"affine": (4, 64), "mxfp4": (4, 32), "nvfp4": (4, 16), "mxfp8": (8, 32)}
RECIPES = ("mixed_2_6", "mixed_3_4", "mixed_3_6", "mixed_4_6")
RULE_KEYS = {"pattern", "bits", "group_size", "mode", "skip"}

Params = Dict[str, Any]


@dataclass
class Rule:
    pattern: "re.Pattern[str]"
    params: Optional[Params]  # None: keep the layer in float

    def matches(self, path: str) -> bool:
        return self.pattern.search(path) is not None


@dataclass
class QuantSpec:
    """Validated runtime quantization settings.

    ``default`` is None when only rules quantize (no bits, mode or recipe set).
    """

    default: Optional[Params]
    recipe: Optional[str] = None
    rules: List[Rule] = field(default_factory=list)
    method: str = "rtn"  # or a calibrated method of mlx_lm.quant: awq, gptq, dwq, dynamic
    settings: Dict[str, Any] = field(default_factory=dict)  # quant.<method>, defaults filled in
    calibration: Dict[str, Any] = field(default_factory=dict)  # quant.calibration (not for rtn)

    def describe(self) -> dict:
        described = {
            "method": self.method,
            "default": self.default,
            "recipe": self.recipe,
            "rules": [
                {"pattern": r.pattern.pattern, **(r.params or {"skip": True})}
                for r in self.rules
            ],
        }
        if self.method != "rtn":
            described["method_settings"] = dict(self.settings)
        return described


def parse_params(
    bits: Any, group_size: Any, mode: Any, where: str, problems: List[str]
) -> Optional[Params]:
    """Fill in a mode's defaults and check one (bits, group_size, mode) triple.

    Appends a message to ``problems`` for each invalid value.
    """
    if mode not in MODE_DEFAULTS:
        problems.append(f"{where}.mode={mode!r}: expected one of {', '.join(MODE_DEFAULTS)}")
        return None
    default_bits, default_group = MODE_DEFAULTS[mode]
    bits = default_bits if bits is None else bits
    group_size = default_group if group_size is None else group_size
    ok = True
    if mode == "affine":
        if type(bits) is not int or bits not in AFFINE_BITS:
            problems.append(
                f"{where}.bits={bits!r}: expected one of {', '.join(map(str, AFFINE_BITS))}"
            )
            ok = False
        if type(group_size) is not int or group_size not in AFFINE_GROUP_SIZES:
            problems.append(
                f"{where}.group_size={group_size!r}: expected one of "
                f"{', '.join(map(str, AFFINE_GROUP_SIZES))}"
            )
            ok = False
    else:
        if type(bits) is not int or bits != default_bits:
            problems.append(f"{where}.bits={bits!r}: mode {mode} takes {default_bits} bits only")
            ok = False
        if type(group_size) is not int or group_size != default_group:
            problems.append(
                f"{where}.group_size={group_size!r}: mode {mode} takes group size "
                f"{default_group} only"
            )
            ok = False
    return {"group_size": group_size, "bits": bits, "mode": mode} if ok else None


def _parse_rule(
    index: int, rule: Any, problems: List[str], inherit: Mapping[str, Any]
) -> Optional[Rule]:
    """Validate one rule; bits/group_size it leaves out come from ``inherit``
    (the top-level quant settings) when the modes agree, else the mode's defaults."""
    where = f"quant.rules[{index}]"
    if not isinstance(rule, Mapping):
        problems.append(f"{where}: expected a mapping like {{pattern: REGEX, bits: 4}}, got {rule!r}")
        return None
    unknown = sorted(set(rule) - RULE_KEYS)
    if unknown:
        problems.append(f"{where}: unknown keys {unknown}; expected {sorted(RULE_KEYS)}")
        return None
    pattern = rule.get("pattern")
    if not isinstance(pattern, str) or not pattern:
        problems.append(f"{where}.pattern: expected a regular expression string, got {pattern!r}")
        return None
    try:
        compiled = re.compile(pattern)
    except re.error as e:
        problems.append(f"{where}.pattern={pattern!r} does not compile: {e}")
        return None
    skip = rule.get("skip", False)
    if not isinstance(skip, bool):
        problems.append(f"{where}.skip={skip!r}: expected true or false")
        return None
    if skip:
        if any(k in rule for k in ("bits", "group_size", "mode")):
            problems.append(f"{where}: skip: true takes no bits, group_size or mode")
            return None
        return Rule(compiled, None)
    mode = rule.get("mode", inherit["mode"])
    same_mode = mode == inherit["mode"]
    params = parse_params(
        rule.get("bits", inherit["bits"] if same_mode else None),
        rule.get("group_size", inherit["group_size"] if same_mode else None),
        mode, where, problems,
    )
    return Rule(compiled, params) if params is not None else None


def parse_quant(quant: Optional[Mapping[str, Any]]) -> Optional[QuantSpec]:
    """Validate the ``quant`` node.

    Args:
        quant: A plain mapping with bits, group_size, mode, recipe, rules
            (missing keys take the ``quant=none`` values), or None.

    Returns:
        A QuantSpec, or None when the settings ask for no quantization.

    Raises:
        ConfigError: listing every invalid value.
    """
    if not quant:
        return None
    # compute (how quantized layers multiply) is checked by quantized_compute.compute_problems;
    # the valid keys are those the shipped conf/quant/*.yaml declare (config/declared.py),
    # the methods' settings included (conf/quant/none.yaml).
    problems: List[str] = unknown_key_problems("quant", quant)
    bits, group_size = quant.get("bits"), quant.get("group_size")
    mode, recipe = quant.get("mode", "affine"), quant.get("recipe")
    rules_in = quant.get("rules") or []
    if not isinstance(rules_in, Sequence) or isinstance(rules_in, (str, bytes)):  # ListConfig too
        problems.append(f"quant.rules: expected a list of rules, got {rules_in!r}")
        rules_in = []
    inherit = {"bits": bits, "group_size": group_size, "mode": mode}
    parsed = [_parse_rule(i, rule, problems, inherit) for i, rule in enumerate(rules_in)]
    rules = [r for r in parsed if r is not None]
    method, settings, calibration = parse_method(quant, bits, group_size, mode, recipe, rules_in,
                                                 problems)

    default = None
    if recipe is not None:
        if recipe not in RECIPES:
            problems.append(f"quant.recipe={recipe!r}: expected one of {', '.join(RECIPES)}")
        if mode != "affine":
            problems.append(f"quant.recipe={recipe}: recipes are affine only, not mode {mode}")
        if bits is not None:
            problems.append(f"quant.recipe={recipe}: the recipe sets the bits; leave quant.bits null")
        default = parse_params(None, group_size, "affine", "quant", problems)
    elif bits is not None or mode != "affine" or method != "rtn":
        # A calibrated method asks for quantization by itself (mlx-lm's default 4 bits).
        default = parse_params(bits, group_size, mode, "quant", problems)
    elif group_size is not None and not any(r.params for r in rules):
        # A group size alone is more likely a mistake than a request for 4 bits.
        parse_params(bits, group_size, mode, "quant", problems)
        problems.append(
            f"quant.group_size={group_size!r} without quant.bits: set quant.bits, quant.mode "
            "or a quant preset to quantize (quant=none keeps float weights)"
        )
    if problems:
        raise ConfigError(problems)
    if default is None and not any(r.params for r in rules):
        return None
    return QuantSpec(default=default, recipe=recipe, rules=rules, method=method,
                     settings=settings, calibration=calibration)


Decider = Callable[[str, Any], Union[bool, Params]]


def make_decider(spec: QuantSpec, model: Any) -> Callable[[str, Any], Optional[Params]]:
    """Build ``decide(path, module) -> params or None`` for one model.

    Order: the first matching rule; else the recipe's predicate, or the
    architecture's own ``quant_predicate`` applied to the default settings.
    """
    if spec.recipe is not None:
        from mlx_lm.convert import mixed_quant_predicate_builder

        try:
            predicate: Optional[Decider] = mixed_quant_predicate_builder(
                spec.recipe, model, spec.default["group_size"]
            )
        except (ValueError, AttributeError) as e:  # no down_proj layers, or no model.layers
            raise ConfigError(f"quant.recipe={spec.recipe}: {e}") from e
    else:
        predicate = getattr(model, "quant_predicate", None)

    def decide(path: str, module: Any) -> Optional[Params]:
        for rule in spec.rules:
            if rule.matches(path):
                return dict(rule.params) if rule.params else None
        if spec.default is None:
            return None
        params = dict(spec.default)
        weight = getattr(module, "weight", None)
        if weight is not None and weight.shape[-1] % params["group_size"] != 0:
            # mlx-lm's quantize_model checks the default group size before asking
            # the predicate; the caller counts this layer as indivisible.
            return params
        if predicate is not None:
            verdict = predicate(path, module)
            if not verdict:
                return None
            if isinstance(verdict, Mapping):
                # As nn.quantize does: the predicate's dict replaces the defaults
                # (a missing mode means affine, even when the default is mxfp4).
                return dict(verdict)
        return params

    return decide


def same_settings(spec: QuantSpec, saved: Mapping[str, Any]) -> bool:
    """True when a runtime request matches a pre-quantized model's settings."""
    if spec.default is None or spec.recipe is not None or spec.rules or spec.method != "rtn":
        return False
    keys = ("bits", "group_size", "mode")
    saved_params = {k: saved.get(k, "affine" if k == "mode" else None) for k in keys}
    return {k: spec.default[k] for k in keys} == saved_params
