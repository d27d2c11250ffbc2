"""``task=lm_eval``: lm-evaluation-harness tasks on the model mlxhydra built, in memory.

The model goes to lm-eval through mlx-lm's own adapter class (wrapped
around the model in memory by ``mlxhydra._upstream.in_memory_mlxlm``), so scores are those ``mlx_lm.evaluate`` reports for
the same model, with the settings under the names that command and lm-eval
use. lm-eval's results JSON and per-sample logs go to ``<run_dir>/lm_eval/``;
each task's metrics with their standard errors, and the data each task read,
go to metrics.json (see :mod:`.lm_eval_results`).

lm-eval is the optional extra ``[eval]``; without it the validate stage says
which extra to install.
"""

import contextlib
import io
import logging
import sys
import time
from functools import lru_cache
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..config.checks import SettingsCheck
from ..errors import TaskError
from ..load.tokenizer import load_tokenizer
from .common import Metrics, TaskInput, peak_memory_gb
from .lm_eval_code import code_problems as yaml_code

log = logging.getLogger("mlxhydra")

# The tokenizer's files are checked with the settings, before any weight is read.
USES_TOKENIZER = True
INSTALL_HINT = "pip install 'mlxhydra[eval]'"
SEED_RANGE = (0, 2**32 - 1)  # numpy's, the narrowest of the seeds lm-eval sets


def lm_eval_missing() -> Optional[str]:
    """The one-line problem when lm-evaluation-harness cannot be imported, else None."""
    try:
        import lm_eval  # noqa: F401
    except ImportError as e:
        return (f"task=lm_eval needs lm-evaluation-harness (lm-eval), which cannot be imported "
                f"({e}): install the extra with {INSTALL_HINT}")
    return None


def task_specs(value: Any) -> Optional[List[str]]:
    """``task.tasks`` as a list of names or YAML paths, or None when malformed."""
    specs = [value] if isinstance(value, str) else value
    if not isinstance(specs, list) or not specs or not all(
            isinstance(s, str) and s.strip() for s in specs):
        return None
    return [s.strip() for s in specs]


def include_paths(value: Any) -> Optional[List[Path]]:
    """``task.include_path`` as absolute paths (relative ones from the working directory)."""
    paths = [] if value is None else [value] if isinstance(value, str) else value
    if not isinstance(paths, list) or not all(isinstance(p, str) and p for p in paths):
        return None
    return [Path(p).expanduser().absolute() for p in paths]


def code_problems(task: Dict[str, Any], trust_remote_code: bool) -> List[str]:
    """Task YAMLs (``task.include_path``, ``task.tasks``) that name code, without consent
    (:mod:`.lm_eval_code`); checked before :func:`settings_problems` lets lm-eval index them."""
    return yaml_code(task_specs(task.get("tasks")), include_paths(task.get("include_path")),
                     trust_remote_code)


def settings_problems(task: Dict[str, Any]) -> List[str]:
    """Every problem of task=lm_eval's settings, the task names included."""
    c = SettingsCheck(task)
    specs = task_specs(task.get("tasks"))
    if specs is None:
        c.fail("tasks", "an lm-eval task or group name (or a task YAML file), or a list of them")
    for key in ("num_fewshot", "max_tokens"):
        if task.get(key) is not None:
            c.integer(key, minimum=0 if key == "num_fewshot" else 1)
    limit = task.get("limit")
    if limit is not None and not (
            (type(limit) is int and limit >= 1) or (type(limit) is float and 0 < limit < 1)):
        c.fail("limit", "null (every example), a positive integer (examples per task) "
                        "or a fraction between 0 and 1")
    c.integer("batch_size")
    if task.get("apply_chat_template") not in (None, True, False):
        c.fail("apply_chat_template", "null (the tokenizer's chat template when it has one), "
                                      "true or false")
    c.boolean("fewshot_as_multiturn")
    if task.get("fewshot_as_multiturn") is True and task.get("apply_chat_template") is False:
        c.problems.append("task.fewshot_as_multiturn=true needs a chat template: "
                          "task.apply_chat_template=true or null")
    c.boolean("confirm_run_unsafe_code")
    seed = task.get("seed")
    if seed is not None and (type(seed) is not int or not SEED_RANGE[0] <= seed <= SEED_RANGE[1]):
        c.fail("seed", "null (the run's seed) or an integer from 0 to 2**32-1")
    if not isinstance(task.get("chat_template_args") or {}, dict):
        c.fail("chat_template_args", "a mapping of arguments for the chat template, e.g. "
                                     "{enable_thinking: false}")
    paths = include_paths(task.get("include_path"))
    if paths is None:
        c.fail("include_path", "a directory of task YAMLs, a list of them, or null")
    else:
        c.problems += [f"task.include_path: {p} is not a directory" for p in paths if not p.is_dir()]
    missing = lm_eval_missing()
    if missing:
        c.problems.append(missing)
    elif specs is not None and paths is not None and not c.problems:
        c.problems += unknown_tasks(specs, paths)
    return c.problems


