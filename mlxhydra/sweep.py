"""Sweep summaries: one row per job, built from the jobs' ``run.json`` files.

``write_summary(sweep_dir)`` writes ``summary.csv``, ``summary.md`` and
``summary.png`` at the sweep root, each atomically. It reads only what is on
disk, so it works for a finished sweep, an interrupted one and one still
running (jobs that have not written ``run.json`` yet are shown as missing,
when the sweep's ``multirun.yaml`` says which jobs were planned).
"""

import csv
import io
import json
import logging
import os
import re
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from .records import write_bytes_atomic

log = logging.getLogger(__name__)

SUMMARY_FILES = ("summary.csv", "summary.md", "summary.png")
# The metric plotted (and optimised by default) for each task.
MAIN_METRIC = {"load": "bits_per_weight", "kl": "kl_mean", "perplexity": "perplexity",
               "accuracy": "accuracy", "generate": "generation_tps", "bench": "generation_tps",
               "save": "bits_per_weight"}
FIXED = ["job", "status", "bits_per_weight", "parameters", "peak_memory_mb", "load_s",
         "weights_cache"]
TAIL = ["error", "run_dir"]
_JOB_DIR = re.compile(r"^(\d+)(?:_|$)")


def _job_dirs(sweep_dir: Path) -> Dict[int, Path]:
    """Sub-directories named ``<num>_...`` (Hydra's sweep subdir), by job number."""
    found: Dict[int, Path] = {}
    for p in sorted(sweep_dir.iterdir()):
        m = _JOB_DIR.match(p.name)
        if not (m and p.is_dir()):
            continue
        num = int(m.group(1))
        if num not in found or (p / "run.json").exists():
            found[num] = p
    return found


def _sweep_plan(sweep_dir: Path) -> Tuple[List[str], Optional[List[List[str]]]]:
    """(swept keys, planned jobs' overrides or None) from ``multirun.yaml``."""
    path = sweep_dir / "multirun.yaml"
    if not path.exists():
        return [], None
    try:
        from omegaconf import OmegaConf
        from hydra.core.override_parser.overrides_parser import OverridesParser

        cfg = OmegaConf.load(path)
        task = list(OmegaConf.select(cfg, "hydra.overrides.task", default=[]) or [])
        params = OmegaConf.select(cfg, "hydra.sweeper.params", default=None) or {}
        target = str(OmegaConf.select(cfg, "hydra.sweeper._target_", default="") or "")
        parsed = OverridesParser.create().parse_overrides(
            task + [f"{k}={v}" for k, v in params.items()]
        )
    except Exception as e:  # a summary must not fail on an odd multirun.yaml
        log.debug("cannot read the sweep plan in %s: %s", path, e)
        return [], None
    keys = [o.get_key_element() for o in parsed if o.is_sweep_override()]
    if not target.endswith("BasicSweeper"):
        return keys, None
    try:
        from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

        return keys, BasicSweeper.split_arguments(parsed, None)[0]
    except Exception:
        return keys, None


def _overrides(items: Iterable[str]) -> Dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = str(item).partition("=")
        if sep:
            out[key.lstrip("+~")] = value
    return out


def _flatten(d: Any, prefix: str = "") -> Dict[str, Any]:
    """Nested metrics as dotted scalar columns (lists are left out)."""
    out: Dict[str, Any] = {}
    if not isinstance(d, dict):
        return out
    for k, v in d.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, name + "."))
        elif v is None or isinstance(v, (int, float, str, bool)):
            out[name] = v
    return out


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
        "_overrides": _overrides(run.get("overrides") or []),
        "_metrics": _flatten(run.get("metrics")),
        "_task": (run.get("choices") or {}).get("task"),
    }


