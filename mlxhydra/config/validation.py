"""The validate stage: every setting checked before any weight is read, all problems in one error.

:func:`validate` reads the composed config into plain Python and checks the
seed, the ``load``, ``quant``, ``task`` and ``sweep`` nodes (each task checks
its own settings) and that a model directory was chosen. It raises one
:class:`~mlxhydra.errors.ConfigError` listing every problem, so a user fixes
them in one go instead of one per run, and no weight is fingerprinted or read
for a config that cannot run.
"""

import math
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

from omegaconf import DictConfig

from ..errors import ConfigError
from ..load.adapters import save_problems
from ..load.load_settings import check_load
from ..load.method_settings import model_problems
from ..load.quant_spec import QuantSpec, parse_quant
from ..load.quantized_compute import check_compute
from ..runs.ranks import check_world
from ..tasks import check_task
from ..tracking.logger_settings import check_logger
from .composition import to_plain

SEED_RANGE = (0, 2**64 - 1)  # what mlx.core.random.seed accepts


@dataclass(frozen=True)
class Settings:
    """The checked settings of one job, as plain Python."""

    model_dir: str
    seed: int
    load: Dict[str, Any]
    quant: Optional[QuantSpec]  # None: no runtime quantization
    task: Dict[str, Any]
    sweep: Dict[str, Any]
    compute: Optional[str] = None  # quant.compute: native, dequantized, auto (None: native)


def _number(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


def check_seed(seed: Any) -> List[str]:
    if type(seed) is not int or not SEED_RANGE[0] <= seed <= SEED_RANGE[1]:
        return [f"seed={seed!r}: expected an integer from 0 to 2**64-1"]
    return []


def check_sweep(sweep: Dict[str, Any]) -> List[str]:
    """The multirun policy's settings."""
    problems = []
    for key in ("fail_fast", "reuse_weights"):
        if not isinstance(sweep.get(key, False), bool):
            problems.append(f"sweep.{key}={sweep[key]!r}: expected true or false")
    objective = sweep.get("objective")
    if objective is not None and (not isinstance(objective, str) or not objective):
        problems.append(f"sweep.objective={objective!r}: expected a metric name or null")
    budget = sweep.get("max_bits_per_weight")
    if budget is not None and not (_number(budget) and budget > 0):
        problems.append(f"sweep.max_bits_per_weight={budget!r}: expected a positive number or null")
    if "penalty" in sweep and not _number(sweep["penalty"]):
        problems.append(f"sweep.penalty={sweep['penalty']!r}: expected a finite number")
    return problems


def validate(cfg: DictConfig) -> Settings:
    """Check every setting of a composed config before anything is loaded.

    Returns:
        The settings as plain Python, with the quantization parsed.

    Raises:
        ConfigError: listing every problem found (unresolvable values
            included), each naming the key, the value and what was expected.
    """
    problems: List[str] = []

    def plain(key: str, default: Any = None) -> Any:
        try:
            value = to_plain(cfg.get(key))
        except ConfigError as e:  # ${oc.env:UNSET}, ???: named by key
            problems.extend(e.problems)
            return default
        return default if value is None else value

    model_dir = plain("model_dir")
    if not isinstance(model_dir, str) or not model_dir:
        problems.append(f"model_dir={model_dir!r}: expected a model directory (choose one with model=PATH)")
    if not isinstance(cfg.get("model"), DictConfig):
        problems.append("model: expected the model config (model=PATH or a preset), found none")
    seed = plain("seed")
    problems += check_seed(seed)
    load = plain("load", {})
    problems += check_load(load)
    spec = None
    quant = plain("quant")
    compute = quant.get("compute") if isinstance(quant, dict) else None
    problems += check_compute(compute)
    try:
        spec = parse_quant(quant)
    except ConfigError as e:
        problems.extend(e.problems)
    if spec is not None and isinstance(cfg.get("model"), DictConfig):
        problems += model_problems(spec.method, plain("model", {}),
                                   model_dir if isinstance(model_dir, str) else None)
    task = plain("task", {})
    problems += check_task(task)
    problems += save_problems(load, task)
    sweep = plain("sweep", {})
    problems += check_sweep(sweep)
    problems += check_logger(plain("logger", {}))
    # several ranks (mlx.launch): what runs sharded
    problems += check_world(load, task, spec.method if spec is not None else "rtn")
    if problems:
        raise ConfigError(problems)
    return Settings(model_dir=model_dir, seed=seed, load=load, quant=spec, task=task, sweep=sweep,
                    compute=compute)