# ----------------------------------------------------------------------------- task index
@lru_cache(maxsize=4)
def task_manager(paths: Tuple[str, ...], defaults: bool):
    """lm-eval's TaskManager over the shipped tasks, ``paths`` and (with ``defaults``) lm-eval's own.

    Indexing lm-eval's own tasks reads some 15,000 YAML files (seconds), so
    managers are kept for the process: the jobs of a multirun share them.
    """
    from lm_eval.tasks import TaskManager

    from ..lm_eval_tasks import TASKS_DIR

    return TaskManager(include_path=[str(TASKS_DIR), *paths], include_defaults=defaults)


def _is_task_yaml(spec: str) -> bool:
    """Whether ``spec`` is a YAML file of one task (not a group)."""
    import yaml

    class TagsAsText(yaml.SafeLoader):
        """Reads lm-eval's ``!function`` values as text instead of importing them."""

    TagsAsText.add_multi_constructor("!", lambda loader, tag, node: None)
    path = Path(spec).expanduser()
    if path.suffix not in (".yaml", ".yml") or not path.is_file():
        return False
    try:
        cfg = yaml.load(path.read_text(encoding="utf-8"), Loader=TagsAsText)  # noqa: S506
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False  # lm-eval's own loader reports it
    return isinstance(cfg, dict) and "task" in cfg and "group" not in cfg


def manager_for(specs: Sequence[str], paths: Sequence[Path]):
    """The TaskManager that resolves ``specs``: the shipped and included tasks alone when enough.

    A plain task found there (or a task YAML file) needs nothing from lm-eval's
    own index; groups and tags may refer to any task, so they get the full one.
    """
    key = tuple(str(p) for p in paths)
    small = task_manager(key, defaults=False)
    tasks = set(small.all_subtasks)
    if all(s in tasks or _is_task_yaml(s) for s in specs):
        return small
    return task_manager(key, defaults=True)