def collect(sweep_dir: Path) -> Tuple[List[Dict[str, Any]], List[str]]:
    """Rows (one per job, planned or found) and the swept keys of a sweep directory.

    Raises:
        FileNotFoundError: the directory does not exist.
    """
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"{sweep_dir}: no such sweep directory")
    keys, plan = _sweep_plan(sweep_dir)
    rows: Dict[int, Dict[str, Any]] = {}
    for num, d in _job_dirs(sweep_dir).items():
        try:
            run = json.loads((d / "run.json").read_text())
        except FileNotFoundError:
            run = {"status": "missing", "error": "no run.json"}
        except (OSError, ValueError) as e:
            run = {"status": "unreadable", "error": f"run.json: {e}"}
        rows[num] = _row(num, run, d, sweep_dir)
    for num, overrides in enumerate(plan or []):
        if num not in rows:
            rows[num] = {"job": num, "status": "missing", "_overrides": _overrides(overrides),
                         "_metrics": {}}
    ordered = [rows[n] for n in sorted(rows)]
    if not keys:  # no plan: the keys whose values differ between jobs
        seen: Dict[str, set] = {}
        for r in ordered:
            for k, v in r["_overrides"].items():
                seen.setdefault(k, set()).add(v)
        keys = [k for k, vs in seen.items() if len(vs) > 1]
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
    fixed += FIXED[2:]
    metric_names = [m if m not in fixed and m not in TAIL else f"metrics.{m}" for m in metric_cols]
    columns = fixed + metric_names + TAIL
    cells = []
    for r in rows:
        values = {**{k: r["_overrides"].get(k) for k in keys},
                  **{n: r["_metrics"].get(m) for n, m in zip(metric_names, metric_cols)},
                  **{k: r.get(k) for k in FIXED + TAIL + ["objective"]}}
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
    """A Markdown table of the summary.

    Columns not in ``keep`` whose values are all text (file paths, generated
    text, reference names) are left out: summary.csv has every column.
    """
    statuses: Dict[str, int] = {}
    for row in cells:
        s = row[columns.index("status")]
        statuses[s] = statuses.get(s, 0) + 1
    counts = ", ".join(f"{n} {s}" for s, n in sorted(statuses.items()))
    shown = [i for i, c in enumerate(columns) if c in keep or not all(
        isinstance(row[i], str) or row[i] is None for row in cells)]
    lines = [f"# Sweep {sweep_dir}", "", f"{len(cells)} jobs: {counts}", "",
             "| " + " | ".join(columns[i] for i in shown) + " |", "|" + "---|" * len(shown)]
    for row in cells:
        text = [_fmt(row[i]).replace("|", "\\|").replace("\n", " ")[:80] for i in shown]
        lines.append("| " + " | ".join(text) + " |")
    return "\n".join(lines) + "\n"


def write_summary(sweep_dir: Path, objective: Optional[str] = None) -> Dict[str, Any]:
    """Write summary.csv, summary.md and summary.png at the sweep root.

    Returns:
        {"jobs", "statuses" (status -> count), "failed", "files", "metric"}.
    """
    sweep_dir = Path(sweep_dir)
    rows, keys = collect(sweep_dir)
    columns, cells = table(rows, keys)
    write_bytes_atomic(sweep_dir / "summary.csv", to_csv(columns, cells).encode())
    keep = FIXED + TAIL + list(keys) + ["objective"]
    write_bytes_atomic(sweep_dir / "summary.md", to_markdown(sweep_dir, columns, cells, keep).encode())
    metric = main_metric(rows, objective)
    files = [sweep_dir / "summary.csv", sweep_dir / "summary.md"]
    try:
        from .sweep_plot import plot

        if plot(sweep_dir / "summary.png", rows, keys, metric):
            files.append(sweep_dir / "summary.png")
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
    p.add_argument("sweep_dir", type=Path, help="the sweep's directory (holding <num>_*/run.json)")
    p.add_argument("--objective", default=None, help="metric to plot (default: the task's main metric)")
    args = p.parse_args(list(argv))
    try:
        result = write_summary(args.sweep_dir, args.objective)
    except (FileNotFoundError, NotADirectoryError) as e:
        sys.stderr.write(f"mlxhydra summarize: {e}\n")
        return 2
    if not result["jobs"]:
        sys.stderr.write(f"mlxhydra summarize: {args.sweep_dir}: no jobs (no <num>_* run directories)\n")
        return 2
    counts = ", ".join(f"{n} {s}" for s, n in sorted(result["statuses"].items()))
    print(f"{result['jobs']} jobs: {counts}")
    for f in result["files"]:
        print(f)
    return 1 if result["not_completed"] else 0
