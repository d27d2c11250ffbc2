"""Experiments on the loaded model (``task=<name>``), one module each.

Each task module exposes ``settings_problems(task) -> problems`` (its settings, checked
by the validate stage before any weight is read; a module whose task files can run code
also has ``code_problems(task, trust_remote_code)``, checked first) and ``execute(job) ->
metrics`` (with a :class:`~mlxhydra.tasks.common.TaskInput`); :data:`TASKS`
maps ``task.name`` to the module. The job writes the returned metrics to
``metrics.json`` and into ``run.json``.
"""

from importlib import import_module
from pathlib import Path
from types import ModuleType
from typing import Any, Dict, List

from ..errors import ConfigError
from ..load.tokenizer import tokenizer_problems
from .common import Metrics, TaskInput

# task.name -> module (imported when the task runs: each pulls in parts of mlx-lm)
TASKS: Dict[str, str] = {
    "load": "load_only",
    "generate": "generate",
    "perplexity": "perplexity",
    "kl": "kl",
    "accuracy": "accuracy",
    "bench": "bench",
    "save": "save",
    "lm_eval": "lm_eval",
    "lora": "lora",
}


def task_module(name: Any) -> ModuleType:
    """The module of task ``name``.

    Raises:
        ConfigError: an unknown task name, with the known ones.
    """
    if not isinstance(name, str) or name not in TASKS:
        raise ConfigError(f"task.name={name!r}: expected one of {', '.join(sorted(TASKS))}")
    return import_module(f"{__name__}.{TASKS[name]}")


def task_problems(task: Dict[str, Any], trust_remote_code: bool = False) -> List[str]:
    """Every problem of a task's settings (its name included).

    Args:
        trust_remote_code: This command's ``load.trust_remote_code``: task files that
            run code (lm-eval's ``!function``) are refused without it, before they are read.
    """
    try:
        module = task_module(task.get("name"))
    except ConfigError as e:
        return e.problems
    code = getattr(module, "code_problems", None)
    problems = code(task, trust_remote_code) if code is not None else []
    return problems or module.settings_problems(task)


def task_file_problems(task: Dict[str, Any], model_dir: Path, trust_remote_code: bool) -> List[str]:
    """Problems with the model directory's files that the task reads besides the weights.

    A task module that loads the tokenizer says so with ``USES_TOKENIZER = True``:
    its JSON files and any tokenizer code are then checked before any weight is read.
    """
    module = task_module(task.get("name"))
    if getattr(module, "USES_TOKENIZER", False):
        return tokenizer_problems(model_dir, trust_remote_code)
    return []


def task_model_problems(task: Dict[str, Any], model_config: Dict[str, Any], model_dir: Any,
                        load: Dict[str, Any]) -> List[str]:
    """Problems of a task's (sound) settings with this model: its config and tokenizer, no weight.

    A task module that checks its settings against the model says so with
    ``problems_with_model(task, model_config, model_dir, load) -> problems``.
    """
    check = getattr(task_module(task.get("name")), "problems_with_model", None)
    return check(task, model_config, Path(model_dir), load) if check is not None else []


def run_task(job: TaskInput) -> Metrics:
    """Run ``job.task["name"]`` on the loaded model and return its metrics.

    Raises:
        TaskError: data the task cannot use.
    """
    return task_module(job.task.get("name")).execute(job)


__all__ = ["TASKS", "TaskInput", "task_problems", "run_task", "task_file_problems", "task_model_problems",
           "task_module"]
