"""The ``mlxhydra`` command: subcommands, or Hydra running the job pipeline.

``mlxhydra replay|diff|summarize|runs|resume|launch ARGS`` run a subcommand;
``--version`` prints versions; anything else is Hydra's command line:
``mlxhydra model=./llama quant.bits=4 [-m] ...``.
"""

import importlib
import logging
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

from omegaconf import DictConfig

# name -> "module:function"; the function takes argv (after the name) and returns the exit status.
SUBCOMMANDS: Dict[str, str] = {
    "replay": "mlxhydra.history.replay:main",
    "diff": "mlxhydra.history.diff:main",
    "summarize": "mlxhydra.sweeps.summary:summarize_main",
    "runs": "mlxhydra.history.table:main",
    "resume": "mlxhydra.sweeps.resume:main",
    "launch": "mlxhydra.distributed.launch:main",
}
# Shown by --version beside the required dependencies.
OPTIONAL_PACKAGES = ("hydra-joblib-launcher", "hydra-submitit-launcher", "hydra-ray-launcher",
                     "hydra-optuna-sweeper", "optuna", "mlflow-skinny", "mlflow", "tensorboardX",
                     "tensorboard", "matplotlib")


def run_subcommand(argv: Sequence[str]) -> int:
    """Run ``argv[0]`` (a name in :data:`SUBCOMMANDS`) with the rest; return its exit status."""
    from .errors import one_line_message

    module, _, name = SUBCOMMANDS[argv[0]].partition(":")
    func: Callable[[Sequence[str]], int] = getattr(importlib.import_module(module), name)
    try:
        return func(list(argv[1:]))
    except Exception as e:  # a damaged directory the subcommand did not foresee: one line, exit 2
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        sys.stderr.write(f"mlxhydra {argv[0]}: {one_line_message(e)}\n")
        return 2


class JobFunction:
    """What ``@hydra.main`` calls for each job; knows when the command started."""

    def __init__(self, started_at: float):
        self.started_at = started_at
        self.pid = os.getpid()
        self.called = False  # from the first call on, the job keeps its own record

    def __call__(self, cfg: DictConfig) -> Optional[float]:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        from .record.latest import mark_latest
        from .sweeps.policy import run_swept_job

        hc = HydraConfig.get()
        if hc.mode == RunMode.RUN:
            mark_latest(Path(hc.runtime.output_dir), "run", Path(hc.runtime.cwd))
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


def run_hydra(args: List[str]) -> int:
    """Run Hydra on ``args``; return the exit status (recording failures before the job).

    Every error ends as one line on stderr and exit 1 (the full trace with
    ``HYDRA_FULL_ERROR=1``); SIGINT, SIGTERM and SIGHUP as 130, 143 and 129.
    """
    import hydra

    from . import _upstream
    from .config.help_cache import install_for
    from .config.model_source import DEFER_ERRORS_ENV, check_model_path
    from .config.overrides import (
        check_override_syntax,
        group_choice_problems,
        override_value,
        overrides_of_argv,
        quote_model_paths,
        wants_multirun,
    )
    from .config.plugin_extras import missing_extras
    from .config.resolvers import register_resolvers
    from .distributed import ranks
    from .errors import (
        ConfigError,
        Interrupted,
        MlxhydraError,
        ModelDirError,
        OverrideSyntaxError,
        RefusedBeforeRun,
        SweepFailed,
        SweepStopped,
        exit_code,
        interruption_message,
        one_line_message,
    )
    from .job.early_failure import record_early_failure
    from .job.rank_ends import report_failure
    from .job.thread import interruption_handlers
    from .record.environment import now
    from .record.latest import mark_latest
    from .sweeps.policy import summarize_interrupted_sweep

    job = JobFunction(time.perf_counter())
    started = now()
    full_error = os.environ.get("HYDRA_FULL_ERROR") == "1"
    # A log file that cannot be written (a full disk) must not print logging's own traceback:
    # the run's one-line error says what failed.
    logging.raiseExceptions = full_error

    def record_if_no_job(error: Optional[BaseException]) -> None:
        if job.called:
            return
        if ranks.world().leads:
            run_dir = record_early_failure(error, args, started)
            if run_dir is not None:
                mark_latest(run_dir, "run")
        elif error is not None:  # another rank of a distributed run: rank 0 records its cause
            report_failure(error)

    register_resolvers()
    _upstream.quiet_basic_sweeper_schema_warning()
    install_for(args)  # --help: the same text; Hydra's group listings computed once
    args = quote_model_paths(args)
    sys.argv[1:] = args
    try:
        check_override_syntax(overrides_of_argv(args))
        # Hydra looks a model= path up in its own config tree first, where a name too long
        # for the file system fails with the package's path in the message: say it here.
        check_model_path(override_value(overrides_of_argv(args), "model"))
        missing = missing_extras(overrides_of_argv(args)) + group_choice_problems(overrides_of_argv(args))
        if missing:
            raise ConfigError(missing)
    except (OverrideSyntaxError, ModelDirError, ConfigError) as e:
        record_if_no_job(e)
        sys.stderr.write(f"mlxhydra: {e}\n" if isinstance(e, ConfigError) else f"{e}\n")
        return 1
    # A sweep composes every job before running any: a bad model= of one job is that job's
    # failure (config/model_source.py), not the sweep's. Launchers' workers inherit it.
    if wants_multirun(args):
        os.environ[DEFER_ERRORS_ENV] = "1"
    else:
        os.environ.pop(DEFER_ERRORS_ENV, None)
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
    main = hydra.main(config_path="pkg://mlxhydra.conf", config_name="config", version_base="1.3")(job)
    # Signals while composing are recorded as during the job.
    with interruption_handlers(), errors_reported_here(not full_error):
        try:
            main()
        except RefusedBeforeRun as e:  # the run (or sweep) directory, before Hydra writes in it
            record_if_no_job(e.error)
            if full_error:
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
            record_if_no_job(e)
            summarize_interrupted_sweep()
            sys.stderr.write(f"mlxhydra: {interruption_message(e)}\n")
            return exit_code(e)
        except SystemExit as e:
            # Hydra's own exits (argparse usage errors: 2); with the user's
            # HYDRA_FULL_ERROR unset its reported errors reach the clause below instead.
            if e.code not in (0, None) and isinstance(e.__context__, Exception):
                record_if_no_job(e.__context__)
            raise
        except Exception as e:
            record_if_no_job(e)
            if full_error:  # the user asked for Hydra's full trace
                raise
            sys.stderr.write(f"{one_line_message(e)}\n")
            return 1
    return 0


