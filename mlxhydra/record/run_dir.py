"""The run directory: where each file of a job lives, and how each is read back as data.

A run directory holds ``run.json`` (:mod:`mlxhydra.record.schema`),
``model_config.json`` (the dict handed to ``ModelArgs.from_dict``),
``metrics.json`` (the task's metrics), Hydra's ``.hydra/`` (config.yaml,
hydra.yaml, overrides.yaml) and the log. A sweep directory holds one job
directory per job (``<num>_<overrides>``), ``multirun.yaml`` and the summary.

Everything read back is data: YAML is never resolved (``${oc.env:...}``
stays text) and nothing is instantiated.
"""

import os
import re
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from ..errors import FileSystemError, RunDirError, RunDirTaken
from ..file_checks import directory_problem, exists, first_non_directory, regular_file_problem
from .atomic import read_json, write_json_atomic
from .latest import find_run
from .schema import RunRecord, read_record

_JOB_DIR = re.compile(r"^(\d+)(?:_|$)")


def read_yaml(path: Path) -> Any:
    """A YAML file as plain data, unresolved; None when the file does not exist.

    Raises:
        RunDirError: naming the file, when it is not readable YAML.
    """
    from omegaconf import OmegaConf

    problem = regular_file_problem(path)
    if problem == "does not exist":
        return None
    if problem:  # a FIFO or a device is never opened
        raise RunDirError(f"{path} {problem} (expected a YAML file)")
    try:
        return OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    except Exception as e:  # yaml's and OmegaConf's many errors
        raise RunDirError(f"{path}: unreadable YAML ({' '.join(str(e).split())})") from e


class RunDir:
    """The files of one job's run directory."""

    RECORD = "run.json"
    MODEL_CONFIG = "model_config.json"
    METRICS = "metrics.json"
    HYDRA = ".hydra"
    # Step metrics of a task that reports as it goes (task=lora: mlx-lm's training reports),
    # one JSON object per line with its "iteration".
    STEP_LOG = "train_log.jsonl"

    def __init__(self, path: Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    @property
    def record(self) -> Path:
        return self.path / self.RECORD

    @property
    def model_config(self) -> Path:
        return self.path / self.MODEL_CONFIG

    @property
    def metrics(self) -> Path:
        return self.path / self.METRICS

    @property
    def step_log(self) -> Path:
        return self.path / self.STEP_LOG

    @property
    def config(self) -> Path:
        """Hydra's composed config (``.hydra/config.yaml``)."""
        return self.path / self.HYDRA / "config.yaml"

    @property
    def overrides(self) -> Path:
        """The task overrides as typed (``.hydra/overrides.yaml``)."""
        return self.path / self.HYDRA / "overrides.yaml"

    @property
    def hydra(self) -> Path:
        """Hydra's own settings of the job (``.hydra/hydra.yaml``)."""
        return self.path / self.HYDRA / "hydra.yaml"

    def read_record(self) -> RunRecord:
        return read_record(self.record)

    def read_model_config(self) -> Optional[Dict[str, Any]]:
        return self._json_object(self.model_config)

    def read_metrics(self) -> Optional[Dict[str, Any]]:
        return self._json_object(self.metrics)

    def read_config(self) -> Dict[str, Any]:
        """The composed config as plain, unresolved data ({} when absent)."""
        return self._yaml_object(self.config) or {}

    def read_hydra(self) -> Dict[str, Any]:
        """The ``hydra`` node of hydra.yaml as plain, unresolved data ({} when absent)."""
        return (self._yaml_object(self.hydra) or {}).get("hydra") or {}

    def read_overrides(self) -> List[str]:
        """The task overrides as typed ([] when absent)."""
        value = read_yaml(self.overrides)
        if value is None:
            return []
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise RunDirError(f"{self.overrides}: expected a list of override strings")
        return value

    def write_model_config(self, config: Dict[str, Any]) -> None:
        write_json_atomic(self.model_config, config)

    def write_metrics(self, metrics: Dict[str, Any]) -> None:
        write_json_atomic(self.metrics, metrics)

    def _json_object(self, path: Path) -> Optional[Dict[str, Any]]:
        problem = regular_file_problem(path)
        if problem == "does not exist":
            return None
        if problem:
            raise RunDirError(f"{path} {problem} (expected a JSON file)")
        try:
            value = read_json(path)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, RecursionError) as e:
            raise RunDirError(f"{path}: unreadable ({e})") from e
        if not isinstance(value, dict):
            raise RunDirError(f"{path}: expected a JSON object, found {type(value).__name__}")
        return value

    @staticmethod
    def _yaml_object(path: Path) -> Optional[Dict[str, Any]]:
        value = read_yaml(path)
        if value is not None and not isinstance(value, dict):
            raise RunDirError(f"{path}: expected a mapping, found {type(value).__name__}")
        return value


