"""``logger=mlflow``: one MLflow run per job, nested under a parent run per sweep.

The store and experiment are ``logger.mlflow.tracking_uri`` and
``logger.mlflow.experiment``; ``conf/logger/mlflow.yaml`` makes them MLflow's
own environment (``MLFLOW_TRACKING_URI``, ``MLFLOW_EXPERIMENT_NAME``), else the
embedded SQLite store under ``outputs/`` (artifacts in ``outputs/mlartifacts``)
and ``mlxhydra``. What a record says is the URI used, its password masked
(:func:`redacted_uri`). Each job's run gets the params, metrics (per step
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
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

from ..config.loggers import logger_problems
from ..errors import ConfigError, FileSystemError
from ..file_checks import exists, regular_file_problem
from .store_uri import absolute_uri, redacted_text, redacted_uri, sqlite_file
from .tracked_job import TrackedJob, finite, sweep_artifacts, sweep_params
from .tracker_callback import TrackerCallback, file_lock

log = logging.getLogger("mlxhydra")

# run.json status -> MLflow's run status
STATUS = {"completed": "FINISHED", "failed": "FAILED", "interrupted": "KILLED"}
# The loggers whose lines quiet_mlflow holds back (MLflow's, its database's, HTTP retries).
QUIET_LOGGERS = ("mlflow", "alembic", "sqlalchemy.engine", "urllib3.connectionpool")
# MLflow's HTTP settings for the first request to a server (see bounded_http_retries).
CHECK_HTTP = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
              "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
# MLflow's setting that stops it printing a run's link (its server URL) when the run ends.
NO_LINKS = {"MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}
# MLflow's log_batch limits per call.
BATCH = {"metrics": 1000, "params": 100, "tags": 100}
MAX_PARAM = 6000


@contextmanager
def quiet_mlflow() -> Iterator[None]:
    """MLflow's own log lines held back: its tracebacks of a failed store, its retries.

    A tracker that fails is one warning (``mlflow: job not logged: ...``) and
    ``tracking.mlflow.error`` in run.json, not pages of MLflow's logging.
    """
    import mlflow  # noqa: F401  (its import sets its loggers' levels: before ours)

    loggers = [logging.getLogger(name) for name in QUIET_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def check_sqlite_store(db: Path) -> None:
    """Raise FileSystemError when the SQLite database cannot be written.

    MLflow retries a database it cannot open 10 times over about 100 s and
    fails a write only after logging its traceback; a write in a transaction
    rolled back (milliseconds) finds a directory, a read-only file or
    directory, or a file that is not a database at once.
    """
    import sqlite3

    problem = regular_file_problem(db) if exists(db) else None
    if problem:
        raise FileSystemError(f"{db} {problem}: expected an SQLite database")
    try:
        connection = sqlite3.connect(db, timeout=30, isolation_level=None)
        try:
            connection.execute("BEGIN IMMEDIATE")
            connection.execute("CREATE TABLE mlxhydra_write_check (x)")
            connection.execute("ROLLBACK")
        finally:
            connection.close()
    except sqlite3.Error as e:
        raise FileSystemError(f"{db}: cannot be written: {e}") from e


@contextmanager
def environment_defaults(values: Dict[str, str]) -> Iterator[None]:
    """MLflow's settings ``values`` in the environment for a while, unless the user set them."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update({name: value for name, value in values.items() if saved[name] is None})
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)


def bounded_http_retries():
    """MLflow's HTTP retries bounded to a few seconds, unless the environment sets them.

    MLflow retries a request that a server never answered 7 times (about 4
    minutes); the first request to a server is its check, so a server down
    costs seconds. Once it answered, MLflow's own retries apply.
    """
    return environment_defaults(CHECK_HTTP)


