"""Tasks that run on the loaded model (``task=<name>``).

Each task is a function ``(cfg, model, config, model_dir, run_dir) -> metrics``
in its own module; :data:`TASKS` maps ``task.name`` to it. run.py writes the
returned metrics to ``metrics.json`` and into ``run.json``.
"""

from pathlib import Path
from typing import Any, Callable, Dict

from omegaconf import DictConfig

from ..errors import ConfigError
from .accuracy import accuracy_task
from .bench import bench_task
from .generate import generate_task
from .kl import kl_task
from .perplexity import perplexity_task
from .save import save_task

Metrics = Dict[str, Any]


def load_task(cfg: DictConfig, model: Any, config: dict, model_dir: Path, run_dir: Path) -> Metrics:
    """Load and record only; no metrics."""
    return {}


TASKS: Dict[str, Callable[..., Metrics]] = {
    "load": load_task,
    "generate": generate_task,
    "perplexity": perplexity_task,
    "kl": kl_task,
    "accuracy": accuracy_task,
    "bench": bench_task,
    "save": save_task,
}


def run_task(cfg: DictConfig, model: Any, config: dict, model_dir: Path, run_dir: Path) -> Metrics:
    """Run ``cfg.task.name`` on the loaded model.

    Args:
        cfg: The composed config (``cfg.task`` holds the task's settings).
        model: The loaded (and possibly quantized) model.
        config: Its model config, with the ``quantization`` entry when quantized.
        model_dir: The model directory (tokenizer and data files are found there).
        run_dir: The run directory (tasks may write files there).

    Returns:
        The task's metrics (JSON-serializable).

    Raises:
        ConfigError: unknown task name.
        TaskError: bad task settings or data.
    """
    name = cfg.task.get("name")
    if name not in TASKS:
        raise ConfigError(f"task.name={name!r}: expected one of {', '.join(sorted(TASKS))}")
    return TASKS[name](cfg, model, config, Path(model_dir), Path(run_dir))


__all__ = ["TASKS", "run_task", "load_task"]
