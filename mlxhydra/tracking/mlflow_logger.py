"""``logger=mlflow``: one MLflow run per job, nested under a parent run per sweep.

The default store is SQLite under ``outputs/`` (``sqlite:///outputs/mlflow.db``,
artifacts in ``outputs/mlartifacts``); ``logger.mlflow.tracking_uri`` points
at a team server instead. Each job's run gets the params, metrics (per step
where the task has steps), tags and artifacts of :mod:`.tracked_job`.

Concurrency: MLflow creates (migrates) a new SQLite database on first use
and experiments by name, and neither is safe when two processes do it at
once (a joblib sweep's workers, two sweeps). Both happen under a lock file
beside the database; the parent run is created once, by the process that
launches the sweep, before any job starts, and reaches the workers inside
the pickled callback.
"""

import logging
import os
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from .tracked_job import TrackedJob, finite, sweep_artifacts, sweep_params
from .tracker_callback import TrackerCallback, file_lock

log = logging.getLogger("mlxhydra")

DEFAULT_URI = "sqlite:///outputs/mlflow.db"
DEFAULT_EXPERIMENT = "mlxhydra"
SQLITE = "sqlite:///"
# run.json status -> MLflow's run status
STATUS = {"completed": "FINISHED", "failed": "FAILED", "interrupted": "KILLED"}
# MLflow's log_batch limits per call.
BATCH = {"metrics": 1000, "params": 100, "tags": 100}
MAX_PARAM = 6000


def absolute_uri(uri: str, cwd: Optional[str] = None) -> str:
    """A relative SQLite path made absolute (workers may run elsewhere); other URIs as given."""
    if uri.startswith(SQLITE) and not uri.startswith(SQLITE + "/"):
        return SQLITE + str(Path(cwd or os.getcwd(), uri[len(SQLITE):]).resolve())
    return uri


def sqlite_file(uri: str) -> Optional[Path]:
    return Path(uri[len(SQLITE):]) if uri.startswith(SQLITE) else None


def open_store(uri: str, experiment: str) -> Tuple[Any, str]:
    """(MlflowClient, experiment id), creating the database and the experiment once.

    A SQLite store's tables and its experiment are created under a lock file
    beside the database; its artifacts go to ``mlartifacts/`` beside it.
    """
    from mlflow.tracking import MlflowClient

    db = sqlite_file(uri)
    if db is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(db.with_name(f".{db.name}.lock")) if db is not None else nullcontext():
        client = MlflowClient(tracking_uri=uri)  # creates or migrates the tables
        found = client.get_experiment_by_name(experiment)
        if found is not None:
            return client, found.experiment_id
        location = (db.parent / "mlartifacts" / experiment).as_uri() if db is not None else None
        try:
            return client, client.create_experiment(experiment, artifact_location=location)
        except Exception:  # a server's experiment created meanwhile by another client
            found = client.get_experiment_by_name(experiment)
            if found is None:
                raise
            return client, found.experiment_id


def _chunks(items: List[Any], size: int):
    for i in range(0, len(items), size):
        yield items[i:i + size]


def log_values(client: Any, run_id: str, params: Dict[str, str], metrics: Dict[str, float],
               tags: Dict[str, str], steps: Optional[Dict[str, List[float]]] = None,
               timestamp: Optional[int] = None) -> None:
    """Params, metrics (with their steps) and tags of one run, in MLflow's batch sizes."""
    from mlflow.entities import Metric, Param, RunTag

    ms = timestamp or int(time.time() * 1000)
    metric_list = [Metric(k, v, ms, 0) for k, v in metrics.items()]
    for name, values in (steps or {}).items():
        metric_list += [Metric(name, v, ms, i) for i, v in enumerate(values)]
    param_list = [Param(k, v[:MAX_PARAM]) for k, v in params.items()]
    tag_list = [RunTag(f"mlxhydra.{k}", v) for k, v in tags.items()]
    for batch in _chunks(metric_list, BATCH["metrics"]):
        client.log_batch(run_id, metrics=batch)
    for batch in _chunks(param_list, BATCH["params"]):
        client.log_batch(run_id, params=batch)
    for batch in _chunks(tag_list, BATCH["tags"]):
        client.log_batch(run_id, tags=batch)


