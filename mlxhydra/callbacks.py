"""Sweep policy: the Hydra callback that writes the summary, and each job's outcome.

- :class:`SweepSummary` (configured under ``hydra.callbacks.summary``) writes
  ``summary.csv``/``.md``/``.png`` at the sweep root when a multirun ends.
- :func:`run_job` is what the ``@hydra.main`` task function does: a single run
  raises on failure as before; in a multirun a failed job (already recorded
  as failed in its run.json) lets the sweep go on, unless
  ``sweep.fail_fast=true`` (then :class:`SweepStopped` ends the sweep).
  With ``sweep.objective`` set it returns the float objective (for sweepers
  such as hydra-optuna-sweeper).
- :func:`exit_status` says, after a multirun, whether the command fails.
"""

import json
import logging
import math
from pathlib import Path
from typing import Any, Dict, Optional

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger("mlxhydra")

# What the last multirun in this process left: its directory and summary result.
STATE: Dict[str, Any] = {}
PENALTY = 1e9


class SweepStopped(BaseException):
    """``sweep.fail_fast=true`` and a job failed.

    A BaseException so that Hydra's launchers (which catch Exception per job)
    do not run the remaining jobs.
    """

    def __init__(self, job: Any, error: str):
        super().__init__(job, error)
        self.job, self.error = job, error

    def __str__(self) -> str:
        return f"job {self.job} failed and sweep.fail_fast=true: {self.error}"


def _sweep_cfg(cfg: DictConfig) -> Dict[str, Any]:
    node = cfg.get("sweep") if isinstance(cfg, DictConfig) else None
    return dict(node) if node else {}


def summarize(sweep_dir: Path, objective: Optional[str] = None) -> Optional[Dict[str, Any]]:
    """Write the sweep's summary; log where it is (never raises for a bad job)."""
    from .sweep import write_summary

    try:
        result = write_summary(Path(sweep_dir), objective)
    except Exception as e:
        log.warning("sweep summary of %s not written: %s", sweep_dir, e)
        return None
    log.info("sweep summary: %s (%s)", Path(sweep_dir) / "summary.md",
             ", ".join(f"{n} {s}" for s, n in sorted(result["statuses"].items())))
    return result


class SweepSummary(Callback):
    """Hydra callback: summary files at the end of every multirun."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        STATE.clear()
        STATE["sweep_dir"] = str(config.hydra.sweep.dir)
        STATE["objective"] = _sweep_cfg(config).get("objective")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = str(config.hydra.sweep.dir)
        STATE["sweep_dir"] = sweep_dir
        STATE["result"] = summarize(Path(sweep_dir), STATE.get("objective")) if self.enabled else None


def objective_value(cfg: DictConfig, run_dir: Path, metrics: Optional[Dict[str, Any]]) -> Optional[float]:
    """The float the sweeper minimises, or None when ``sweep.objective`` is unset.

    ``sweep.objective`` names a metric of the task (``kl_mean``) or a run.json
    field (``bits_per_weight``, ``peak_memory_bytes``). A failed job, a missing
    or non-finite value, or bits per weight over ``sweep.max_bits_per_weight``
    gives ``sweep.penalty`` (default 1e9).
    """
    sweep = _sweep_cfg(cfg)
    name = sweep.get("objective")
    if not name:
        return None
    penalty = float(sweep.get("penalty") or PENALTY)
    try:
        run = json.loads((Path(run_dir) / "run.json").read_text())
    except (OSError, ValueError):
        run = {}
    bpw = (run.get("quantization") or {}).get("bits_per_weight")
    budget = sweep.get("max_bits_per_weight")
    if metrics is None or run.get("status") != "completed":
        log.warning("objective %s: job failed, returning the penalty %g", name, penalty)
        return penalty
    if budget is not None and (bpw is None or bpw > float(budget)):
        log.info("objective %s: %.3f bits per weight is over the budget %s, penalty %g",
                 name, bpw or float("nan"), budget, penalty)
        return penalty
    fields = {"bits_per_weight": bpw, **run, **metrics}
    try:
        value = float(fields.get(name))
    except (TypeError, ValueError):
        value = float("nan")
    if not math.isfinite(value):
        log.warning("objective %s: no finite value in the job's metrics, penalty %g", name, penalty)
        return penalty
    return value


def run_job(cfg: DictConfig) -> Optional[float]:
    """Run one job (``mlxhydra.run.run``) under the sweep policy; see the module doc."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from . import run as run_module

    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    try:
        metrics = run_module.run(cfg)
    except Exception as e:
        if hc.mode != RunMode.MULTIRUN:
            raise
        if _sweep_cfg(cfg).get("fail_fast"):
            raise SweepStopped(hc.job.get("num"), str(e) or type(e).__name__) from e
        log.error("job %s failed (recorded in %s); the sweep goes on", hc.job.get("num"),
                  run_dir / "run.json")
        metrics = None
    value = objective_value(cfg, run_dir, metrics)
    if value is not None:
        _record_objective(run_dir, value)
    return value


def _record_objective(run_dir: Path, value: float) -> None:
    """Add the objective to the job's run.json (the summary shows it)."""
    from .records import RUN_RECORD, read_json, write_json_atomic

    path = run_dir / RUN_RECORD
    try:
        write_json_atomic(path, {**read_json(path), "objective": value})
    except (OSError, ValueError) as e:
        log.warning("objective not recorded in %s: %s", path, e)


def exit_status() -> int:
    """1 when the last multirun had failed jobs (message on stderr), else 0."""
    import sys

    result = STATE.get("result")
    if not result or not result.get("failed"):
        return 0
    sys.stderr.write(
        f"mlxhydra: {result['failed']} of {result['jobs']} jobs failed "
        f"(see {Path(STATE['sweep_dir']) / 'summary.md'})\n"
    )
    return 1
