"""One job: validate → prepare the model → run the task, recorded in the run directory.

:func:`prepare` is the loading half (usable without a run directory, as the
tests and the Python API use it); :func:`run_job` is the whole job as the
command runs it: it writes ``run.json`` (running → completed, failed or
interrupted), ``model_config.json`` and ``metrics.json``.
"""

import logging
import random
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Union

from omegaconf import DictConfig, OmegaConf

from ..config.composition import to_plain
from ..distributed import ranks
from ..errors import (
    FileSystemError,
    Interrupted,
    MlxhydraError,
    RecordWriteError,
    describe_os_error,
    interruption_message,
    one_line_message,
)
from ..record import environment
from ..record.run_dir import RunDir, refuse_taken
from ..record.schema import RecordWriter
from . import rank_ends
from .model_checks import require_architecture, record_weight_files
from .thread import interruption_handlers, run_in_job_thread, signals_held
from .validation import Settings, validate

log = logging.getLogger("mlxhydra")


def seed_everything(seed: int) -> None:
    """Seed Python's random, numpy and mlx."""
    import mlx.core as mx
    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    mx.random.seed(seed)


def prepare(cfg: DictConfig, settings: Optional[Settings] = None,
            run_dir: Optional[RunDir] = None, record: Optional[RecordWriter] = None,
            on_checked: Optional[Callable[[], None]] = None):
    """Validate the config and build the model it describes.

    Args:
        cfg: The composed config.
        settings: The result of :func:`validate` when already called.
        run_dir, record: Where ``model_config.json`` and the record's model,
            weight-file and quantization fields go (nothing is written without them).
        on_checked: Called once every setting is checked, before any weight file is read.

    Returns:
        (model, report): the loaded model and its
        :class:`~mlxhydra.load.loader.LoadReport` (``report.model_config`` is
        the config the model was built from, with its quantization entry).

    Raises:
        ConfigError: every bad setting, before any weight is read.
        WeightsError: weight files that cannot be read or do not fit.
    """
    import mlx.core as mx

    from ..load import weights_cache
    from ..load.loader import build_model
    from ..load.weight_files import require_unchanged

    settings = settings or validate(cfg)
    mx.reset_peak_memory()
    seed_everything(settings.seed)
    model_dir = Path(settings.model_dir)
    config = to_plain(cfg.model)
    hub = to_plain(cfg.get("model_hub"))
    if record is not None and hub:
        record.update(hub={"model": hub})
    if run_dir is not None:
        run_dir.write_model_config(config)
    t = time.perf_counter()
    checked = require_architecture(settings, config, run_dir)
    if on_checked is not None:
        on_checked()
    checks = time.perf_counter() - t
    t = time.perf_counter()
    before, fingerprint = record_weight_files(settings, record, checked.entry)
    fingerprinting = time.perf_counter() - t
    method_run = None
    if settings.quant is not None and settings.quant.method != "rtn":
        from ..load.learned_quant import prepare_method

        method_run = prepare_method(settings.quant, model_dir, config, settings.task,
                                    run_dir.path if run_dir is not None else None)
    model, config, report = build_model(
        model_dir, config, settings.loading, task=settings.task.get("name"),
        classes=checked.classes, weights_key=weights_cache.job_key(settings.sweep, fingerprint),
        method_run=method_run,
    )
    # The recorded fingerprint must be of the bytes that were read.
    require_unchanged(before)
    report.file_identities = before
    report.times = {"checks": checks, "fingerprint": fingerprinting, **report.times}
    if record is not None and report.adapter is not None:
        record.update(adapter=report.adapter)
    quantization = report.quantization
    log.info(
        "loaded %s from %s: %s parameters, %s quantized / %s float layers, %.3f bits per weight%s",
        config.get("model_type"), model_dir, f"{quantization['parameters']:,}",
        quantization["quantized_layers"], quantization["float_layers"],
        quantization["bits_per_weight"] or 0.0,
        ", dequantized compute" if quantization["compute"] == "dequantized" else "",
    )
    return model, report


