"""The sweep policy: what a failed job does to a multirun, its objective, and its summary.

- :func:`run_swept_job` is what the command's task function does: a single
  run raises on failure; in a multirun a failed job (already recorded as
  failed in its run.json) lets the sweep go on, unless ``sweep.fail_fast=true``
  (then :class:`~mlxhydra.errors.SweepStopped` ends the sweep). With
  ``sweep.objective`` set it returns the float objective (for sweepers such
  as hydra-optuna-sweeper).
- :class:`SweepSummary` (configured under ``hydra.callbacks.summary``) writes
  ``summary.csv``/``.md``/``.png`` at the sweep root when a multirun ends and
  raises :class:`~mlxhydra.errors.SweepFailed` when jobs failed, so the
  command exits 1.
- A sweep stopped early (fail_fast, an interruption) gets its summary from
  the job that stopped it.
"""

import logging
import math
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Callable, ContextManager, Dict, Iterator, List, Optional

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from ..errors import Interrupted, SweepFailed, SweepStopped
from ..job.thread import signals_held
from ..record.atomic import write_bytes_atomic
from ..record.latest import mark_latest
from ..record.run_dir import RunDir, SweepDir
from ..record.schema import read_record, write_record

log = logging.getLogger("mlxhydra")

PENALTY = 1e9


def _sweep_settings(cfg: DictConfig) -> Dict[str, Any]:
    node = cfg.get("sweep") if isinstance(cfg, DictConfig) else None
    return dict(node) if node else {}


def summarize(sweep_dir: Path, objective: Optional[str] = None,
              tables_held: Callable[[], ContextManager] = nullcontext) -> Optional[Dict[str, Any]]:
    """Write the sweep's summary; log where it is (never raises for a bad job).

    Args:
        tables_held: See :func:`~mlxhydra.sweeps.summary.write_summary`.
    """
    from .summary import write_summary

    try:
        result = write_summary(Path(sweep_dir), objective, tables_held=tables_held)
    except Exception as e:  # a summary must never hide the sweep's own outcome
        log.warning("sweep summary of %s not written: %s", sweep_dir, e)
        return None
    log.info("sweep summary: %s (%s)", Path(sweep_dir) / "summary.md",
             ", ".join(f"{n} {s}" for s, n in sorted(result["statuses"].items())))
    return result


# The multirun of this process, while it runs: (sweep dir, objective, summary written?,
# the sweep dir when a second signal skipped the summary).
_active: Dict[str, Any] = {}


def _summarize_stopped(sweep_dir: Path, objective: Optional[str], again: bool = False) -> None:
    """The summary of a sweep a signal stopped: the tables always, the figure unless a second signal.

    Signals are held from here until summary.csv and summary.md are written (a
    fraction of a second); Ctrl-C twice means "stop now", so a second signal
    (``again``: one that came while the job recorded the first) skips
    summary.png (a second or more, matplotlib included; see
    :func:`skipped_summary`) and the first signal goes on ending the command.
    """
    _active["summarized"] = True
    held: List[int] = []
    hold = signals_held(held)
    hold.__enter__()  # before the summary's imports: a second signal must wait for the tables
    released = False

    @contextmanager
    def tables_then_figure() -> Iterator[None]:
        nonlocal released
        try:
            yield
        finally:
            released = True
            hold.__exit__(None, None, None)
        if again or held:
            raise KeyboardInterrupt  # skips the figure; caught below

    try:
        summarize(sweep_dir, objective, tables_held=tables_then_figure)
    except (KeyboardInterrupt, Interrupted):
        _active["skipped"] = Path(sweep_dir)
    finally:
        if not released:
            hold.__exit__(None, None, None)


def skipped_summary() -> Optional[Path]:
    """The sweep directory whose summary.png a second signal skipped, or None."""
    return _active.get("skipped")


def summarize_interrupted_sweep() -> None:
    """Write the summary of this process's multirun when a signal stopped it.

    A signal between jobs (while Hydra composes or sets up the next one) ends
    the multirun without ``on_multirun_end``; the summary still shows the jobs
    finished, interrupted and missing. Nothing happens outside a multirun or
    when the summary was written (or skipped) already.
    """
    if _active and not _active.get("summarized") and _active.get("enabled", True):
        _summarize_stopped(_active["sweep_dir"], _active.get("objective"))


