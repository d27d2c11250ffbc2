"""Sweep summaries: one row per job, built from the jobs' ``run.json`` files.

``write_summary(sweep_dir)`` writes ``summary.csv``, ``summary.md`` and
``summary.png`` at the sweep root, each atomically. It reads only what is on
disk, so it works for a finished sweep, an interrupted one and one still
running (jobs that have not written ``run.json`` yet are shown as missing,
when the sweep's ``multirun.yaml`` says which jobs were planned).
"""

import csv
import io
import logging
import os
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable, ContextManager, Dict, List, Optional, Sequence, Tuple

from ..config.overrides import override_texts
from ..errors import RunDirError, describe_os_error
from ..file_checks import directory_problem
from ..record.atomic import write_bytes_atomic
from ..record.latest import find_run
from ..record.run_dir import SweepDir, read_yaml
from ..record.schema import MAIN_METRIC, flatten
from .columns import FIXED
from .pareto import COLUMN as PARETO
from .pareto import mark_front
from .plan import job_plan
from .ranking import COLUMN as RANK
from .ranking import mark_ranks

log = logging.getLogger(__name__)
# The metrics summary.md shows for each task (summary.csv has them all).
HEADLINE = {"kl": ["kl_mean", "kl_mean_stderr", "top1_agreement", "perplexity_ratio"],
            "perplexity": ["perplexity", "perplexity_stderr"],
            "accuracy": ["accuracy", "correct", "total"],
            "generate": ["generation_tps"], "bench": ["prompt_tps", "generation_tps", "peak_memory_gb"],
            "lm_eval": ["score", "score_stderr"],
            "lora": ["final_val_loss", "final_train_loss", "tokens_per_second"]}
# Columns summary.md shows only when their values differ between jobs (measurements never).
SHOWN_WHEN_VARYING = ["parameters"]
TAIL = ["error", "run_dir"]


def sweep_plan(sweep: SweepDir, strict: bool = False) -> Tuple[List[str], Optional[List[List[str]]]]:
    """(swept keys, planned jobs' overrides or None) from ``multirun.yaml``.

    Raises:
        RunDirError: (strict) a multirun.yaml that is not readable YAML of the expected shape.
    """
    try:
        plan = read_yaml(sweep.plan) or {}
        if not isinstance(plan, dict):
            raise RunDirError(f"{sweep.plan}: expected a mapping, found {type(plan).__name__}")
        return job_plan(plan.get("hydra") or {})
    except (RunDirError, AttributeError, TypeError) as e:  # an odd multirun.yaml
        if strict:
            raise RunDirError(f"{sweep.plan}: not a sweep plan ({e})") if not isinstance(
                e, RunDirError) else e
        log.debug("cannot read the sweep plan in %s: %s", sweep.plan, e)
        return [], None


def _metric_columns(metrics: Any) -> Dict[str, Any]:
    """Nested metrics as dotted scalar columns (lists and other values left out)."""
    if not isinstance(metrics, dict):
        return {}
    return {k: v for k, v in flatten(metrics, lists=False).items()
            if v is None or isinstance(v, (int, float, str, bool))}


def _row(num: int, run: Dict[str, Any], run_dir: Path, sweep_dir: Path) -> Dict[str, Any]:
    q = run.get("quantization") or {}
    times = run.get("times") or {}
    load = [times.get(k) for k in ("instantiate", "load_weights", "quantize")]
    peak = run.get("peak_memory_bytes")
    error = run.get("error")
    return {
        "job": num,
        "status": run.get("status", "unknown"),
        "bits_per_weight": q.get("bits_per_weight"),
        "parameters": run.get("parameters", q.get("parameters")),
        "peak_memory_mb": round(peak / 2**20, 1) if isinstance(peak, (int, float)) else None,
        "load_s": round(sum(x for x in load if x), 3) if any(load) else None,
        "weights_cache": run.get("weights_cache"),
        "objective": run.get("objective"),
        "error": (str(error).splitlines() or [""])[0][:200] if error else None,
        "run_dir": os.path.relpath(run_dir, sweep_dir),
        "_overrides": override_texts(run.get("overrides") or []),
        "_metrics": _metric_columns(run.get("metrics")),
        "_task": (run.get("choices") or {}).get("task"),
    }