def open_store(uri: str, experiment: str) -> Tuple[Any, str]:
    """(MlflowClient, experiment id), creating the database and the experiment once.

    A SQLite store's tables and its experiment are created under a lock file
    beside the database; its artifacts go to ``mlartifacts/`` beside it. A
    server's first request is its check (:func:`bounded_http_retries`).
    """
    from mlflow.tracking import MlflowClient

    db = sqlite_file(uri)
    if db is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(db.with_name(f".{db.name}.lock")) if db is not None else nullcontext():
        client = MlflowClient(tracking_uri=uri)  # creates or migrates the tables
        with bounded_http_retries() if uri.startswith(("http://", "https://")) else nullcontext():
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
               timestamp: Optional[int] = None,
               step_numbers: Optional[Dict[str, List[int]]] = None) -> None:
    """Params, metrics (with their steps: their positions unless ``step_numbers`` names them)
    and tags of one run, in MLflow's batch sizes."""
    from mlflow.entities import Metric, Param, RunTag

    ms = timestamp or int(time.time() * 1000)
    metric_list = [Metric(k, v, ms, 0) for k, v in metrics.items()]
    for name, values in (steps or {}).items():
        numbers = (step_numbers or {}).get(name) or range(len(values))
        metric_list += [Metric(name, v, ms, i) for i, v in zip(numbers, values)]
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
        """(client, experiment id, the URI as recorded)."""
        uri = absolute_uri(settings["tracking_uri"], cwd)
        client, experiment_id = open_store(uri, settings["experiment"])
        return client, experiment_id, redacted_uri(uri)

    @staticmethod
    @contextmanager
    def _checked(settings: Dict[str, Any], cwd: Optional[str] = None) -> Iterator[None]:
        """The settings and a SQLite store checked before MLflow is imported (seconds), then
        MLflow quiet. (A job that failed on its settings is still logged: MLflow would take an
        empty URI for its own default store, in the working directory.)"""
        problems = logger_problems({"mlflow": settings})
        if problems:
            raise ConfigError(problems)
        db = sqlite_file(absolute_uri(settings["tracking_uri"], cwd))
        if db is not None:
            db.parent.mkdir(parents=True, exist_ok=True)
            check_sqlite_store(db)
        # MLflow prints each server run's link on stdout: not with the credentials a URI holds.
        hidden = redacted_uri(settings["tracking_uri"]) != settings["tracking_uri"]
        with quiet_mlflow(), environment_defaults(NO_LINKS if hidden else {}):
            yield

    def redact(self, settings: Dict[str, Any], text: str) -> str:
        """The store URI's secret masked (MLflow's errors name the URL they requested)."""
        return redacted_text(text, str(settings.get("tracking_uri") or ""))

    def start_sweep(self, settings: Dict[str, Any], sweep_dir: Path, hydra: Dict[str, Any],
                    previous: Optional[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
        with self._checked(settings):
            return self._start_sweep(settings, sweep_dir, hydra, previous)

    def log_job(self, settings: Dict[str, Any], job: TrackedJob) -> Dict[str, Any]:
        with self._checked(settings, job.cwd):
            return self._log_job(settings, job)

    def end_sweep(self, settings: Dict[str, Any], sweep_dir: Path, summary: Dict[str, Any]) -> None:
        if (self.sweep_state or {}).get("run_id"):
            with self._checked(settings):
                self._end_sweep(settings, sweep_dir, summary)

    def _start_sweep(self, settings: Dict[str, Any], sweep_dir: Path, hydra: Dict[str, Any],
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
        return {"tracking_uri": uri, "experiment": settings["experiment"],
                "experiment_id": experiment_id, "run_id": run.info.run_id}

    def _log_job(self, settings: Dict[str, Any], job: TrackedJob) -> Dict[str, Any]:
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
                       int((job.ended or time.time()) * 1000), job.step_numbers)
            if settings.get("artifacts", True):
                upload(client, run_id, job.artifacts)
        finally:  # a half-logged run still ends, marked as its job
            client.set_terminated(run_id, STATUS.get(job.status, "FAILED"),
                                  end_time=int((job.ended or time.time()) * 1000))
        return {"tracking_uri": uri, "experiment": settings["experiment"],
                "experiment_id": experiment_id, "run_id": run_id}

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

    def _end_sweep(self, settings: Dict[str, Any], sweep_dir: Path, summary: Dict[str, Any]) -> None:
        state = self.sweep_state or {}
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