def upload(client: Any, run_id: str, paths: List[Path]) -> None:
    for p in paths:
        if p.is_dir():
            client.log_artifacts(run_id, str(p), artifact_path=p.name)
        else:
            client.log_artifact(run_id, str(p))


class MlflowLogger(TrackerCallback):
    """Hydra callback of ``logger=mlflow`` (settings: ``logger.mlflow``)."""

    name = "mlflow"

    @staticmethod
    def _store(settings: Dict[str, Any], cwd: Optional[str] = None) -> Tuple[Any, str, str]:
        uri = absolute_uri(settings.get("tracking_uri") or DEFAULT_URI, cwd)
        client, experiment_id = open_store(uri, settings.get("experiment") or DEFAULT_EXPERIMENT)
        return client, experiment_id, uri

    def start_sweep(self, settings: Dict[str, Any], sweep_dir: Path, hydra: Dict[str, Any],
                    previous: Optional[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
        client, experiment_id, uri = self._store(settings)
        if previous and previous.get("tracking_uri") == uri and previous.get("run_id"):
            client.update_run(previous["run_id"], status="RUNNING")  # a resumed sweep
            log.info("mlflow: sweep resumed in parent run %s", previous["run_id"])
            return previous
        run = client.create_run(experiment_id, run_name=sweep_dir.name,
                                tags={"mlxhydra.sweep_dir": str(sweep_dir.resolve()),
                                      "mlxhydra.kind": "sweep"})
        log_values(client, run.info.run_id, sweep_params(hydra), {}, {})
        log.info("mlflow: sweep parent run %s in %s", run.info.run_id, uri)
        return {"tracking_uri": uri, "experiment_id": experiment_id, "run_id": run.info.run_id}

    def log_job(self, settings: Dict[str, Any], job: TrackedJob) -> Dict[str, Any]:
        client, experiment_id, uri = self._store(settings, job.cwd)
        parent = (self.sweep_state or {}).get("run_id")
        tags = {"mlxhydra.kind": "job"}
        if job.tags.get("git_commit", "null") != "null":  # shown by MLflow's UI
            tags["mlflow.source.git.commit"] = job.tags["git_commit"]
        if parent:
            tags["mlflow.parentRunId"] = parent
            self._supersede(client, experiment_id, parent, job)
        start = int((job.started or time.time()) * 1000)
        run = client.create_run(experiment_id, start_time=start, run_name=job.name, tags=tags)
        run_id = run.info.run_id
        try:
            log_values(client, run_id, job.params, job.metrics, job.tags, job.steps,
                       int((job.ended or time.time()) * 1000))
            if settings.get("artifacts", True):
                upload(client, run_id, job.artifacts)
        finally:  # a half-logged run still ends, marked as its job
            client.set_terminated(run_id, STATUS.get(job.status, "FAILED"),
                                  end_time=int((job.ended or time.time()) * 1000))
        return {"tracking_uri": uri, "experiment_id": experiment_id, "run_id": run_id}

    @staticmethod
    def _supersede(client: Any, experiment_id: str, parent: str, job: TrackedJob) -> None:
        """Delete (MLflow's soft delete) an earlier attempt of this job in a resumed sweep."""
        if job.job_num is None:
            return
        earlier = client.search_runs(
            [experiment_id],
            filter_string=f"tags.mlflow.parentRunId = '{parent}' and tags.mlxhydra.job_num = '{job.job_num}'",
        )
        for run in earlier:
            client.delete_run(run.info.run_id)

    def end_sweep(self, settings: Dict[str, Any], sweep_dir: Path, summary: Dict[str, Any]) -> None:
        state = self.sweep_state or {}
        if not state.get("run_id"):
            return
        client, _, _ = self._store(settings)
        statuses = summary["statuses"]
        metrics = {"jobs": float(summary["jobs"]),
                   **{f"jobs_{s}": float(n) for s, n in statuses.items()}}
        log_values(client, state["run_id"], {}, {k: v for k, v in metrics.items() if finite(v) is not None},
                   {"status": "completed" if statuses.get("completed") == summary["jobs"] else "failed"})
        if settings.get("artifacts", True):
            upload(client, state["run_id"], sweep_artifacts(sweep_dir))
        done = statuses.get("completed", 0) == summary["jobs"]
        client.set_terminated(state["run_id"], "FINISHED" if done else "FAILED")