def collect(sweep_dir: Path, strict: bool = False) -> Tuple[List[Dict[str, Any]], List[str]]:
    """Rows (one per job, planned or found) and the swept keys of a sweep directory.

    Args:
        strict: Raise on a damaged job record or plan (``summarize``); otherwise
            show the job as ``unreadable`` (the summary written when a sweep ends).

    Raises:
        FileNotFoundError: the directory does not exist.
        RunDirError: (strict) a damaged run.json or multirun.yaml, named.
    """
    sweep = SweepDir(Path(sweep_dir))
    problem = directory_problem(sweep.path)
    if problem:
        raise FileNotFoundError(f"{sweep.path}: no such sweep directory" if problem == "does not exist"
                                else f"{sweep.path} {problem}")
    keys, plan = sweep_plan(sweep, strict)
    rows: Dict[int, Dict[str, Any]] = {}
    for num, job_dir in sweep.job_dirs().items():
        try:
            run = dict(job_dir.read_record()) or {"status": "missing", "error": "no run.json"}
        except RunDirError as e:
            if strict:
                raise
            run = {"status": "unreadable", "error": str(e)}
        rows[num] = _row(num, run, job_dir.path, sweep.path)
    for num, overrides in enumerate(plan or []):
        if num not in rows:
            rows[num] = {"job": num, "status": "missing", "_overrides": override_texts(overrides),
                         "_metrics": {}}
    ordered = [rows[n] for n in sorted(rows)]
    # Also the keys whose values differ between jobs without being in the plan (those a
    # sweeper's custom search space draws, or all of them when there is no plan).
    seen: Dict[str, set] = {}
    for r in ordered:
        for k, v in r["_overrides"].items():
            seen.setdefault(k, set()).add(v)
    varies = [k for k, vs in seen.items()
              if len(vs) > 1 or any(k not in r["_overrides"] for r in ordered)]
    keys = list(keys) + [k for k in varies if k not in keys]
    return ordered, keys


def table(rows: List[Dict[str, Any]], keys: Sequence[str]) -> Tuple[List[str], List[List[Any]]]:
    """Column names and cell values of the summary."""
    metric_cols: List[str] = []
    for r in rows:
        for k in r.get("_metrics", {}):
            if k not in metric_cols:
                metric_cols.append(k)
    fixed = FIXED[:1] + list(keys) + FIXED[1:2]
    if any(r.get("objective") is not None for r in rows):
        fixed.append("objective")
    if any(PARETO in r for r in rows):
        fixed.append(PARETO)
    if any(RANK in r for r in rows):
        fixed.append(RANK)
    fixed += FIXED[2:]
    metric_names = [m if m not in fixed and m not in TAIL else f"metrics.{m}" for m in metric_cols]
    columns = fixed + metric_names + TAIL
    cells = []
    for r in rows:
        values = {**{k: r["_overrides"].get(k) for k in keys},
                  **{n: r["_metrics"].get(m) for n, m in zip(metric_names, metric_cols)},
                  **{k: r.get(k) for k in FIXED + TAIL + ["objective", PARETO, RANK]}}
        cells.append([values.get(c) for c in columns])
    return columns, cells


