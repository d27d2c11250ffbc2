"""Hydra callback: every run gets a fresh, writable directory, checked before Hydra writes in it.

Hydra creates the run (or sweep) directory and writes ``.hydra/`` into it
before the job starts; when ``outputs/`` is a file, the place is read-only or
``hydra.run.dir`` names another run's directory, that would end in a Python
traceback or overwrite the other run's records. :class:`FreshRunDirs` runs
first (``on_run_start`` / ``on_multirun_start``, configured under
``hydra.callbacks.fresh_run_dirs``) and raises one clear error instead:

- a directory that already holds a run's ``run.json`` (or a sweep's plan and
  job records) is refused, never overwritten;
- the directory is created and a file written in it, so a path through a
  file, a read-only place, a full disk or a name too long is named at once.
"""

from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from ..errors import ConfigError, MlxhydraError, RefusedBeforeRun
from .run_dir import make_writable_dir, refuse_taken, refuse_taken_sweep

# The sweepers of `mlxhydra resume` (hydra_plugins/mlxhydra_resume).
RESUMING_SWEEPERS = (".ResumeSweeper", ".ResumeSearchSweeper")


def _directory(config: DictConfig, key: str) -> Path:
    """The resolved ``hydra.<key>`` as an absolute path (one line when it cannot be resolved)."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        value = OmegaConf.select(config, f"hydra.{key}", throw_on_missing=True)
    except OmegaConfBaseException as e:
        message = " ".join(str(e).split("\n")[0].split())
        raise ConfigError(f"hydra.{key}: {message}") from None
    if not isinstance(value, str):
        raise ConfigError(f"hydra.{key}={value!r}: expected a directory path")
    return Path(value).absolute()


class FreshRunDirs(Callback):
    """Refuse a run or sweep directory holding another run's records; create and probe it.

    Raises:
        RefusedBeforeRun: carrying the one-line error (Hydra would only warn
            about a callback's ordinary exception and go on).
    """

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            path = _directory(config, "run.dir")
            refuse_taken(path, "hydra.run.dir")
            make_writable_dir(path, "hydra.run.dir")
        except MlxhydraError as e:
            raise RefusedBeforeRun(e) from e

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            path = _directory(config, "sweep.dir")
            # `mlxhydra resume` goes on in its own sweep's directory (sweeps/resume.py), on purpose.
            sweeper = str(OmegaConf.select(config, "hydra.sweeper._target_", default="") or "")
            if not sweeper.endswith(RESUMING_SWEEPERS):
                refuse_taken_sweep(path)
            make_writable_dir(path, "hydra.sweep.dir")
        except MlxhydraError as e:
            raise RefusedBeforeRun(e) from e
