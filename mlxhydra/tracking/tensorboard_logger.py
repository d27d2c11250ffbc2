"""``logger=tensorboard``: each job's metrics as TensorBoard scalars and its config as text.

Event files go to ``<run dir>/tensorboard/`` (``tensorboard --logdir outputs``
shows every run and sweep job); they are written with tensorboardX, which
needs neither TensorFlow nor PyTorch.
"""

from pathlib import Path
from typing import Any, Dict

from .tracked_job import TrackedJob, step_indices
from .tracker_callback import TrackerCallback

SUBDIR = "tensorboard"


class TensorBoardLogger(TrackerCallback):
    """Hydra callback of ``logger=tensorboard`` (settings: ``logger.tensorboard``)."""

    name = "tensorboard"

    def log_job(self, settings: Dict[str, Any], job: TrackedJob) -> Dict[str, Any]:
        from tensorboardX import SummaryWriter

        log_dir = job.run_dir / SUBDIR
        if settings.get("log_dir"):  # one folder for all runs: a sweep's jobs under the sweep's name
            name = f"{job.run_dir.parent.name}/{job.name}" if job.job_num is not None else job.name
            log_dir = Path(job.cwd or ".") / settings["log_dir"] / name
        wall = job.ended or job.started
        writer = SummaryWriter(str(log_dir))
        try:
            for name, value in job.metrics.items():
                writer.add_scalar(name, value, 0, walltime=wall)
            for name, values in job.steps.items():
                for step, value in zip(step_indices(job, name), values):
                    writer.add_scalar(name, value, step, walltime=wall)
            # Markdown: four spaces keep the YAML as written.
            writer.add_text("config", "\n".join("    " + line for line in job.config_text.splitlines()),
                            0, walltime=wall)
            writer.add_text("params", "\n".join(f"    {k}: {v}" for k, v in job.params.items()),
                            0, walltime=wall)
            writer.add_text("status", job.status, 0, walltime=wall)
        finally:
            writer.close()
        return {"log_dir": str(log_dir)}
