"""The ``mlxhydra`` command: subcommands, or Hydra running the job pipeline.

``mlxhydra replay|diff|summarize|launch ARGS`` run a subcommand; anything else is
Hydra's command line: ``mlxhydra model=./llama quant.bits=4 [-m] ...``.
"""

import importlib
import os
import signal
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence

from omegaconf import DictConfig

# name -> "module:function"; the function takes argv (after the name) and returns the exit status.
SUBCOMMANDS: Dict[str, str] = {
    "replay": "mlxhydra.runs.replay:main",
    "diff": "mlxhydra.runs.diff:main",
    "summarize": "mlxhydra.runs.summary:summarize_main",
    "launch": "mlxhydra.runs.launch:main",
}


def run_subcommand(argv: Sequence[str]) -> int:
    """Run ``argv[0]`` (a name in :data:`SUBCOMMANDS`) with the rest; return its exit status."""
    module, _, name = SUBCOMMANDS[argv[0]].partition(":")
    func: Callable[[Sequence[str]], int] = getattr(importlib.import_module(module), name)
    return func(list(argv[1:]))


class JobFunction:
    """What ``@hydra.main`` calls for each job; knows when the command started."""

    def __init__(self, started_at: float):
        self.started_at = started_at
        self.pid = os.getpid()
        self.called = False  # from the first call on, the job keeps its own record

    def __call__(self, cfg: DictConfig) -> Optional[float]:
        from hydra.core.hydra_config import HydraConfig

        from .runs.sweep_policy import run_swept_job

        compose = None
        # The first job of this process (a launcher's worker has its own clock)
        # is timed from the command's start: Hydra composed it meanwhile.
        if not self.called and self.pid == os.getpid() and HydraConfig.get().job.get("num") in (None, 0):
            compose = time.perf_counter() - self.started_at
        self.called = True
        return run_swept_job(cfg, compose)


def run_hydra(args: List[str]) -> int:
    """Run Hydra on ``args``; return the exit status (recording failures before the job)."""
    import hydra

    from .config.help_cache import install_for
    from .config.overrides import check_override_syntax, overrides_of_argv, quote_model_paths
    from .config.resolvers import register_resolvers
    from .errors import (
        ConfigError, Interrupted, MlxhydraError, OverrideSyntaxError, SweepFailed, SweepStopped,
        exit_code, interruption_message, raise_interrupted,
    )
    from .runs import ranks
    from .runs.early_failure import record_early_failure
    from .runs.environment import now

    job = JobFunction(time.perf_counter())
    started = now()

    def record_if_no_job(error: Optional[BaseException]) -> None:
        if job.called:
            return
        if ranks.world().leads:
            record_early_failure(error, args, started)
        elif error is not None:  # another rank of a distributed run: rank 0 records its cause
            ranks.report_failure(error)

    register_resolvers()
    install_for(args)  # --help: the same text; Hydra's group listings computed once
    args = quote_model_paths(args)
    sys.argv[1:] = args
    try:
        check_override_syntax(overrides_of_argv(args))
    except OverrideSyntaxError as e:
        record_if_no_job(e)
        sys.stderr.write(f"{e}\n")
        return 1
    try:
        world = ranks.join()  # launched by mlx.launch: every rank joins here
    except MlxhydraError as e:
        sys.stderr.write(f"mlxhydra: {e}\n")
        return 1
    refusal = ranks.multirun_refusal(args)
    if refusal is not None:
        record_if_no_job(ConfigError(refusal))
        sys.stderr.write(f"mlxhydra: {refusal}\n")
        return 1
    if not world.leads:
        sys.argv[1:] = args + ranks.FOLLOWER_OVERRIDES
    # SIGTERM while composing: recorded and exit 143, as during the job.
    signal.signal(signal.SIGTERM, raise_interrupted)
    main = hydra.main(config_path="pkg://mlxhydra.conf", config_name="config", version_base="1.3")(job)
    try:
        main()
    except SweepStopped as e:
        sys.stderr.write(f"mlxhydra: sweep stopped: {e}\n")
        return 1
    except SweepFailed as e:
        sys.stderr.write(f"mlxhydra: {e}\n")
        return 1
    except (KeyboardInterrupt, Interrupted) as e:
        record_if_no_job(e)
        sys.stderr.write(f"mlxhydra: {interruption_message(e)}\n")
        return exit_code(e)
    except SystemExit as e:
        # Hydra reports an error, then sys.exit(1) inside its except block:
        # the reported exception is the SystemExit's context.
        if e.code not in (0, None) and isinstance(e.__context__, Exception):
            record_if_no_job(e.__context__)
        raise
    except Exception as e:  # HYDRA_FULL_ERROR=1: Hydra re-raises with the trace
        record_if_no_job(e)
        raise
    return 0


def main() -> None:
    """Entry point of ``python -m mlxhydra`` and the ``mlxhydra`` script."""
    from .runs.launch import exit_status_kept

    args = sys.argv[1:]
    if args and args[0] in SUBCOMMANDS:
        sys.exit(run_subcommand(args))
    with exit_status_kept():  # for `mlxhydra launch`, which runs this on every rank
        sys.exit(run_hydra(args))
