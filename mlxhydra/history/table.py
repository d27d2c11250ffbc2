"""``mlxhydra runs [DIR]``: one table of every single run and sweep job under a directory.

Each row is read from a job's ``run.json`` (as data, through :class:`RunDir`):
time, status, model, quantization, task, the task's headline metric, bits
per weight and the directory. ``--where key=value`` filters (on a column, a
task override such as ``quant.bits``, or any run.json field such as
``quantization.source``), ``--sort`` orders, ``--last N`` keeps the newest,
``--json`` prints the rows as JSON.
"""

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from ..config.overrides import override_texts
from ..errors import RunDirError
from ..record.latest import OUTPUTS, all_run_dirs, find_run, shown
from ..record.run_dir import RunDir
from ..record.schema import MAIN_METRIC, flatten
from .diff import table

COLUMNS = ("time", "status", "model", "quant", "task", "metric", "bits_per_weight", "dir")
SORT_KEYS = (f"a column ({', '.join(COLUMNS)}), an override such as quant.bits, or a run.json "
             "field such as metrics.kl_mean")


def quant_label(record: Dict[str, Any]) -> str:
    """``none``, ``4bit g64``, ``mxfp4``, the preset or recipe name, or ``pre-quantized 4bit``."""
    choices = record.get("choices") or {}
    quant = record.get("quantization") or {}
    source = quant.get("source")
    if source == "pre-quantized":
        bits = (quant.get("settings") or {}).get("bits")
        return f"pre-quantized {bits}bit" if bits else "pre-quantized"
    if source == "runtime":
        if choices.get("quant") not in (None, "none"):
            return str(choices["quant"])
        if quant.get("recipe"):
            return str(quant["recipe"])
        default = quant.get("default") or {}
        mode = default.get("mode") or "affine"
        label = f"{default.get('bits')}bit g{default.get('group_size')}"
        return label if mode == "affine" else f"{mode} {label}"
    if source == "none":
        return "none"
    return str(choices.get("quant") or "")