def _hydra_fields(hc: Any) -> Dict[str, Any]:
    from omegaconf import OmegaConf

    return {
        "command": environment.command_line(),
        # resolve=False: the overrides as typed (``${oc.env:X}`` stays text, never a value).
        "overrides": OmegaConf.to_container(hc.overrides.task, resolve=False),
        "job_num": hc.job.get("num"),
        "cwd": hc.runtime.cwd,
        # resolve=False: a choice is text as typed (an escaped "\${...}" must stay text)
        "choices": OmegaConf.to_container(hc.runtime.choices, resolve=False),
        "log_file": str(Path(hc.runtime.output_dir) / f"{hc.job.name}.log"),
    }


def run_job(cfg: DictConfig, compose_seconds: Optional[float] = None) -> Dict[str, Any]:
    """Run one job inside Hydra's run directory, recording every stage.

    The job runs on the job thread (:mod:`mlxhydra.job.thread`) while
    this thread answers signals; only this thread writes the final status.

    Args:
        cfg: The composed config.
        compose_seconds: How long Hydra took to compose it (recorded as ``times.compose``).

    Returns:
        The task's metrics.

    Raises:
        MlxhydraError: bad input or a file that cannot be read or written, after
            the failure is recorded (its message says when run.json could not be).
        Interrupted, KeyboardInterrupt: after the interruption is recorded.
    """
    from hydra.core.hydra_config import HydraConfig

    if not ranks.world().leads:  # another rank of a distributed run: the same job, nothing written
        return rank_ends.follow(lambda: run_in_job_thread(lambda: _prepare_and_run(cfg, None, None, {})))
    hc = HydraConfig.get()
    run_dir = RunDir(Path(hc.runtime.output_dir))
    refuse_taken(run_dir.path, "hydra.run.dir" if hc.job.get("num") is None else "hydra.sweep.subdir")
    times: Dict[str, float] = {}
    if compose_seconds is not None:  # the first job of the command: timed from its start
        startup = environment.startup_seconds(compose_seconds)
        if startup is not None:
            times["startup"] = startup
        times["compose"] = compose_seconds
    fields: Dict[str, Any] = {}
    record: Optional[RecordWriter] = None

    def open_record() -> RecordWriter:
        return RecordWriter(run_dir.record, run_dir=str(run_dir.path), times=times, **fields)

    with interruption_handlers():
        try:
            t = time.perf_counter()
            fields.update(
                **_hydra_fields(hc),
                model_dir=_recordable(cfg, "model_dir", str),
                seed=_recordable(cfg, "seed", (int, str, float, bool)),
                versions=environment.versions(),
                platform=environment.platform_info(),
                git=environment.git_state(Path(hc.runtime.cwd)),
                **ranks.record_entry(OmegaConf.select(cfg, "load.shard", default=None,
                                                      throw_on_resolution_failure=False)),
            )
            times["environment"] = time.perf_counter() - t
            with signals_held():  # a signal now is answered once the record exists
                record = open_record()
            checked = threading.Event()  # another rank's end stops the wait only after the checks
            metrics = rank_ends.lead(lambda: run_in_job_thread(
                lambda: _prepare_and_run(cfg, run_dir, record, times, checked.set),
                stop=rank_ends.stopped_elsewhere(checked)))
        except (KeyboardInterrupt, Interrupted) as e:
            message = interruption_message(e)
            again: List[int] = []  # signals during the write: this interruption goes on
            with signals_held(again):
                unrecorded = _finish(record or open_record, "interrupted", error=message)
            if unrecorded:
                log.error("%s; %s", message, unrecorded)
            if again:
                e.interrupted_again = True  # Ctrl-C twice: a sweep's summary skips its figure
            raise
        except BaseException as e:
            error = _user_error(e)
            message = one_line_message(error)
            with signals_held():
                unrecorded = _finish(record or open_record, "failed", error=message,
                                     error_type=type(error).__name__)
            if unrecorded:  # the message says that run.json could not be updated
                message = (f"{message} (it may still say running)" if isinstance(error, RecordWriteError)
                           else f"{message}; {unrecorded}")
            log.error("run failed: %s", message)
            if unrecorded:
                raise FileSystemError(message) from e
            if error is not e:
                raise error from e
            raise
        times["record"] = record.write_seconds  # run.json's writes before its final one
        with signals_held():
            unrecorded = _finish(record, "completed", metrics=metrics)
    if unrecorded:
        raise FileSystemError(f"the run completed, but {unrecorded}")
    return metrics