def main_metric(rows: List[Dict[str, Any]], objective: Optional[str] = None) -> str:
    """The metric to plot: the objective, the task's main metric, or bits per weight."""
    if objective:
        return objective
    for r in rows:
        task = r.get("_task")
        if task in MAIN_METRIC and (MAIN_METRIC[task] in r["_metrics"] or task in ("load", "save")):
            return MAIN_METRIC[task]
    return "bits_per_weight"


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def to_csv(columns: List[str], cells: List[List[Any]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for row in cells:
        w.writerow(["" if v is None else v for v in row])
    return buf.getvalue()


def to_markdown(sweep_dir: Path, columns: List[str], cells: List[List[Any]],
                keep: Sequence[str] = ()) -> str:
    """A Markdown table of the summary: the columns in ``keep``, and those of
    :data:`SHOWN_WHEN_VARYING` whose values differ between jobs.

    ``keep`` names the job, the swept keys, the status and the headline
    metrics. Columns with no value at all are left out, and a metric's
    ``<name>_stderr`` is shown in its cell (``value ± error``): summary.csv
    has every column.
    """
    statuses: Dict[str, int] = {}
    for row in cells:
        s = row[columns.index("status")]
        statuses[s] = statuses.get(s, 0) + 1
    counts = ", ".join(f"{n} {s}" for s, n in sorted(statuses.items()))
    errors = {i: columns.index(f"{c}_stderr") for i, c in enumerate(columns)
              if f"{c}_stderr" in columns}

    def values(i: int) -> List[Any]:
        return [row[i] for row in cells]

    def shown_column(i: int) -> bool:
        vs = values(i)
        if all(v is None or v == "" for v in vs) or i in errors.values():
            return False
        return columns[i] in keep or (columns[i] in SHOWN_WHEN_VARYING and len({_fmt(v) for v in vs}) > 1)

    shown = [i for i in range(len(columns)) if shown_column(i)]
    lines = [f"# Sweep {sweep_dir}", "", f"{len(cells)} jobs: {counts}", "",
             "| " + " | ".join(columns[i] for i in shown) + " |", "|" + "---|" * len(shown)]
    for row in cells:
        text = [_fmt(row[i]) + (f" ± {_fmt(row[errors[i]])}" if i in errors
                                and row[errors[i]] is not None and row[i] is not None else "")
                for i in shown]
        text = [t.replace("|", "\\|").replace("\n", " ")[:80] for t in text]
        lines.append("| " + " | ".join(text) + " |")
    return "\n".join(lines) + "\n"


def sweep_policy(sweep: SweepDir) -> Dict[str, Any]:
    """The ``sweep`` node of the sweep's multirun.yaml, unresolved ({} when unreadable)."""
    try:
        node = (read_yaml(sweep.plan) or {}).get("sweep")
    except (RunDirError, AttributeError):
        return {}
    return dict(node) if isinstance(node, dict) else {}


def write_summary(sweep_dir: Path, objective: Optional[str] = None, strict: bool = False,
                  tables_held: Callable[[], ContextManager] = nullcontext) -> Dict[str, Any]:
    """Write summary.csv, summary.md and summary.png at the sweep root.

    Args:
        strict: Refuse a damaged job record or plan (see :func:`collect`) before writing anything.
        tables_held: The context the two tables are written in (the figure, slower, is not):
            after an interruption, signals are held there so the tables are always written.

    Returns:
        {"jobs", "statuses" (status -> count), "failed", "files", "metric"}.
    """
    sweep = SweepDir(Path(sweep_dir))
    csv_file, md_file, png_file = (sweep.summary_file(s) for s in ("csv", "md", "png"))
    with tables_held():
        rows, keys = collect(sweep.path, strict)
        metric = main_metric(rows, objective)
        mark_front(rows, metric)
        mark_ranks(rows, metric)
        columns, cells = table(rows, keys)
        write_bytes_atomic(csv_file, to_csv(columns, cells).encode())
        headline = [metric, f"{metric}_stderr"]
        for task in dict.fromkeys(r.get("_task") for r in rows):
            headline += HEADLINE.get(task, [])
        headline += [f"metrics.{m}" for m in headline]  # metric names that clash with a column
        keep = ["job", *keys, "status", "objective", PARETO, RANK, "bits_per_weight", *headline, *TAIL]
        write_bytes_atomic(md_file, to_markdown(sweep.path, columns, cells, keep).encode())
    files = [csv_file, md_file]
    policy = sweep_policy(sweep)
    if objective:
        policy["objective"] = objective
    try:
        from .plots import plot

        if plot(png_file, rows, keys, metric, policy):
            files.append(png_file)
    except Exception as e:  # the tables matter more than the figure
        log.warning("summary.png not written: %s", e)
    statuses: Dict[str, int] = {}
    for r in rows:
        statuses[r["status"]] = statuses.get(r["status"], 0) + 1
    return {
        "jobs": len(rows),
        "statuses": statuses,
        "failed": statuses.get("failed", 0),
        "not_completed": len(rows) - statuses.get("completed", 0),
        "files": [str(f) for f in files],
        "metric": metric,
    }


def summarize_main(argv: Sequence[str]) -> int:
    """``mlxhydra summarize DIR [--objective METRIC]``: rebuild a sweep's summary.

    Exit status: 0 when every job completed, 1 when any failed or is not
    finished (running, missing, interrupted), 2 for a bad directory.
    """
    import argparse
    import sys

    p = argparse.ArgumentParser(prog="mlxhydra summarize",
                                description="Rebuild summary.csv/.md/.png of a sweep directory.")
    p.add_argument("sweep_dir", help="the sweep's directory (holding <num>_*/run.json), latest, "
                                      "or a unique prefix of its name")
    p.add_argument("--objective", default=None, help="metric to plot (default: the task's main metric)")
    args = p.parse_args(list(argv))

    try:
        named = args.sweep_dir
        result = write_summary(Path(named) if "/" in named and not named.startswith("latest/")
                               else find_run(named), args.objective, strict=True)
    except (FileNotFoundError, NotADirectoryError, RunDirError) as e:
        sys.stderr.write(f"mlxhydra summarize: {e}\n")
        return 2
    except OSError as e:  # the summary files cannot be written there
        sys.stderr.write(f"mlxhydra summarize: {describe_os_error(e)}\n")
        return 1
    if not result["jobs"]:
        sys.stderr.write(f"mlxhydra summarize: {args.sweep_dir}: no jobs (no <num>_* run directories)\n")
        return 2
    counts = ", ".join(f"{n} {s}" for s, n in sorted(result["statuses"].items()))
    print(f"{result['jobs']} jobs: {counts}")
    for f in result["files"]:
        print(f)
    return 1 if result["not_completed"] else 0
