"""What a tracker logs for one job or one sweep, read from the run directory as data.

Every tracker logs the same things, taken from the files the job already
wrote (``run.json``, ``metrics.json``, ``.hydra/``): nothing is recomputed,
so a tracker shows exactly what the record says.
"""

import json
import math
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Dict, List, Optional

from ..config.overrides import override_texts
from ..record.run_dir import RunDir, SweepDir
from ..record.schema import flatten

# The record's key settings, as params (the overrides are added to them).
_QUANT_KEYS = ("bits", "group_size", "mode")
# Tracker tag values are limited in length (MLflow: 8000 characters).
MAX_TAG = 4000


@dataclass
class TrackedJob:
    """One job as trackers see it.

    Attributes:
        params: the key settings and the job's overrides, as text.
        metrics: every finite number of the task's metrics (flattened, dotted)
            and of the record (bits per weight, parameters, memory, stage times).
        steps: metrics that have steps (a list in the task's metrics, such as
            bench's ``trials``, or the run directory's step log): name -> values in step order.
        step_numbers: name -> the step of each value, where it is not its position
            (the step log's iterations).
        tags: status, git commit, weights fingerprint, run directory, error.
        artifacts: files and folders to upload (run.json, model_config.json,
            metrics.json, .hydra/).
    """

    run_dir: Path
    name: str  # the run directory's name
    cwd: Optional[str]  # where the command ran (relative tracker paths start there)
    status: str
    job_num: Optional[int]
    started: Optional[float]  # seconds since the epoch
    ended: Optional[float]
    params: Dict[str, str] = field(default_factory=dict)
    metrics: Dict[str, float] = field(default_factory=dict)
    steps: Dict[str, List[float]] = field(default_factory=dict)
    step_numbers: Dict[str, List[int]] = field(default_factory=dict)
    tags: Dict[str, str] = field(default_factory=dict)
    artifacts: List[Path] = field(default_factory=list)
    config_text: str = ""


def finite(value: Any) -> Optional[float]:
    """A finite float, or None (bools, text and NaN are not metrics)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def epoch_seconds(iso: Any) -> Optional[float]:
    """An ISO 8601 time of run.json as seconds since the epoch (None when absent or bad)."""
    try:
        return datetime.fromisoformat(str(iso)).timestamp() if iso else None
    except ValueError:
        return None


def _text(value: Any) -> str:
    return "null" if value is None else str(value)


def key_settings(record: Dict[str, Any], config: Dict[str, Any]) -> Dict[str, str]:
    """Model, quantization, task and seed of a job, as params."""
    choices = record.get("choices") or {}
    quant = record.get("quantization") or {}
    requested = quant.get("default") or quant.get("settings") or {}
    params = {
        "model": _text(choices.get("model") or record.get("model_dir")),
        "model_dir": _text(record.get("model_dir")),
        "model_type": _text((record.get("model") or {}).get("model_type")),
        "task": _text(choices.get("task") or (config.get("task") or {}).get("name")),
        "quant": _text(choices.get("quant")),
        "quantization": _text(quant.get("source")),
        "seed": _text(record.get("seed")),
    }
    for key in _QUANT_KEYS:
        if isinstance(requested, dict) and key in requested:
            params[f"quant.{key}"] = _text(requested[key])
    if quant.get("recipe"):
        params["quant.recipe"] = str(quant["recipe"])
    return params


def job_metrics(record: Dict[str, Any], metrics: Dict[str, Any]):
    """(scalar metrics, step metrics) of a job's record and task metrics."""
    scalars: Dict[str, float] = {}
    steps: Dict[str, List[float]] = {}
    for name, value in flatten(metrics, lists=False).items():
        if finite(value) is not None:
            scalars[name] = finite(value)
    for name, value in metrics.items():
        if not isinstance(value, list) or not value:
            continue
        if all(finite(v) is not None for v in value):
            steps[name] = [finite(v) for v in value]
        elif all(isinstance(v, dict) for v in value):  # bench's trials: one dict per step
            keys = [k for k in value[0] if all(finite(v.get(k)) is not None for v in value)]
            for k in keys:
                steps[f"{name}.{k}"] = [finite(v[k]) for v in value]
    quant = record.get("quantization") or {}
    extra = {
        "bits_per_weight": quant.get("bits_per_weight"),
        "parameters": record.get("parameters"),
        "peak_memory_bytes": record.get("peak_memory_bytes"),
        "max_rss_bytes": record.get("max_rss_bytes"),
        "objective": record.get("objective"),
        **{f"seconds.{k}": v for k, v in (record.get("times") or {}).items()},
    }
    for name, value in extra.items():
        if finite(value) is not None and name not in scalars:
            scalars[name] = finite(value)
    return scalars, steps