def headline(record: Dict[str, Any]) -> Optional[tuple]:
    """(name, value) of the task's headline metric, or None."""
    task = (record.get("choices") or {}).get("task")
    name = MAIN_METRIC.get(task)
    value = (record.get("metrics") or {}).get(name) if name else None
    return (name, value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def model_label(record: Dict[str, Any]) -> str:
    choice = (record.get("choices") or {}).get("model") or record.get("model_dir") or ""
    return Path(str(choice)).name if "/" in str(choice) else str(choice)


def row_of(run_dir: RunDir) -> Dict[str, Any]:
    """One table row (with ``_record`` and ``_overrides`` kept for --where)."""
    try:
        record = dict(run_dir.read_record())
    except RunDirError as e:
        record = {"status": "unreadable", "error": str(e)}
    quant = record.get("quantization") or {}
    metric = headline(record)
    return {
        "time": str(record.get("started") or "")[:19].replace("T", " "),
        "status": record.get("status", "unknown"),
        "model": model_label(record),
        "quant": quant_label(record),
        "task": (record.get("choices") or {}).get("task") or "",
        "metric": f"{metric[0]}={metric[1]:.6g}" if metric else "",
        "bits_per_weight": quant.get("bits_per_weight"),
        "dir": shown(run_dir.path),
        "run_dir": str(run_dir.path),
        "job_num": record.get("job_num"),
        "error": record.get("error"),
        "_record": record,
        "_overrides": override_texts(record.get("overrides") or []),
    }


def collect_rows(root: Path) -> List[Dict[str, Any]]:
    """Rows of every run.json under ``root`` (single runs and sweep jobs), oldest first."""
    rows = [row_of(RunDir(d)) for d in all_run_dirs(root)]
    rows.sort(key=lambda r: (r["time"], r["dir"]))
    return rows


def value_of(row: Dict[str, Any], key: str) -> Any:
    """A column, else a task override as typed, else a (dotted) run.json field."""
    if key in row and not key.startswith("_"):
        return row[key]
    if key in row["_overrides"]:
        return row["_overrides"][key]
    if key.startswith("metric."):  # the headline metric's value
        return (headline(row["_record"]) or (None, None))[1]
    return flatten(row["_record"]).get(key)


def matches(row: Dict[str, Any], condition: str) -> bool:
    """``key=value`` or ``key!=value``, compared as text (numbers also as numbers)."""
    negate = "!=" in condition
    key, _, wanted = condition.partition("!=" if negate else "=")
    value = value_of(row, key.strip())
    text = "" if value is None else str(value)
    equal = text == wanted or text.lower() == wanted.lower()
    try:
        equal = equal or float(text) == float(wanted)
    except ValueError:
        pass
    return equal != negate


def known_key(rows: List[Dict[str, Any]], key: str) -> bool:
    """Whether ``key`` can order the rows: a column, or an override or run.json field of one of them."""
    if key in COLUMNS or key.startswith("metric."):
        return True
    return any((key in row and not key.startswith("_")) or key in row["_overrides"]
               or key in flatten(row["_record"]) for row in rows)


def usage_problem(args: argparse.Namespace) -> Optional[str]:
    """What is wrong with --last and --sort before any run is read (one line), or None."""
    if args.last is not None and args.last < 1:
        return f"--last {args.last}: expected a positive number of rows (the N newest)"
    if not args.sort.lstrip("-"):
        return f"--sort {args.sort!r}: expected {SORT_KEYS}"
    return None


def sort_key(key: str):
    def k(row):
        value = value_of(row, key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return (0, value, "")
        return (1 if value is not None else 2, 0, str(value))
    return k


def main(argv: Sequence[str]) -> int:
    """``mlxhydra runs [DIR] [--where K=V]... [--sort KEY] [--last N] [--json]``; the exit status."""
    p = argparse.ArgumentParser(prog="mlxhydra runs",
                                description="One table of the single runs and sweep jobs under DIR.")
    p.add_argument("dir", nargs="?", default=OUTPUTS,
                   help="where to look (default: outputs; also latest or a run's name prefix)")
    p.add_argument("--where", action="append", default=[], metavar="KEY=VALUE",
                   help="keep rows where KEY (a column, an override such as quant.bits, or a "
                        "run.json field such as quantization.source) equals VALUE; KEY!=VALUE "
                        "excludes; repeat to combine")
    p.add_argument("--sort", default="time", metavar="KEY",
                   help="order by KEY: a column, override or run.json field (default time; "
                        "--sort=-KEY or --reverse for descending)")
    p.add_argument("--reverse", action="store_true", help="descending order")
    p.add_argument("--last", type=int, default=None, metavar="N", help="only the N newest rows")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = p.parse_args(list(argv))
    for condition in args.where:
        if "=" not in condition or condition.startswith(("=", "!=")):
            p.error(f"--where {condition!r}: expected KEY=VALUE or KEY!=VALUE")
    problem = usage_problem(args)
    if problem:
        sys.stderr.write(f"mlxhydra runs: {problem}\n")
        return 2
    try:
        root = Path(args.dir) if args.dir == OUTPUTS else find_run(args.dir)
    except RunDirError as e:
        sys.stderr.write(f"mlxhydra: runs {e}\n")
        return 2
    if not root.is_dir():
        sys.stderr.write(f"mlxhydra: runs {args.dir}: no such directory\n")
        return 2
    rows = collect_rows(root)
    key = args.sort.lstrip("-")
    if rows and not known_key(rows, key):
        sys.stderr.write(f"mlxhydra runs: --sort {key}: no run under {shown(root)} has this key; "
                         f"expected {SORT_KEYS}\n")
        return 2
    rows = [r for r in rows if all(matches(r, c) for c in args.where)]
    if args.last is not None:
        rows = rows[-args.last:]
    descending = args.sort.startswith("-") != args.reverse
    rows.sort(key=sort_key(key), reverse=descending)
    if args.json:
        print(json.dumps([{k: v for k, v in r.items() if not k.startswith("_")} for r in rows],
                         indent=2, default=str))
        return 0
    if not rows:
        print(f"no runs under {shown(root)}" + (" matching " + " and ".join(args.where) if args.where else ""))
        return 0
    cells = [[r[c] if r[c] not in (None, "") else "-" for c in COLUMNS] for r in rows]
    for c in cells:
        bpw = c[COLUMNS.index("bits_per_weight")]
        c[COLUMNS.index("bits_per_weight")] = f"{bpw:.3f}" if isinstance(bpw, float) else bpw
    print(table(COLUMNS, cells))
    counts: Dict[str, int] = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    print(f"\n{len(rows)} runs: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    return 0
