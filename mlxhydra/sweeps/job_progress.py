"""A sweep's progress: one line per finished job, ``[k/N] OVERRIDES completed in 41 s · elapsed
3 min 05 s · ETA 6 min 10 s``.

A Hydra callback (``hydra.callbacks.progress`` in conf/config.yaml). Hydra calls
``on_job_start`` and ``on_job_end`` where the job runs: in this process (the
basic launcher) or in a worker process (joblib, SLURM, Ray). The callback reaches
a worker pickled with what ``on_multirun_start`` recorded in this process (when
the sweep started, its size, the jobs already finished), and counts finished
jobs in the run.json files of the sweep directory, which every worker shares.

- k: the jobs of the whole sweep finished (completed or failed) when this one
  ended, this one included; N: the jobs of the whole sweep
  (:func:`~mlxhydra.sweeps.plan.sweep_size`; an Optuna search: ``n_trials``).
- A resumed sweep (``mlxhydra resume``): the jobs that earlier runs finished
  count in k and N, so the lines go on where the sweep stopped; the elapsed
  time and the pace behind the ETA are this command's own.
- The ETA is the pace so far (elapsed time per job finished by this command,
  parallel workers included) times the jobs left; none after the last job.
"""

import logging
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from ..progress import duration, eta
from ..record.run_dir import RunDir, SweepDir
from ..record.schema import read_record
from .plan import sweep_size

log = logging.getLogger("mlxhydra")

FINISHED = ("completed", "failed")
VERBS = {"completed": "completed in", "failed": "failed after"}


def _epoch(iso: Any) -> Optional[float]:
    try:
        return datetime.fromisoformat(str(iso)).timestamp()
    except ValueError:
        return None


# run.json path -> ((mtime_ns, size), when its job ended or None): a record is parsed again only
# when it changed, so a job's line reads only the records written since the last line of this
# process (a worker process runs many jobs; a run.json with per-layer entries can be large).
_ended_cache: Dict[str, Tuple[Tuple[int, int], Optional[float]]] = {}


def _ended(record: Path) -> Optional[float]:
    """When the job of ``record`` finished (seconds since the epoch), None when it has not."""
    try:
        info = record.stat()
    except OSError:
        return None
    key = (info.st_mtime_ns, info.st_size)
    cached = _ended_cache.get(str(record))
    if cached is not None and cached[0] == key:
        return cached[1]
    try:
        run = read_record(record)
    except Exception:  # an unreadable record is not a finished job
        return None
    ended = _epoch(run.get("ended")) if run.get("status") in FINISHED else None
    _ended_cache[str(record)] = (key, ended)
    return ended


def finished_times(sweep_dir: Path) -> List[float]:
    """When each finished job of the sweep directory ended (seconds since the epoch)."""
    if not sweep_dir.is_dir():
        return []
    times = [_ended(job.record) for job in SweepDir(sweep_dir).job_dirs().values()]
    return [t for t in times if t is not None]


def shown_overrides(overrides: Any, excluded: Any = ()) -> str:
    """A job's overrides as Hydra's launch line shows them, without Hydra's own and the keys
    its job folder name leaves out (``excluded``: trackers, the composition error that
    mlxhydra's sweeper adds, whose reason is logged and recorded)."""
    left_out = set(excluded or ())
    kept = [str(o) for o in overrides or [] if not str(o).startswith("hydra.")
            and str(o).lstrip("+~").split("=")[0] not in left_out]
    return " ".join(kept) or "(no overrides)"


class SweepProgress(Callback):
    """Hydra callback: a progress line as each job of a multirun ends (nothing in a single run)."""

    # Wall-clock time, comparable between processes (the jobs' run.json end times are).
    clock: Callable[[], float] = staticmethod(time.time)

    def __init__(self) -> None:
        self.sweep_dir: Optional[Path] = None
        self.started: Optional[float] = None  # time.time() at the multirun's start
        self.finished_before = 0
        self.total: Optional[int] = None
        self.job_started: Optional[float] = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.started = self.clock()
        self.sweep_dir = Path(str(config.hydra.sweep.dir)).absolute()
        self.finished_before = len(finished_times(self.sweep_dir))
        try:
            overrides = OmegaConf.to_container(config.hydra.overrides.task, resolve=False)
            hydra: Dict[str, Any] = {"overrides": {"task": overrides},
                                     "sweeper": OmegaConf.to_container(config.hydra.sweeper, resolve=False)}
            self.total = sweep_size(hydra, self.finished_before)
        except Exception as e:  # lines without N
            log.debug("the sweep's size is not known: %s", e)

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.job_started = self.clock()

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        if self.started is None or self.sweep_dir is None:  # a single run
            return
        try:
            line = self.line(config)
        except Exception as e:  # progress is never a job's failure
            log.debug("no progress line: %s", e)
            return
        log.info("%s", line)

    def line(self, config: DictConfig) -> str:
        """This job's progress line (see the module doc)."""
        now = self.clock()
        run: Dict[str, Any] = dict(RunDir(Path(str(config.hydra.runtime.output_dir))).read_record())
        status = run.get("status")
        ended = _epoch(run.get("ended")) if status in FINISHED else None
        done = sum(1 for t in finished_times(self.sweep_dir) if t <= (ended or now))
        took = now - (self.job_started or now)
        elapsed = now - (self.started or now)
        left = None
        if self.total is not None:
            left = eta(elapsed, done - self.finished_before, self.total - self.finished_before)
        count = f"{done}/{self.total}" if self.total is not None else str(done)
        verb = VERBS.get(str(status), f"{status or 'ended'} after")
        overrides = shown_overrides(
            OmegaConf.to_container(config.hydra.overrides.task, resolve=False),
            OmegaConf.select(config, "hydra.job.config.override_dirname.exclude_keys", default=()))
        return (f"[{count}] {overrides} {verb} {duration(took)} · elapsed {duration(elapsed)}"
                + (f" · ETA {duration(left)}" if left is not None else ""))