def step_log_metrics(run_dir: RunDir):
    """(steps, step numbers) of the run directory's step log: each number of its entries, at
    the entry's ``iteration`` (empty without a log; an unreadable line ends the reading)."""
    steps: Dict[str, List[float]] = {}
    numbers: Dict[str, List[int]] = {}
    if not run_dir.step_log.is_file():
        return steps, numbers
    for line in run_dir.step_log.read_text(encoding="utf-8").splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:  # a line cut by a killed run
            break
        step = entry.get("iteration") if isinstance(entry, dict) else None
        if type(step) is not int:
            continue
        for name, value in entry.items():
            if name != "iteration" and finite(value) is not None:
                steps.setdefault(name, []).append(finite(value))
                numbers.setdefault(name, []).append(step)
    return steps, numbers


def step_indices(job: "TrackedJob", name: str) -> List[int]:
    """The step of each value of ``job.steps[name]``."""
    return job.step_numbers.get(name) or list(range(len(job.steps[name])))


def read_tracked_job(path: Path) -> TrackedJob:
    """Everything trackers log for the job in run directory ``path``.

    Raises:
        RunDirError: a damaged file of the run directory, named.
    """
    run_dir = RunDir(Path(path))
    record = dict(run_dir.read_record())
    metrics = run_dir.read_metrics()
    if metrics is None:
        metrics = record.get("metrics") or {}
    config = run_dir.read_config()
    params = key_settings(record, config)
    params.update({k: _text(v) for k, v in override_texts(record.get("overrides") or []).items()})
    scalars, steps = job_metrics(record, metrics)
    logged, step_numbers = step_log_metrics(run_dir)
    steps.update(logged)
    git = record.get("git") or {}
    tags = {
        "status": _text(record.get("status", "unknown")),
        "run_dir": str(run_dir.path),
        "weights_fingerprint": _text(record.get("weights_fingerprint")),
        "git_commit": _text(git.get("commit")),
        "git_dirty": _text(git.get("dirty")),
        "command": _text(record.get("command"))[:MAX_TAG],
    }
    if record.get("job_num") is not None:
        tags["job_num"] = str(record["job_num"])
    if record.get("error"):
        tags["error"] = str(record["error"])[:MAX_TAG]
    artifacts = [p for p in (run_dir.record, run_dir.model_config, run_dir.metrics,
                             run_dir.path / RunDir.HYDRA) if p.exists()]
    return TrackedJob(
        run_dir=run_dir.path, name=run_dir.path.name, cwd=record.get("cwd"), status=tags["status"],
        job_num=record.get("job_num"), started=epoch_seconds(record.get("started")),
        ended=epoch_seconds(record.get("ended")), params=params, metrics=scalars, steps=steps,
        step_numbers=step_numbers,
        tags=tags, artifacts=artifacts,
        config_text=run_dir.config.read_text() if run_dir.config.is_file() else "",
    )


def sweep_params(hydra: Dict[str, Any]) -> Dict[str, str]:
    """A sweep's own overrides (``quant.bits=2,4,8`` -> ``{"quant.bits": "2,4,8"}``), sweeper and launcher.

    Args:
        hydra: the sweep's ``hydra`` node as plain data (multirun.yaml's, or the config's).
    """
    task = [str(o) for o in (hydra.get("overrides") or {}).get("task") or []]
    params = {k: _text(v) for k, v in override_texts(task).items()}
    for kind in ("sweeper", "launcher"):
        target = str((hydra.get(kind) or {}).get("_target_", ""))
        params[kind] = target.rsplit(".", 1)[-1] or "null"
    return params


def sweep_artifacts(sweep_dir: Path) -> List[Path]:
    """The sweep root's files trackers upload: summary files and multirun.yaml."""
    sweep = SweepDir(Path(sweep_dir))
    files = [sweep.summary_file(s) for s in ("csv", "md", "png")] + [sweep.plan]
    return [f for f in files if f.is_file()]
