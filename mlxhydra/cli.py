"""The ``mlxhydra`` command: Hydra wired to :func:`mlxhydra.run.run`."""

import signal
import sys
import time
from typing import Optional

import hydra
from omegaconf import DictConfig

from . import records
from . import run as run_module
from ._resolvers import register_resolvers
from .callbacks import SweepStopped, exit_status, run_job, summarize
from .errors import Interrupted, raise_interrupted

# Set once the job function runs: from then on run.py keeps run.json.
_JOB_STARTED = False


@hydra.main(config_path="pkg://mlxhydra.conf", config_name="config", version_base="1.3")
def hydra_main(cfg: DictConfig) -> Optional[float]:
    global _JOB_STARTED
    _JOB_STARTED = True
    return run_job(cfg)  # the sweep policy: see mlxhydra.callbacks


def _record_if_no_job(error, args, started) -> None:
    """A failure before the job started (composition...): still write run.json."""
    if not _JOB_STARTED:
        from .startup import record_startup_failure

        record_startup_failure(error, args, started)


def _sweep_stopped(e: SweepStopped) -> None:
    """sweep.fail_fast=true and a job failed: summary, message, exit 1."""
    from .callbacks import STATE

    if STATE.get("sweep_dir"):
        summarize(STATE["sweep_dir"], STATE.get("objective"))
    sys.stderr.write(f"mlxhydra: sweep stopped: {e}\n")
    sys.exit(1)


def main() -> None:
    """Entry point of ``python -m mlxhydra`` and the ``mlxhydra`` script."""
    from .commands import is_subcommand, main_subcommand

    if is_subcommand(sys.argv[1:]):
        sys.exit(main_subcommand(sys.argv[1:]))
    run_module.STARTED_AT = time.perf_counter()
    started = records.now()
    register_resolvers()
    from .fast_help import install_for

    install_for(sys.argv[1:])  # --help: the same text; Hydra's group listings computed once
    from .startup import OverrideSyntaxError, check_override_syntax, quote_model_paths

    sys.argv[1:] = quote_model_paths(sys.argv[1:])
    args = sys.argv[1:]
    try:
        check_override_syntax(args)
    except OverrideSyntaxError as e:
        _record_if_no_job(e, args, started)
        sys.stderr.write(f"{e}\n")
        sys.exit(1)
    # SIGTERM while composing: recorded and exit 143, as during the job.
    signal.signal(signal.SIGTERM, raise_interrupted)
    try:
        hydra_main()
    except SweepStopped as e:
        _sweep_stopped(e)
    except KeyboardInterrupt as e:
        _record_if_no_job(e, args, started)
        sys.stderr.write("mlxhydra: interrupted (SIGINT)\n")
        sys.exit(130)
    except Interrupted as e:
        _record_if_no_job(e, args, started)
        sys.stderr.write(f"mlxhydra: interrupted (signal {e.signum})\n")
        sys.exit(128 + e.signum)
    except SystemExit as e:
        # Hydra reports an error, then sys.exit(1) inside its except block:
        # the reported exception is the SystemExit's context.
        if e.code not in (0, None) and isinstance(e.__context__, Exception):
            _record_if_no_job(e.__context__, args, started)
        raise
    except Exception as e:  # HYDRA_FULL_ERROR=1: Hydra re-raises with the trace
        _record_if_no_job(e, args, started)
        raise
    sys.exit(exit_status())  # a multirun with failed jobs exits 1