def unknown_tasks(specs: Sequence[str], paths: Sequence[Path]) -> List[str]:
    """A problem for each name that is no task, group or tag lm-eval knows (nor a YAML file)."""
    import difflib

    manager = manager_for(specs, paths)
    problems = []
    for spec in specs:
        if spec in manager.task_index or Path(spec).expanduser().is_file():
            continue
        close = difflib.get_close_matches(spec, manager.all_tasks, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        where = "lm-eval's tasks, mlxhydra's" + (" or task.include_path" if paths else "")
        problems.append(f"task.tasks: {spec!r} is not a task, group or tag in {where}{hint}; "
                        "`lm-eval ls tasks` lists them")
    return problems


# ----------------------------------------------------------------------------- running
class _DropCustomDatasetHint(logging.Filter):
    """lm-eval warns on every task with a ``custom_dataset`` (as the shipped ones) about
    a ``--metadata`` command-line option that task=lm_eval does not have."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Custom kwargs can be passed to `--metadata`" not in record.getMessage()


@contextlib.contextmanager
def _quiet_progress():
    """mlx-lm's and lm-eval's progress output (stdout prints, tqdm bars on stderr) only on a terminal.

    Log records are unaffected: their handlers hold the streams they were given.
    """
    sink_out = sys.stderr if sys.stderr.isatty() else io.StringIO()
    sink_err = sys.stderr if sys.stderr.isatty() else io.StringIO()
    task_log = logging.getLogger("lm_eval.api.task")
    hint = _DropCustomDatasetHint()
    task_log.addFilter(hint)
    try:
        with contextlib.redirect_stdout(sink_out), contextlib.redirect_stderr(sink_err):
            yield
    finally:
        task_log.removeFilter(hint)


def execute(job: TaskInput) -> Metrics:
    """Run lm-eval's tasks on ``job.model`` through mlx-lm's adapter.

    Returns:
        Metrics: ``score`` ± ``score_stderr`` (the mean of the requested tasks'
        first metrics), ``<task>.<metric>`` and ``<task>.<metric>_stderr`` for
        every task and group, ``<task>.samples``, the data each task read,
        the lm-eval version, the result files, seconds, peak_memory_gb.

    Raises:
        TaskError: a dataset that is not available, a task that cannot be
            built, or unsafe code without consent.
    """
    import lm_eval
    import mlx.core as mx
    from lm_eval.loggers import EvaluationTracker

    from .._upstream import in_memory_mlxlm
    from . import lm_eval_results as results_io

    task = job.task
    specs = task_specs(task["tasks"])
    paths = include_paths(task.get("include_path"))
    seed = job.seed if task.get("seed") is None else task["seed"]
    tokenizer = load_tokenizer(job.model_dir, job.model_config, trust_remote_code=job.trust_remote_code)
    lm = in_memory_mlxlm(
        job.model, tokenizer, max_tokens=task.get("max_tokens"), batch_size=task["batch_size"],
        use_chat_template=task.get("apply_chat_template"),
        chat_template_args=task.get("chat_template_args") or None,
        model_info={"model_dir": str(job.model_dir),
                    "quantization": job.model_config.get("quantization")},
    )
    if task.get("fewshot_as_multiturn") and not lm.use_chat_template:
        raise TaskError("task.fewshot_as_multiturn=true: the model's tokenizer has no chat "
                        "template (task.apply_chat_template=null found none)")
    manager = manager_for(specs, paths)
    start = time.perf_counter()
    with _quiet_progress():
        loaded = results_io.load_tasks(manager, specs)
        results_io.require_unsafe_consent(loaded, bool(task.get("confirm_run_unsafe_code")))
        mx.random.seed(seed)  # as mlx_lm.evaluate: sampling, when a sampler is set
        tracker = EvaluationTracker(output_path=str(job.run_dir / results_io.OUTPUT_DIR / "results.json"))
        results = lm_eval.simple_evaluate(
            model=lm, tasks=results_io.top_level(loaded), task_manager=manager,
            num_fewshot=task.get("num_fewshot"), limit=task.get("limit"),
            batch_size=task["batch_size"], apply_chat_template=lm.use_chat_template,
            fewshot_as_multiturn=bool(task.get("fewshot_as_multiturn")),
            random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed,
            fewshot_random_seed=seed, log_samples=True, evaluation_tracker=tracker,
            confirm_run_unsafe_code=bool(task.get("confirm_run_unsafe_code")),
        )
    seconds = time.perf_counter() - start
    files = results_io.write_outputs(tracker, results, job.run_dir)
    metrics = results_io.metrics_of(results, loaded, specs)
    metrics.update(files, seconds=seconds, peak_memory_gb=peak_memory_gb())
    log.info("lm-eval %s results:\n%s", metrics["lm_eval_version"], results_io.table(results))
    log.info("lm_eval: score %.4f ± %.4f over %s (%.1f s)", metrics["score"] or float("nan"),
             metrics["score_stderr"] or float("nan"), ", ".join(metrics["score_metrics"]), seconds)
    return metrics
