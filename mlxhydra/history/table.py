"""``mlxhydra runs [DIR]``: one table of every single run and sweep job under a directory.

Each row is read from a job's ``run.json`` (as data, through :class:`RunDir`):
time, status, model, quantization, task, the task's headline metric, bits
per weight and the directory. ``--where key=value`` filters (on a column, a
task override such as ``quant.bits``, or any run.json field such as
``quantization.source``), ``--sort`` orders, ``--last N`` keeps the newest,
``--json`` and ``--csv`` print the rows as data (:mod:`mlxhydra.history.rows`).
"""

import argparse
import sys
from typing import Any, Dict, List, Optional, Sequence

from ..errors import RunDirError
from ..record.latest import OUTPUTS, shown
from ..record.schema import flatten
from .diff import table
from .rows import collect_rows, find_root, headline, is_number, to_csv, to_json

COLUMNS = ("time", "status", "model", "quant", "task", "metric", "bits_per_weight", "dir")
SORT_KEYS = (f"a column ({', '.join(COLUMNS)}), an override such as quant.bits, or a run.json "
             "field such as metrics.kl_mean")


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


def sorted_rows(rows: List[Dict[str, Any]], key: str, descending: bool) -> List[Dict[str, Any]]:
    """Rows ordered by ``key`` (numbers as numbers, before text); rows without the key come last
    either way, in the order they had (a failed run has no metric: it is not the best one)."""
    def order(value: Any) -> tuple:
        return (0, value, "") if is_number(value) else (1, 0, str(value))

    values = [(value_of(r, key), r) for r in rows]
    present = sorted((p for p in values if p[0] is not None), key=lambda p: order(p[0]),
                     reverse=descending)
    return [r for _, r in present] + [r for value, r in values if value is None]


def arg_parser() -> argparse.ArgumentParser:
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
    data = p.add_mutually_exclusive_group()
    data.add_argument("--json", action="store_true",
                      help="print the rows as a JSON list of objects (every metric and override)")
    data.add_argument("--csv", action="store_true",
                      help="print the rows as CSV (every metric and override)")
    return p


def print_table(rows: List[Dict[str, Any]], where: Sequence[str], root_shown: str) -> None:
    """The table for people: :data:`COLUMNS`, then the count of rows by status."""
    if not rows:
        print(f"no runs under {root_shown}" + (" matching " + " and ".join(where) if where else ""))
        return
    cells = [[r[c] if r[c] not in (None, "") else "-" for c in COLUMNS] for r in rows]
    for c in cells:
        bpw = c[COLUMNS.index("bits_per_weight")]
        c[COLUMNS.index("bits_per_weight")] = f"{bpw:.3f}" if isinstance(bpw, float) else bpw
    print(table(COLUMNS, cells))
    counts: Dict[str, int] = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    print(f"\n{len(rows)} runs: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))


def main(argv: Sequence[str]) -> int:
    """``mlxhydra runs [DIR] [--where K=V]... [--sort KEY] [--last N] [--json|--csv]``; the exit
    status."""
    p = arg_parser()
    args = p.parse_args(list(argv))
    for condition in args.where:
        if "=" not in condition or condition.startswith(("=", "!=")):
            p.error(f"--where {condition!r}: expected KEY=VALUE or KEY!=VALUE")
    problem = usage_problem(args)
    if problem:
        sys.stderr.write(f"mlxhydra runs: {problem}\n")
        return 2
    try:
        root = find_root(args.dir)
    except RunDirError as e:
        sys.stderr.write(f"mlxhydra: runs {e}\n")
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
    rows = sorted_rows(rows, key, descending=args.sort.startswith("-") != args.reverse)
    if args.json or args.csv:
        sys.stdout.write(to_json(rows) + "\n" if args.json else to_csv(rows))
    else:
        print_table(rows, args.where, shown(root))
    return 0