def record_plan(sweep_dir: Path, config: DictConfig) -> None:
    """Write multirun.yaml (the sweep's config and overrides) when the sweeper does not.

    Hydra's basic sweeper writes it; others (Optuna) do not, and without it a
    sweep's search space and launcher are lost for ``summarize`` and ``resume``.
    """
    from omegaconf import OmegaConf


    plan = SweepDir(sweep_dir).plan
    try:
        if not plan.exists():
            plan.parent.mkdir(parents=True, exist_ok=True)
            write_bytes_atomic(plan, OmegaConf.to_yaml(config).encode())
    except OSError as e:  # the sweep runs without it
        log.warning("%s not written: %s", plan, e)


class SweepSummary(Callback):
    """Hydra callback: summary files at the end of every multirun; exit 1 when jobs failed."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.sweep_dir: Optional[Path] = None
        self.objective: Optional[str] = None
        self.result: Optional[Dict[str, Any]] = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.sweep_dir = Path(str(config.hydra.sweep.dir))
        self.objective = _sweep_settings(config).get("objective")
        _active.clear()
        _active.update(sweep_dir=self.sweep_dir, objective=self.objective, enabled=self.enabled)
        mark_latest(self.sweep_dir, "sweep", Path(str(config.hydra.runtime.cwd)))
        record_plan(self.sweep_dir, config)

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        if self.enabled and _active.get("sweep_dir") is not None:  # the process that writes the summary
            from .plots import warm_up

            warm_up()

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self.sweep_dir = Path(str(config.hydra.sweep.dir))
        _active["summarized"] = True
        if not self.enabled:
            return
        self.result = summarize(self.sweep_dir, self.objective)
        if self.result and self.result.get("failed"):
            raise SweepFailed(self.result["failed"], self.result["jobs"],
                              str(self.sweep_dir / "summary.md"))


def objective_value(cfg: DictConfig, run_dir: Path, metrics: Optional[Dict[str, Any]]) -> Optional[float]:
    """The float the sweeper minimises, or None when ``sweep.objective`` is unset.

    ``sweep.objective`` names a metric of the task (``kl_mean``) or a run.json
    field (``bits_per_weight``, ``peak_memory_bytes``). A failed job, a missing
    or non-finite value, or bits per weight over ``sweep.max_bits_per_weight``
    gives ``sweep.penalty`` (default 1e9).
    """
    sweep = _sweep_settings(cfg)
    name = sweep.get("objective")
    if not name:
        return None
    penalty = float(sweep.get("penalty") or PENALTY)
    try:
        run = dict(RunDir(run_dir).read_record())
    except Exception:  # a damaged record: the job counts as failed
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


def run_swept_job(cfg: DictConfig, compose_seconds: Optional[float] = None) -> Optional[float]:
    """Run one job (:func:`~mlxhydra.job.pipeline.run_job`) under the sweep policy; see the module doc."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from ..job.pipeline import run_job

    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    multirun = hc.mode == RunMode.MULTIRUN
    try:
        metrics = run_job(cfg, compose_seconds)
    except (KeyboardInterrupt, Interrupted) as e:
        if multirun:  # the callback's on_multirun_end will not run
            _summarize_stopped(Path(hc.sweep.dir), _sweep_settings(cfg).get("objective"),
                               again=getattr(e, "interrupted_again", False))
        raise
    except Exception as e:
        if not multirun:
            raise
        if _sweep_settings(cfg).get("fail_fast"):
            _active["summarized"] = True
            summarize(Path(hc.sweep.dir), _sweep_settings(cfg).get("objective"))
            raise SweepStopped(hc.job.get("num"), str(e) or type(e).__name__) from e
        log.error("job %s failed (recorded in %s); the sweep goes on", hc.job.get("num"),
                  run_dir / RunDir.RECORD)
        metrics = None
    value = objective_value(cfg, run_dir, metrics)
    if value is not None:
        _record_objective(run_dir, value)
    return value


def _record_objective(run_dir: Path, value: float) -> None:
    """Add the objective to the job's run.json (the summary shows it)."""
    path = RunDir(run_dir).record
    try:
        write_record(path, {**read_record(path), "objective": value})
    except Exception as e:  # the sweeper still gets the value
        log.warning("objective not recorded in %s: %s", path, e)
