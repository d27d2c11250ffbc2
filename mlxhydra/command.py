"""The Hydra command line (``mlxhydra model=./llama quant.bits=4 [-m] ...``): checked before Hydra
sees it, run with the job function, and every way it ends reported as one line and an exit status.
"""

import logging
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, List, Optional

from omegaconf import DictConfig


class JobFunction:
    """What ``@hydra.main`` calls for each job; knows when the command started."""

    def __init__(self, started_at: float):
        self.started_at = started_at
        self.pid = os.getpid()
        self.called = False  # from the first call on, the job keeps its own record
        self.run_dir: Optional[Path] = None  # a single run's directory, once Hydra made it

    def __call__(self, cfg: DictConfig) -> Optional[float]:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        from .record.latest import mark_latest
        from .sweeps.policy import run_swept_job

        hc = HydraConfig.get()
        if hc.mode == RunMode.RUN:
            self.run_dir = Path(hc.runtime.output_dir)
            mark_latest(self.run_dir, "run", Path(hc.runtime.cwd))
        compose = None
        # The first job of this process (a launcher's worker has its own clock)
        # is timed from the command's start: Hydra composed it meanwhile.
        if not self.called and self.pid == os.getpid() and hc.job.get("num") in (None, 0):
            compose = time.perf_counter() - self.started_at
        self.called = True
        return run_swept_job(cfg, compose)


class _WithoutJobReportLine:
    """stderr without Hydra's ``Error executing job with overrides: [...]`` line.

    Hydra writes that line before re-raising a job's error; the command prints
    the error's one line itself (see :func:`run_hydra`).
    """

    PREFIX = "Error executing job with overrides: "

    def __init__(self, stream):
        self._stream = stream

    def write(self, text: str) -> int:
        if text.startswith(self.PREFIX):
            return len(text)
        return self._stream.write(text)

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


@contextmanager
def errors_reported_here(enabled: bool):
    """Let Hydra's errors reach the command, which prints each as one line.

    ``HYDRA_FULL_ERROR=1`` is how Hydra hands an error on instead of printing
    it with a trace; the user's own ``HYDRA_FULL_ERROR=1`` keeps Hydra's way
    (the full trace). Restored afterwards.
    """
    if not enabled:
        yield
        return
    saved_env, saved_stderr = os.environ.get("HYDRA_FULL_ERROR"), sys.stderr
    os.environ["HYDRA_FULL_ERROR"] = "1"
    sys.stderr = _WithoutJobReportLine(sys.stderr)
    try:
        yield
    finally:
        sys.stderr = saved_stderr
        if saved_env is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = saved_env


