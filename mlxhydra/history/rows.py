"""The runs as rows of data: one per single run or sweep job, read from its records.

Each row has the table's columns (:data:`FIXED`: time, status, model, quant,
task, headline metric, bits per weight, directory...), the start and end
times and the duration, then one ``metrics.<name>`` column per numeric metric
(nested metrics dotted) and one ``overrides.<key>`` column per task override.
``mlxhydra runs --json`` and ``--csv`` print them; :func:`runs` returns them,
so that ``pandas.DataFrame(mlxhydra.runs())`` is the table.

A run directory is data from anyone: its files are read as JSON, override
texts are parsed with Hydra's grammar (never resolved), and a damaged
``run.json`` is a row with status ``unreadable`` and the problem as its error.
"""

import csv
import io
import json
import os
from datetime import datetime
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

from ..config.overrides import ParsedOverride, parse_overrides
from ..errors import RunDirError
from ..record.latest import OUTPUTS, all_run_dirs, find_run, shown
from ..record.run_dir import RunDir
from ..record.schema import MAIN_METRIC, flatten

# The columns every row has, in their order; the metric and override columns follow, each sorted.
FIXED = ("time", "status", "model", "quant", "task", "metric", "bits_per_weight", "dir",
         "run_dir", "job_num", "started", "ended", "duration_s", "error")
METRICS = "metrics."
OVERRIDES = "overrides."


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


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def headline(record: Dict[str, Any]) -> Optional[tuple]:
    """(name, value) of the task's headline metric, or None."""
    task = (record.get("choices") or {}).get("task")
    name = MAIN_METRIC.get(task)
    value = (record.get("metrics") or {}).get(name) if name else None
    return (name, value) if is_number(value) else None


def model_label(record: Dict[str, Any]) -> str:
    choice = (record.get("choices") or {}).get("model") or record.get("model_dir") or ""
    return Path(str(choice)).name if "/" in str(choice) else str(choice)


def duration(started: Any, ended: Any) -> Optional[float]:
    """Seconds from ``started`` to ``ended`` (ISO 8601), or None when either is missing or odd."""
    try:
        seconds = (datetime.fromisoformat(ended) - datetime.fromisoformat(started)).total_seconds()
    except (TypeError, ValueError):  # not a string, not a time, or one with and one without offset
        return None
    return round(seconds, 3)


def metric_columns(metrics: Any) -> Dict[str, Any]:
    """``{"metrics.<dotted name>": number}`` of every numeric metric (lists left out)."""
    if not isinstance(metrics, dict):
        return {}
    return {METRICS + k: v for k, v in flatten(metrics, lists=False).items() if is_number(v)}


def override_columns(overrides: Sequence[ParsedOverride]) -> Dict[str, Any]:
    """``{"overrides.<key>": value}``: a number, boolean, null or string as Hydra's grammar reads
    it (a quoted string unquoted); a list, dict, sweep or unparsable value as typed."""
    columns = {}
    for o in overrides:
        scalar = o.value is None or isinstance(o.value, (str, int, float))  # bool is an int
        plain = o.parsed and not o.is_sweep and scalar
        columns[OVERRIDES + o.key] = o.value if plain else o.value_text
    return columns


def metrics_of(run_dir: RunDir, record: Dict[str, Any]) -> Any:
    """The record's metrics; metrics.json's when the record has none (its job was killed after
    the task, or run.json is damaged); None when neither can be read."""
    if record.get("metrics") is not None:
        return record["metrics"]
    try:
        return run_dir.read_metrics()
    except RunDirError:  # the row shows what the record says; a damaged metrics.json adds nothing
        return None


def row_of(run_dir: RunDir) -> Dict[str, Any]:
    """One row: the :data:`FIXED` columns, then its own metric and override columns
    (``_record`` and ``_overrides``, the overrides as typed, are kept for ``--where``)."""
    try:
        record = dict(run_dir.read_record())
    except RunDirError as e:
        record = {"status": "unreadable", "error": str(e)}
    overrides = parse_overrides(record.get("overrides") or [])
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
        "run_dir": os.path.abspath(run_dir.path),
        "job_num": record.get("job_num"),
        "started": record.get("started"),
        "ended": record.get("ended"),
        "duration_s": duration(record.get("started"), record.get("ended")),
        "error": record.get("error"),
        **metric_columns(metrics_of(run_dir, record)),
        **override_columns(overrides),
        "_record": record,
        "_overrides": {o.key: o.value_text for o in overrides},
    }


def collect_rows(root: Path) -> List[Dict[str, Any]]:
    """Rows of every run.json under ``root`` (single runs and sweep jobs), oldest first."""
    rows = [row_of(RunDir(d)) for d in all_run_dirs(root)]
    rows.sort(key=lambda r: (r["time"], r["dir"]))
    return rows


def columns_of(rows: Sequence[Dict[str, Any]]) -> List[str]:
    """:data:`FIXED`, then the metric columns sorted, then the override columns sorted."""
    found = {k for r in rows for k in r if k.startswith((METRICS, OVERRIDES))}
    return [*FIXED, *sorted(k for k in found if k.startswith(METRICS)),
            *sorted(k for k in found if k.startswith(OVERRIDES))]


def data_rows(rows: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """The rows as plain dicts, each with every column (None where a run has no value)."""
    columns = columns_of(rows)
    return [{c: r.get(c) for c in columns} for r in rows]


def to_json(rows: Sequence[Dict[str, Any]]) -> str:
    """A JSON list of objects, numbers as numbers (NaN as the records write it)."""
    return json.dumps(data_rows(rows), indent=2, ensure_ascii=False, allow_nan=True, default=str)


def csv_cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool):  # as JSON and Hydra write them
        return "true" if value else "false"
    return value


def to_csv(rows: Sequence[Dict[str, Any]]) -> str:
    """A header (every column, even with no rows), then one line per row; empty cells for
    missing values."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    columns = columns_of(rows)
    writer.writerow(columns)
    for r in rows:
        writer.writerow([csv_cell(r.get(c)) for c in columns])
    return buf.getvalue()


def find_root(name: Union[str, Path]) -> Path:
    """The directory to list: ``outputs``, a path, ``latest`` or a unique prefix of a run's name.

    Raises:
        RunDirError: no such directory (or several match the prefix), one line.
    """
    root = Path(name) if str(name) == OUTPUTS else find_run(str(name))
    if not root.is_dir():
        raise RunDirError(f"{name}: no such directory")
    return root


def runs(outputs: Union[str, Path] = OUTPUTS) -> List[Dict[str, Any]]:
    """Every single run and sweep job under ``outputs``, oldest first, as ``mlxhydra runs --json``
    gives them: one dict per run, every dict with every column, numbers as numbers.

    ``pandas.DataFrame(mlxhydra.runs())`` is the table. ``outputs`` may also be ``latest`` or a
    unique prefix of a run's or sweep's name (as for ``mlxhydra runs DIR``).

    Raises:
        RunDirError: ``outputs`` is not a directory.
    """
    return data_rows(collect_rows(find_root(outputs)))
