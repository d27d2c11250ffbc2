"""The validate stage: every setting checked before any weight is read, all problems in one error.

:func:`validate` reads the composed config into plain Python and checks the
seed, the ``load``, ``quant``, ``task`` and ``sweep`` nodes (each task checks
its own settings) and that a model directory was chosen; once they are sound, a
task checks them against the model (its config and tokenizer: prompts that
cannot fit its context, a draft model of another vocabulary). It raises one
:class:`~mlxhydra.errors.ConfigError` listing every problem, so a user fixes
them in one go instead of one per run, and no weight is fingerprinted or read
for a config that cannot run.
"""

import math
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional

from omegaconf import DictConfig

from ..config.composition import to_plain
from ..config.declared import unknown_key_problems
from ..config.loggers import logger_problems
from ..config.model_source import ERROR_KEY
from ..distributed import ranks
from ..errors import ConfigError
from ..load.adapters import save_problems
from ..load.method_settings import model_problems
from ..load.quant_spec import QuantSpec, parse_quant
from ..load.quantized_compute import compute_problems
from ..load.settings import LoadSettings, load_problems
from ..tasks import TASKS, task_problems, task_model_problems, task_module

SEED_RANGE = (0, 2**64 - 1)  # what mlx.core.random.seed accepts


@dataclass(frozen=True)
class Settings:
    """The checked settings of one job, as plain Python."""

    model_dir: str
    seed: int
    load: Dict[str, Any]  # the load node as composed (tasks read it)
    loading: LoadSettings  # the load and quant nodes, checked and frozen
    task: Dict[str, Any]
    sweep: Dict[str, Any]

    @property
    def quant(self) -> Optional[QuantSpec]:
        """The parsed quant node (None: no runtime quantization)."""
        return self.loading.quant


def _number(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


def _mapping(key: str, value: Any, optional: bool = False) -> List[str]:
    """A problem when a group's node is not a mapping (``task=null``, ``load=[1]``...)."""
    if isinstance(value, dict) or (optional and value is None):
        return []
    return [f"{key}={value!r}: expected the {key} settings (a mapping)"]


def seed_problems(seed: Any) -> List[str]:
    if type(seed) is not int or not SEED_RANGE[0] <= seed <= SEED_RANGE[1]:
        return [f"seed={seed!r}: expected an integer from 0 to 2**64-1"]
    return []


def sweep_problems(sweep: Dict[str, Any]) -> List[str]:
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

    model_error = plain(ERROR_KEY)
    model_dir = plain("model_dir")
    job_error = plain("job_error")
    if job_error:  # a sweep's job that could not be composed (sweeps/sweeper.py)
        problems.append(str(job_error))
    if model_error:  # a sweep's job whose model directory could not be read (model_source)
        problems.append(str(model_error))
    else:
        if not isinstance(model_dir, str) or not model_dir:
            problems.append(
                f"model_dir={model_dir!r}: expected a model directory (choose one with model=PATH)")
        if not isinstance(cfg.get("model"), DictConfig):
            problems.append("model: expected the model config (model=PATH or a preset), found none")
    seed = plain("seed")
    problems += seed_problems(seed)
    load = plain("load", {})
    problems += _mapping("load", load) or unknown_key_problems("load", load) + load_problems(load)
    spec = None
    quant = plain("quant")
    compute = quant.get("compute") if isinstance(quant, dict) else None
    problems += compute_problems(compute)
    try:
        problems += _mapping("quant", quant, optional=True)
        spec = parse_quant(quant if isinstance(quant, dict) else None)
    except ConfigError as e:
        problems.extend(e.problems)
    if spec is not None and isinstance(cfg.get("model"), DictConfig):
        problems += model_problems(spec.method, plain("model", {}),
                                   model_dir if isinstance(model_dir, str) else None)
    task = plain("task", {})
    trusted = isinstance(load, dict) and load.get("trust_remote_code") is True
    problems += _mapping("task", task) or task_problems(task, trusted)
    if isinstance(task, dict) and task.get("name") in TASKS:
        problems += unknown_key_problems("task", task, task["name"])
    if isinstance(load, dict) and isinstance(task, dict):
        problems += save_problems(load, task)
    sweep = plain("sweep", {})
    problems += _mapping("sweep", sweep) or sweep_problems(sweep)
    problems += logger_problems(plain("logger", {}))
    if isinstance(load, dict) and isinstance(task, dict):  # several ranks (mlx.launch): what runs sharded
        problems += world_problems(load, task, spec.method if spec is not None else "rtn")
    if not problems:  # sound settings: the task's against this model (its config, its tokenizer)
        problems += task_model_problems(task, plain("model", {}), model_dir, load)
    if problems:
        raise ConfigError(problems)
    return Settings(model_dir=model_dir, seed=seed, load=load,
                    loading=LoadSettings.checked(load, spec, compute), task=task, sweep=sweep)


def world_problems(load: Mapping[str, Any], task: Mapping[str, Any], method: str = "rtn") -> List[str]:
    """Settings that cannot run across the ranks (validate stage; none in one process).

    ``method`` is ``quant.method``: the calibrated methods need the whole model in one process.
    """
    w = ranks.world()
    if not w.distributed:
        return []
    problems = []
    if load.get("shard", "auto") == "none":
        problems.append(f"load.shard=none: {w.size} ranks were launched and each would load the "
                        "whole model; expected auto, tensor or pipeline (or run one process)")
    if load.get("adapter_path") is not None:
        problems.append(f"load.adapter_path={load['adapter_path']}: adapters are not applied to a "
                        f"model sharded across {w.size} ranks (mlx-lm's sharded_load has none); "
                        "fuse them first (load.fuse=true task=save) and load the fused model")
    if method != "rtn":
        problems.append(f"quant.method={method}: calibrated quantization runs in one process; "
                        "quantize there (task=save) and load the saved directory across the ranks")
    name = task.get("name")
    if name in TASKS and not getattr(task_module(name), "RUNS_SHARDED", False):
        sharded = sorted(n for n in TASKS if getattr(task_module(n), "RUNS_SHARDED", False))
        problems.append(f"task.name={name}: does not run on a model sharded across ranks "
                        f"(expected one of {', '.join(sharded)})")
    return problems
