"""The Hydra callback every tracker is: when and where it logs, and why a tracker never fails a run.

A tracker is configured by the ``logger`` group (``logger=[mlflow,csv]``):
each option adds its settings under ``logger.<name>`` and its callback under
``hydra.callbacks.<name>``. The callback logs

- each job when it ends (:meth:`TrackerCallback.log_job`, in the job's own
  process: a joblib or SLURM worker included), from the files the job wrote;
- a sweep when it starts and ends (:meth:`start_sweep`, :meth:`end_sweep`,
  in the process that launches the jobs). What a sweep's start returns (the
  MLflow parent run...) is kept in the sweep's ``tracking.json``, so that a
  resumed sweep logs into the same place.

Any error of a tracker (a server down, a full disk) is a warning and a line
in the job's ``run.json`` (``tracking.<name>.error``); the job's own outcome
and exit status do not change. Hydra calls ``on_multirun_end`` in reverse
order of ``hydra.callbacks``, so trackers run before ``SweepSummary``: they
write the summary themselves when it is not current, then upload it.
"""

import fcntl
import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, Optional

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from ..config.loggers import completed_logger_settings
from ..record.atomic import read_json, write_json_atomic
from ..record.run_dir import RunDir, SweepDir
from ..record.schema import read_record, write_record
from ..sweeps.policy import summarize
from ..sweeps.summary import collect
from .tracked_job import TrackedJob, read_tracked_job

log = logging.getLogger("mlxhydra")


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if needed) across processes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def logger_settings(config: DictConfig, name: str) -> Dict[str, Any]:
    """The resolved ``logger.<name>`` node of a composed config, its missing keys as shipped."""
    node = OmegaConf.select(config, f"logger.{name}")
    given = OmegaConf.to_container(node, resolve=True) if node is not None else {}
    return completed_logger_settings(name, given if isinstance(given, dict) else {})


def record_tracking(run_dir: Path, name: str, info: Dict[str, Any]) -> None:
    """Add ``tracking.<name>`` to a job's run.json (a warning when it cannot be written)."""
    path = RunDir(run_dir).record
    try:
        record = dict(read_record(path, missing_ok=False))
        write_record(path, {**record, "tracking": {**(record.get("tracking") or {}), name: info}})
    except Exception as e:  # the job's record must never be lost to a tracker's line
        log.warning("%s: not recorded in %s: %s", name, path, e)


def summary_is_current(sweep_dir: Path) -> bool:
    """True when summary.csv is newer than every job's run.json."""
    sweep = SweepDir(sweep_dir)
    summary = sweep.summary_file("csv")
    if not summary.is_file():
        return False
    newest = max((d.record.stat().st_mtime for d in sweep.job_dirs().values() if d.record.is_file()),
                 default=0.0)
    return summary.stat().st_mtime >= newest


class TrackerCallback(Callback):
    """Base of the trackers; subclasses set ``name`` and implement the ``log_*`` methods."""

    name = "tracker"

    def __init__(self) -> None:
        # Set by on_multirun_start; pickled with the callback into launcher workers.
        self.sweep_state: Optional[Dict[str, Any]] = None

    # What subclasses implement ------------------------------------------------

    def start_sweep(self, settings: Dict[str, Any], sweep_dir: Path, hydra: Dict[str, Any],
                    previous: Optional[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
        """Open the sweep's own entry.

        Args:
            hydra: the sweep's ``hydra`` node, plain and unresolved.
            previous: what this tracker's start returned for a sweep now resumed.
        """
        return None

    def log_job(self, settings: Dict[str, Any], job: TrackedJob) -> Dict[str, Any]:
        """Log one finished job; return what run.json records (where it was logged)."""
        raise NotImplementedError

    def end_sweep(self, settings: Dict[str, Any], sweep_dir: Path, summary: Dict[str, Any]) -> None:
        """Close the sweep's entry with its summary."""

    def redact(self, settings: Dict[str, Any], text: str) -> str:
        """``text`` (an error's) without the secrets ``settings`` hold (a password in a URI)."""
        return text

    def _problem(self, settings: Dict[str, Any], error: Exception) -> str:
        """An error as the one line the log and run.json show."""
        return self.redact(settings, " ".join(f"{type(error).__name__}: {error}".split()))[:500]

    # Hydra's hooks --------------------------------------------------------------

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweep = SweepDir(Path(str(config.hydra.sweep.dir)))
        settings: Dict[str, Any] = {}
        try:
            settings = logger_settings(config, self.name)
            saved = read_json(sweep.tracking) if sweep.tracking.is_file() else {}
            hydra = OmegaConf.to_container(config.hydra, resolve=False)
            state = self.start_sweep(settings, sweep.path, hydra, saved.get(self.name))
            if state is not None:
                sweep.path.mkdir(parents=True, exist_ok=True)
                with file_lock(sweep.path / ".tracking.lock"):
                    saved = read_json(sweep.tracking) if sweep.tracking.is_file() else {}
                    write_json_atomic(sweep.tracking, {**saved, self.name: state})
            self.sweep_state = state
        except Exception as e:
            log.warning("%s: the sweep is not tracked: %s", self.name, self._problem(settings, e))

    def _log_and_record(self, settings: Dict[str, Any], run_dir: Path) -> None:
        try:
            info = self.log_job(settings, read_tracked_job(run_dir))
        except Exception as e:
            message = self._problem(settings, e)
            log.warning("%s: job not logged: %s", self.name, message)
            info = {"error": message}
        record_tracking(run_dir, self.name, info)

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        run_dir = Path(str(config.hydra.runtime.output_dir))
        if RunDir(run_dir).record.is_file():
            self._log_and_record(logger_settings(config, self.name), run_dir)

    def log_untracked_jobs(self, settings: Dict[str, Any], sweep_dir: Path) -> None:
        """Log the sweep's finished jobs that this tracker has not logged yet.

        A job whose process was killed after its record was complete (or that
        ran before the tracker was added, in a resumed sweep) is logged here.
        """
        for job in SweepDir(sweep_dir).job_dirs().values():
            try:
                record = read_record(job.record)
            except Exception:  # a damaged record is the summary's to report
                continue
            if record.get("status") in ("completed", "failed") and self.name not in (record.get("tracking") or {}):
                self._log_and_record(settings, job.path)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        settings: Dict[str, Any] = {}
        try:
            settings = logger_settings(config, self.name)
            self.log_untracked_jobs(settings, sweep_dir)
            if not summary_is_current(sweep_dir):
                summarize(sweep_dir, OmegaConf.select(config, "sweep.objective"))
            rows, _ = collect(sweep_dir)
            statuses: Dict[str, int] = {}
            for r in rows:
                statuses[r["status"]] = statuses.get(r["status"], 0) + 1
            self.end_sweep(settings, sweep_dir, {"jobs": len(rows), "statuses": statuses})
        except Exception as e:
            log.warning("%s: the sweep's end is not tracked: %s", self.name, self._problem(settings, e))