class SweepDir:
    """A multirun's directory: its job directories, plan and summary files."""

    PLAN = "multirun.yaml"
    TRACKING = "tracking.json"  # the trackers' sweep-level runs (the MLflow parent run...)

    def __init__(self, path: Path):
        self.path = Path(path)

    @property
    def plan(self) -> Path:
        return self.path / self.PLAN

    @property
    def tracking(self) -> Path:
        return self.path / self.TRACKING

    def summary_file(self, suffix: str) -> Path:
        """``summary.<suffix>`` at the sweep root."""
        return self.path / f"summary.{suffix}"

    def job_dirs(self) -> Dict[int, RunDir]:
        """Sub-directories named ``<num>_...`` (Hydra's sweep subdir), by job number.

        Where two directories share a number, the one holding run.json wins.
        """
        found: Dict[int, RunDir] = {}
        for p in sorted(self.path.iterdir()):
            m = _JOB_DIR.match(p.name)
            if not (m and directory_problem(p) is None):
                continue
            num = int(m.group(1))
            if num not in found or exists(p / RunDir.RECORD):
                found[num] = RunDir(p)
        return found


def require_run_dir(path: str, command: str, needs: Tuple[str, ...] = ()) -> RunDir:
    """``path`` (a path, ``latest`` or a unique prefix of a run's name) as a RunDir of an existing job.

    Args:
        needs: Files the subcommand reads besides ``.hydra/overrides.yaml``
            (``run.json``, ``.hydra/config.yaml``...), relative to the run directory.

    Raises:
        RunDirError: one line naming the subcommand and the path.
    """

    try:
        run_dir = RunDir(find_run(path))
    except RunDirError as e:
        raise RunDirError(f"{command} {e}") from None
    problem = directory_problem(run_dir.path)
    if problem:
        raise RunDirError(f"{command} {path}: {run_dir.path} {problem}" if problem != "does not exist"
                          else f"{command} {path}: no such directory")
    if regular_file_problem(run_dir.overrides):
        jobs = SweepDir(run_dir.path).job_dirs()
        if jobs:
            first = jobs[min(jobs)].path.name
            raise RunDirError(f"{command} {path}: {run_dir.path} is a sweep; name one of its jobs "
                              f"({path}/{first})")
        raise RunDirError(f"{command} {path}: {path} is not a run directory (no .hydra/overrides.yaml)")
    for name in needs:
        problem = regular_file_problem(run_dir.path / name)
        if problem:
            raise RunDirError(f"{command} {path}: {run_dir.path / name} {problem}")
    return RunDir(run_dir.path.resolve())


def refuse_taken(path: Path, setting: str) -> None:
    """Refuse a run directory that already holds a run's record.

    Raises:
        RunDirTaken: naming the directory and how to get a fresh one.
    """
    if exists(Path(path) / RunDir.RECORD):
        raise RunDirTaken(
            f"{setting}={path} already holds another run's record ({RunDir.RECORD}); refusing "
            f"to overwrite it: leave {setting} unset for a fresh directory, or give one that "
            "does not exist yet"
        )


def refuse_taken_sweep(path: Path, setting: str = "hydra.sweep.dir") -> None:
    """Refuse a sweep directory that holds a previous sweep's plan or job records.

    Raises:
        RunDirTaken: naming the directory and how to get a fresh one.
    """
    sweep = SweepDir(Path(path))
    if directory_problem(sweep.path):
        return
    taken = exists(sweep.plan) or any(exists(d.record) for d in sweep.job_dirs().values())
    if taken:
        raise RunDirTaken(
            f"{setting}={path} already holds another sweep's records; refusing to overwrite "
            f"them: leave {setting} unset for a fresh directory, or give one that does not exist yet"
        )


def make_writable_dir(path: Path, setting: str) -> None:
    """Create ``path`` (with its parents) and check that files can be written in it.

    Raises:
        FileSystemError: one line naming the setting, the path and the reason
            (a part of it that is a file, a read-only place, a full disk, a name too long...).
    """
    path = Path(path)
    blocked = first_non_directory(path)
    if blocked is not None:
        raise FileSystemError(f"{setting}={path}: cannot be created: {blocked} is not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise FileSystemError(f"{setting}={path}: cannot be created: {e.strerror or e}") from None
    try:
        fd, probe = tempfile.mkstemp(prefix=".mlxhydra-probe.", dir=path)
        try:
            os.write(fd, b"\n" * 512)
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as e:
        raise FileSystemError(f"{setting}={path}: cannot be written: {e.strerror or e}") from None