def print_version() -> None:
    """``--version``: mlxhydra's version, its dependencies' and the optional plugins'."""
    from importlib import metadata

    from .record.environment import versions

    found = versions()
    print(f"mlxhydra {found.pop('mlxhydra', None)}")
    for name, version in found.items():
        print(f"  {name} {version}")
    for name in OPTIONAL_PACKAGES:
        try:
            version = metadata.version(name)
        except metadata.PackageNotFoundError:
            version = "not installed"
        print(f"  {name} {version}")


def complete_subcommands(args: Sequence[str]) -> None:
    """Shell completion (``-sc query=bash``): offer the subcommands for the first word.

    Hydra completes overrides and then prints its own candidates; these come
    first. ``eval "$(mlxhydra -sc install=bash)"`` installs the completion.
    """
    if not any(a.startswith("query=") for a in args):
        return
    words = os.environ.get("COMP_LINE", "").split(" ")
    while words and not words[0].endswith("mlxhydra"):  # "python -m mlxhydra ..."
        words.pop(0)
    if len(words) == 2:  # completing the first word after the program
        matches = [name for name in SUBCOMMANDS if name.startswith(words[1])]
        if matches:
            sys.stdout.write(" ".join(matches) + " ")
            sys.stdout.flush()


def main() -> None:
    """Entry point of ``python -m mlxhydra`` and the ``mlxhydra`` script."""
    from .distributed.launch import exit_status_kept, restore_user_tmpdir
    from .job.thread import abandoned
    from .record.atomic import remove_unfinished
    from .record.latest import shown, started

    try:
        cwd = os.getcwd()
    except OSError as e:  # deleted while the shell was in it: Hydra and every relative path need it
        sys.stderr.write(f"mlxhydra: the working directory cannot be used ({e.strerror}): "
                         "cd to an existing directory and run again\n")
        sys.exit(1)
    restore_user_tmpdir()  # in a rank of `mlxhydra launch`
    args = sys.argv[1:]
    if args and args[0] in SUBCOMMANDS:
        sys.exit(run_subcommand(args))
    if args and args[0] in ("--version", "-V"):
        print_version()
        sys.exit(0)
    if "-sc" in args or "--shell-completion" in args:
        complete_subcommands(args)
    if "${" in cwd:  # Hydra writes it into its config unescaped: it would be interpolated
        sys.stderr.write(f"mlxhydra: the working directory {cwd} contains '${{', which Hydra "
                         "reads as an interpolation: run from a directory without it\n")
        sys.exit(1)
    try:
        with exit_status_kept():  # for `mlxhydra launch`, which runs this on every rank
            try:
                code = run_hydra(args)
            finally:  # every run ends by saying where it is, whatever its outcome
                where = started()
                if where:
                    sys.stdout.flush()
                    print(f"{where[0]} directory: {shown(where[1])}", flush=True)
            sys.exit(code)
    except SystemExit as e:
        from .job.rank_ends import release_reporters  # here: run_hydra has imported it already

        release_reporters()  # rank 0 of a distributed run has recorded: the others may exit
        if abandoned():
            # A signal stopped the wait for a job still inside a long MLX call: its record says
            # interrupted; end now rather than wait for the call (or let it write anything more).
            remove_unfinished()
            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(e.code if isinstance(e.code, int) else 1)
        raise
