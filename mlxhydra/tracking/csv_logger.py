"""``logger=csv``: every job appends its params, metrics and tags to one CSV file.

The file (default ``outputs/tracking.csv``) is in long form, one value per
row: ``time, run_dir, job, status, kind (param|metric|tag), name, step,
value``. Its columns never change, so jobs of any task, sweep or launcher
append to the same file, under a lock, and pandas pivots it back
(``df.pivot_table(index="run_dir", columns="name", values="value", aggfunc="last")``).
"""

import csv
import fcntl
import io
import os
from pathlib import Path
from typing import Any, Dict

from .tracked_job import TrackedJob, step_indices
from .tracker_callback import TrackerCallback

COLUMNS = ("time", "run_dir", "job", "status", "kind", "name", "step", "value")


def job_rows(job: TrackedJob):
    """The CSV rows of one job."""
    from datetime import datetime, timezone

    when = datetime.fromtimestamp(job.ended or job.started or 0, timezone.utc).isoformat()
    base = (when, str(job.run_dir), "" if job.job_num is None else job.job_num, job.status)
    for k, v in job.params.items():
        yield (*base, "param", k, "", v)
    for k, v in job.metrics.items():
        yield (*base, "metric", k, 0, repr(v))
    for k, values in job.steps.items():
        for step, v in zip(step_indices(job, k), values):
            yield (*base, "metric", k, step, repr(v))
    for k, v in job.tags.items():
        yield (*base, "tag", k, "", v)


class CsvLogger(TrackerCallback):
    """Hydra callback of ``logger=csv`` (settings: ``logger.csv``)."""

    name = "csv"

    def log_job(self, settings: Dict[str, Any], job: TrackedJob) -> Dict[str, Any]:
        path = Path(settings["path"])  # the shipped default filled in (logger_settings)
        if not path.is_absolute():  # relative to where the command ran (hydra.job.chdir aside)
            path = Path(job.cwd or os.getcwd()) / path
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerows(job_rows(job))
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8", newline="") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)  # released when closed
            if f.tell() == 0:
                f.write(",".join(COLUMNS) + "\n")
            f.write(buf.getvalue())
            f.flush()
            os.fsync(f.fileno())
        return {"path": str(path)}
