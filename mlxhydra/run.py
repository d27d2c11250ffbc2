"""One job: compose → plain dict → load → task, recorded in the run directory."""

import logging
import random
import shlex
import signal
import sys
import time
from pathlib import Path
from typing import Any, Dict, Optional

from omegaconf import DictConfig, OmegaConf

from . import records
from .compose import changed_keys, removed_keys, to_plain
from .errors import ConfigError, Interrupted, MlxhydraError, interruption_message, raise_interrupted
from .model_source import read_config_json

log = logging.getLogger("mlxhydra")

# Set by the command-line entry point, for the compose time of the first job.
STARTED_AT: Optional[float] = None


def seed_everything(seed: int) -> None:
    import mlx.core as mx
    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    mx.random.seed(seed)


def _hydra_fields(hc: Any) -> Dict[str, Any]:
    return {
        "command": shlex.join(getattr(sys, "orig_argv", sys.argv)),
        # resolve=False: the overrides as typed (``${oc.env:X}`` stays text, never a value).
        "overrides": OmegaConf.to_container(hc.overrides.task, resolve=False),
        "job_num": hc.job.get("num"),
        "cwd": hc.runtime.cwd,
        "choices": dict(hc.runtime.choices),
        "log_file": str(Path(hc.runtime.output_dir) / f"{hc.job.name}.log"),
    }


def run(cfg: DictConfig) -> Dict[str, Any]:
    """Run one job inside Hydra's run directory.

    Writes ``model_config.json``, ``run.json`` (status running → completed,
    failed or interrupted) and the task's ``metrics.json``.

    Returns:
        The task's metrics.

    Raises:
        MlxhydraError: bad input, after the failure is recorded.
        Interrupted, KeyboardInterrupt: after the interruption is recorded.
    """
    from hydra.core.hydra_config import HydraConfig

    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    times: Dict[str, float] = {}
    if STARTED_AT is not None and hc.job.get("num") in (None, 0):
        times["compose"] = time.perf_counter() - STARTED_AT
    record = records.RunRecord(
        run_dir,
        run_dir=str(run_dir),
        **_hydra_fields(hc),
        model_dir=cfg.get("model_dir"),
        seed=cfg.get("seed"),
        versions=records.versions(),
        platform=records.platform_info(),
        git=records.git_state(Path(hc.runtime.cwd)),
        times=times,
    )
    previous_handler = signal.signal(signal.SIGTERM, raise_interrupted)
    try:
        metrics = _run(cfg, run_dir, record, times)
    except (KeyboardInterrupt, Interrupted) as e:
        record.finish("interrupted", error=interruption_message(e),
                      **_resources())
        raise
    except BaseException as e:
        record.finish("failed", error=str(e) or type(e).__name__, error_type=type(e).__name__,
                      **_resources())
        log.error("run failed: %s", e)
        raise
    finally:
        signal.signal(signal.SIGTERM, previous_handler)
    record.finish("completed", metrics=metrics, **_resources())
    return metrics


def _resources() -> Dict[str, Any]:
    peak = None
    try:
        import mlx.core as mx

        peak = mx.get_peak_memory()
    except Exception:
        pass
    return {"peak_memory_bytes": peak, "max_rss_bytes": records.max_rss_bytes()}


LOAD_FLAGS = ("strict", "lazy", "trust_remote_code")
FINGERPRINTS = ("fast", "full")


def check_options(seed: Any, load: Dict[str, Any]) -> None:
    """Check the seed and the load flags before anything runs.

    ``bool("no")`` is True: a flag given as a string (``load.trust_remote_code=no``)
    must be refused, not taken as true.

    Raises:
        ConfigError: naming each bad value and what was expected.
    """
    problems = []
    if type(seed) is not int:
        problems.append(f"seed={seed!r}: expected an integer")
    for key in LOAD_FLAGS:
        if key in load and not isinstance(load[key], bool):
            problems.append(f"load.{key}={load[key]!r}: expected true or false")
    if load.get("fingerprint", "fast") not in FINGERPRINTS:
        problems.append(
            f"load.fingerprint={load.get('fingerprint')!r}: expected one of {', '.join(FINGERPRINTS)}"
        )
    if problems:
        raise ConfigError(problems)


def _run(cfg: DictConfig, run_dir: Path, record: records.RunRecord, times: Dict[str, float]):
    from . import arch, cache
    from .loading import apply_mlx_lm_adjustments, build_model
    from .quant import parse_quant
    from .tasks import run_task
    from .weights import combined_fingerprint, describe_files, weight_files

    import mlx.core as mx

    mx.reset_peak_memory()
    load = to_plain(cfg.load)
    check_options(cfg.get("seed"), load)
    seed_everything(int(cfg.seed))
    spec = parse_quant(to_plain(cfg.quant))  # bad settings fail before any weight is read
    model_dir = Path(cfg.model_dir)
    config = to_plain(cfg.model)
    records.write_json_atomic(run_dir / "model_config.json", config)
    raw = read_config_json(model_dir)
    user_keys = changed_keys(config, raw)

    model_cls, args_cls = arch.get_classes(
        config, model_dir, trust_remote_code=bool(load.get("trust_remote_code")),
        model_class=load.get("model_class"), args_class=load.get("args_class"),
    )
    arch.check_types(config, args_cls, user_keys)
    ignored = [k for k in arch.ignored_keys(config, args_cls) if k in user_keys]
    if ignored:
        log.warning(
            "%s.ModelArgs ignores these model keys (not passed to the model): %s",
            args_cls.__module__, ", ".join(ignored),
        )
    derived = apply_mlx_lm_adjustments(model_dir, config, raw)
    if derived:  # model_config.json is the dict ModelArgs.from_dict receives
        records.write_json_atomic(run_dir / "model_config.json", config)
    files = describe_files(weight_files(model_dir), load.get("fingerprint", "fast"))
    record.update(
        model={
            "model_type": config.get("model_type"),
            "architecture": f"{model_cls.__module__}.{model_cls.__name__}",
            "changed_keys": user_keys,
            "removed_keys": removed_keys(config, raw),
            "ignored_user_keys": ignored,
            "derived_keys": derived,
        },
        weight_files=files,
        weights_fingerprint=combined_fingerprint(files),
    )

    model, config, report = build_model(
        model_dir, config, quant=spec,
        strict=bool(load.get("strict", True)), lazy=bool(load.get("lazy", False)),
        trust_remote_code=bool(load.get("trust_remote_code")), dtype=load.get("dtype"),
        classes=(model_cls, args_cls),
        weights_key=cache.job_key(cfg, record.data.get("weights_fingerprint")),
    )
    if report.get("weights_cache"):
        record.update(weights_cache=report["weights_cache"])  # multirun: hit or miss
    times.update(report["times"])
    quantization = report["quantization"]
    record.update(
        times=times,
        quantization=quantization,
        parameters=quantization["parameters"],
        ignored_keys=report["ignored_keys"],
        weight_mismatches=report["weight_mismatches"],
    )
    log.info(
        "loaded %s from %s: %s parameters, %s quantized / %s float layers, %.3f bits per weight",
        config.get("model_type"), model_dir, f"{quantization['parameters']:,}",
        quantization["quantized_layers"], quantization["float_layers"],
        quantization["bits_per_weight"] or 0.0,
    )
    t = time.perf_counter()
    metrics = run_task(cfg, model, config, model_dir, run_dir)
    times["task"] = time.perf_counter() - t
    records.write_json_atomic(run_dir / "metrics.json", metrics)
    return metrics


__all__ = ["run", "seed_everything", "ConfigError", "MlxhydraError"]
