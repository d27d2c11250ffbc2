"""Tasks that run on the loaded model (``task=<name>``)."""

from pathlib import Path
from typing import Any, Callable, Dict

from omegaconf import DictConfig

from .errors import ConfigError

Metrics = Dict[str, Any]


def load_task(cfg: DictConfig, model: Any, config: dict, model_dir: Path, run_dir: Path) -> Metrics:
    """Load and record only."""
    return {}


TASKS: Dict[str, Callable[..., Metrics]] = {"load": load_task}


def run_task(cfg: DictConfig, model: Any, config: dict, model_dir: Path, run_dir: Path) -> Metrics:
    """Run ``cfg.task.name`` on the loaded model and return its metrics."""
    name = cfg.task.get("name")
    if name not in TASKS:
        raise ConfigError(f"task.name={name!r}: expected one of {', '.join(sorted(TASKS))}")
    return TASKS[name](cfg, model, config, model_dir, run_dir)