def _recordable(cfg: DictConfig, key: str, types: Any) -> Any:
    """A top-level value for the record when it resolves to one of ``types`` (validate names it otherwise)."""
    try:
        value = to_plain(cfg.get(key))
    except MlxhydraError:
        return None
    return value if isinstance(value, types) else None


def _user_error(error: BaseException) -> BaseException:
    """An OSError from the job as one line naming the path (mlxhydra's own errors unchanged)."""
    if isinstance(error, OSError) and not isinstance(error, MlxhydraError):
        return FileSystemError.from_os_error(describe_os_error(error), error)
    return error


def _finish(record: Union[RecordWriter, Callable[[], RecordWriter]], status: str, **fields: Any) -> str:
    """Write the final status; '' when written, else what the message must say about run.json.

    Args:
        record: The job's record, or what opens it when the job stopped before it existed.
    """
    try:
        if not isinstance(record, RecordWriter):
            record = record()
        record.finish(status, **fields, **environment.resources())
    except RecordWriteError as e:
        return f"{e} (it may still say running)"
    return ""


def _prepare_and_run(cfg: DictConfig, run_dir: Optional[RunDir], record: Optional[RecordWriter],
                     times: Dict[str, float],
                     on_checked: Optional[Callable[[], None]] = None) -> Dict[str, Any]:
    """Validate, load and run the task; without a run directory and record
    (another rank than 0 of a distributed run) nothing is written.

    ``on_checked`` is called once every setting is checked, before any weight is read."""
    from ..load.weight_files import require_unchanged
    from ..tasks import TaskInput, run_task

    t = time.perf_counter()
    settings = validate(cfg)
    times["validate"] = time.perf_counter() - t
    model, report = prepare(cfg, settings, run_dir, record, on_checked)
    times.update(report.times)
    if record is not None:
        if report.weights_cache:
            record.update(weights_cache=report.weights_cache)  # multirun: hit or miss
        record.update(
            times=times,
            quantization=report.quantization,
            parameters=report.quantization["parameters"],
            ignored_keys=report.ignored_keys,
            weight_mismatches=report.weight_mismatches,
        )
    t = time.perf_counter()
    job = TaskInput(
        task=settings.task, seed=settings.seed, load=settings.load, model=model,
        model_config=report.model_config, model_dir=Path(settings.model_dir),
        run_dir=run_dir.path if run_dir is not None else Path.cwd(),
        record=dict(record.data) if record is not None else {},
    )
    try:
        metrics = run_task(job)
    finally:
        if job.hub and record is not None:  # Hugging Face ids the task resolved (draft model, reference)
            record.update(hub={**record.data.get("hub", {}), **job.hub})
    times["task"] = time.perf_counter() - t
    if settings.load.get("lazy"):  # lazy weights are read by the task
        require_unchanged(report.file_identities)
    per_rank = ranks.gather_ranks(report.sharding)
    if run_dir is not None and record is not None:
        run_dir.write_metrics(metrics)
        if per_rank is not None:
            record.update(**ranks.record_entry(settings.load.get("shard"), per_rank))
    return metrics