class _Command:
    """One Hydra command line: what it records when it fails before any job ran."""

    def __init__(self, args: List[str]):
        from .record.environment import now

        self.args = args
        self.job = JobFunction(time.perf_counter())
        self.started = now()
        self.full_error = os.environ.get("HYDRA_FULL_ERROR") == "1"

    def record_if_no_job(self, error: Optional[BaseException]) -> None:
        """Record a failure that came before the job (which keeps its own record)."""
        from .distributed import ranks
        from .job.early_failure import record_early_failure
        from .job.rank_ends import report_failure
        from .record.latest import mark_latest

        if self.job.called:
            return
        if ranks.world().leads:
            run_dir = record_early_failure(error, self.args, self.started)
            if run_dir is not None:
                self.job.run_dir = run_dir
                mark_latest(run_dir, "run")
        elif error is not None:  # another rank of a distributed run: rank 0 records its cause
            report_failure(error)

    def refusal(self) -> Optional[str]:
        """Why the command line cannot run (its overrides, its model= path, missing extras), or None.

        Also makes the arguments Hydra's: model= paths quoted, run references resolved
        (``load.adapter_path=latest``), ``sys.argv`` set.
        """
        from .errors import ConfigError

        error = self.refused()
        if error is None:
            return None
        return f"mlxhydra: {error}" if isinstance(error, ConfigError) else str(error)

    def refused(self) -> Optional[Exception]:
        """The error that stops the command line before Hydra runs (recorded), or None; see refusal."""
        from .config.model_source import require_model_path
        from .config.overrides import (
            group_choice_problems,
            override_value,
            overrides_of_argv,
            quote_model_paths,
            require_override_syntax,
            resolve_run_references,
        )
        from .config.plugin_extras import missing_extras
        from .errors import ConfigError, ModelDirError, OverrideSyntaxError

        self.args = resolve_run_references(quote_model_paths(self.args))
        sys.argv[1:] = self.args
        overrides = overrides_of_argv(self.args)
        try:
            require_override_syntax(overrides)
            # Hydra looks a model= path up in its own config tree first, where a name too long
            # for the file system fails with the package's path in the message: say it here.
            require_model_path(override_value(overrides, "model"))
            missing = missing_extras(overrides) + group_choice_problems(overrides)
            if missing:
                raise ConfigError(missing)
        except (OverrideSyntaxError, ModelDirError, ConfigError) as e:
            self.record_if_no_job(e)
            return e
        return None

    def join_world(self) -> Optional[str]:
        """Join the ranks of a distributed run (one process: rank 0 of 1); why not, or None."""
        from .config.model_source import DEFER_ERRORS_ENV
        from .config.overrides import wants_multirun
        from .distributed import ranks
        from .errors import ConfigError, MlxhydraError

        # A sweep composes every job before running any: a bad model= of one job is that job's
        # failure (config/model_source.py), not the sweep's. Launchers' workers inherit it.
        if wants_multirun(self.args):
            os.environ[DEFER_ERRORS_ENV] = "1"
        else:
            os.environ.pop(DEFER_ERRORS_ENV, None)
        try:
            world = ranks.join()  # launched by mlx.launch: every rank joins here
        except MlxhydraError as e:
            return f"mlxhydra: {e}"
        refusal = ranks.multirun_refusal(self.args)
        if refusal is not None:
            self.record_if_no_job(ConfigError(refusal))
            return f"mlxhydra: {refusal}"
        if not world.leads:
            sys.argv[1:] = self.args + ranks.FOLLOWER_OVERRIDES
        return None

    def hydra_main(self):
        """``@hydra.main`` around the job function, composing the config once (config/compose_once.py)."""
        import hydra

        from .config.compose_once import composed_once
        from .config.overrides import multirun_flag

        main = hydra.main(config_path="pkg://mlxhydra.conf", config_name="config",
                          version_base="1.3")(self.job)

        def composing_once() -> Any:
            with composed_once(multirun_flag(sys.argv[1:])):
                return main()
        return composing_once

    def run_raising(self) -> None:
        """Run Hydra with the job function and raise what ends it (the Python API's way).

        A failure before the job is recorded as the command records it; Hydra's
        exits become errors (``HYDRA_FULL_ERROR=1`` while it runs).
        """
        from .errors import RefusedBeforeRun
        from .job.thread import interruption_handlers

        with interruption_handlers(), errors_reported_here(True):
            try:
                self.hydra_main()()
            except RefusedBeforeRun as e:
                self.record_if_no_job(e.error)
                raise e.error from None
            except BaseException as e:
                self.record_if_no_job(e)
                raise

    def run(self) -> int:
        """Run Hydra with the job function; every way it ends is one line and an exit status."""
        from .errors import (
            Interrupted,
            RefusedBeforeRun,
            SweepFailed,
            SweepStopped,
            exit_code,
            interruption_message,
            one_line_message,
        )
        from .job.thread import interruption_handlers
        from .sweeps.policy import skipped_summary, summarize_interrupted_sweep

        main = self.hydra_main()
        # Signals while composing are recorded as during the job.
        with interruption_handlers(), errors_reported_here(not self.full_error):
            try:
                main()
            except RefusedBeforeRun as e:  # the run (or sweep) directory, before Hydra writes in it
                self.record_if_no_job(e.error)
                if self.full_error:
                    raise e.error from e
                sys.stderr.write(f"{one_line_message(e.error)}\n")
                return 1
            except SweepStopped as e:
                sys.stderr.write(f"mlxhydra: sweep stopped: {e}\n")
                return 1
            except SweepFailed as e:
                sys.stderr.write(f"mlxhydra: {e}\n")
                return 1
            except (KeyboardInterrupt, Interrupted) as e:
                self.record_if_no_job(e)
                summarize_interrupted_sweep()
                if skipped_summary() is not None:
                    sys.stderr.write("mlxhydra: summary.png skipped (interrupted again); draw it "
                                     f"with: mlxhydra summarize {skipped_summary()}\n")
                sys.stderr.write(f"mlxhydra: {interruption_message(e)}\n")
                return exit_code(e)
            except SystemExit as e:
                # Hydra's own exits (argparse usage errors: 2); with the user's
                # HYDRA_FULL_ERROR unset its reported errors reach the clause below instead.
                if e.code not in (0, None) and isinstance(e.__context__, Exception):
                    self.record_if_no_job(e.__context__)
                raise
            except Exception as e:
                self.record_if_no_job(e)
                if self.full_error:  # the user asked for Hydra's full trace
                    raise
                sys.stderr.write(f"{one_line_message(e)}\n")
                return 1
        return 0


def run_hydra(args: List[str]) -> int:
    """Run Hydra on ``args``; return the exit status (recording failures before the job).

    Every error ends as one line on stderr and exit 1 (the full trace with
    ``HYDRA_FULL_ERROR=1``); SIGINT, SIGTERM and SIGHUP as 130, 143 and 129.
    """
    from . import _upstream
    from .config.help_cache import install_for
    from .config.resolvers import register_resolvers

    command = _Command(args)
    # A log file that cannot be written (a full disk) must not print logging's own traceback:
    # the run's one-line error says what failed.
    logging.raiseExceptions = command.full_error
    register_resolvers()
    _upstream.quiet_basic_sweeper_schema_warning()
    install_for(args)  # --help: the same text; Hydra's group listings computed once
    refusal = command.refusal() or command.join_world()
    if refusal is not None:
        sys.stderr.write(f"{refusal}\n")
        return 1
    return command.run()
