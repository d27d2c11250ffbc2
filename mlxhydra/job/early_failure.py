"""Failures before the job: a record even when Hydra fails while composing.

Hydra composes the config before any run directory exists, so a bad
``model=`` path, bad JSON, an override of a key that does not exist or bad
override syntax would otherwise leave no ``run.json`` at all. The command
catches such failures (see :mod:`mlxhydra.cli`) and :func:`record_early_failure`
writes the record Hydra would have had: ``run.json`` with status ``failed``
(or ``interrupted``) and ``stage: compose``, the message Hydra printed, the
command, the overrides and the versions, in the run directory the run would
have used.
"""

import os
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

from ..config.model_source import resolve_model_dir
from ..config.overrides import override_value, overrides_of_argv, wants_single_job
from ..config.resolvers import register_resolvers
from ..errors import Interrupted, describe_os_error, interruption_message, one_line_message
from ..file_checks import exists
from ..record import environment
from ..record.run_dir import RunDir
from ..record.schema import write_record

FALLBACK_RUN_DIR = "outputs/runs/${now:%Y-%m-%d}/${now:%H-%M-%S}_${mlxhydra_token:}"
STAGE = "compose"


def _resolve(pattern: str) -> str:
    from hydra.core.utils import setup_globals
    from omegaconf import OmegaConf


    setup_globals()  # Hydra's ${now:...}
    register_resolvers()
    return str(OmegaConf.to_container(OmegaConf.create({"dir": pattern}), resolve=True)["dir"])


def _default_run_dir_pattern() -> str:
    from omegaconf import OmegaConf

    config = Path(__file__).resolve().parents[1] / "conf" / "config.yaml"
    try:
        return str(OmegaConf.load(config).hydra.run.dir)
    except Exception:  # a damaged install: the built-in pattern still records the failure
        return FALLBACK_RUN_DIR


def early_run_dir(overrides: List[str], cwd: Optional[str] = None) -> Path:
    """The run directory the job would have had.

    A ``hydra.run.dir=`` on the command line is respected; one that cannot be
    resolved without the composed config (``${model_dir}``...) falls back to
    the default pattern of ``config.yaml``.
    """
    cwd = cwd or os.getcwd()
    patterns = [override_value(overrides, "hydra.run.dir"), _default_run_dir_pattern(),
                FALLBACK_RUN_DIR]
    for pattern in patterns:
        if not pattern:
            continue
        try:
            path = Path(_resolve(pattern))
        except Exception:  # an interpolation only the composed config can resolve
            continue
        return path if path.is_absolute() else Path(cwd) / path
    raise RuntimeError("no run directory pattern could be resolved")


def record_early_failure(
    error: Optional[BaseException], args: List[str], started: str
) -> Optional[Path]:
    """Write ``run.json`` for a command that failed before its job started.

    Args:
        error: What was raised (Hydra's reported exception, an
            Interrupted or a KeyboardInterrupt); None when unknown.
        args: The command-line arguments (``sys.argv[1:]``).
        started: When the command started (:func:`environment.now`).

    Returns:
        The run directory written, or None when no record applies (--help,
        --cfg, multirun) or none could be written (said on stderr).
    """
    if not wants_single_job(args):
        return None
    overrides = overrides_of_argv(args)
    data: Dict[str, Any] = {"status": "failed", "started": started, "ended": None}
    if isinstance(error, (KeyboardInterrupt, Interrupted)):
        data.update(status="interrupted", error=interruption_message(error))
    elif error is not None:
        data.update(error=one_line_message(error), error_type=type(error).__name__)
    else:
        data.update(error="failed before the job started (no message)", error_type=None)
    try:
        run_dir = RunDir(early_run_dir(overrides))
        model = override_value(overrides, "model")
        model_dir = None
        if model:
            model_dir = str(resolve_model_dir(model))
        data.update(
            stage=STAGE,
            run_dir=str(run_dir.path),
            command=environment.command_line(),
            overrides=overrides,
            job_num=None,
            cwd=os.getcwd(),
            model_dir=model_dir,
            versions=environment.versions(),
            git=environment.git_state(Path(os.getcwd())),
            ended=environment.now(),
        )
        if exists(run_dir.record):  # another run's record: never overwritten
            sys.stderr.write(f"mlxhydra: no run record written: {run_dir.record} belongs to "
                             "another run\n")
            return None
        run_dir.path.mkdir(parents=True, exist_ok=True)
        write_record(run_dir.record, data)
        return run_dir.path
    except Exception as e:  # never hide the original error behind this one
        reason = describe_os_error(e) if isinstance(e, OSError) else one_line_message(e)
        sys.stderr.write(f"mlxhydra: could not write the run record: {reason}\n")
        return None
