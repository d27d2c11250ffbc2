"""The ``mlxhydra`` command: subcommands, or Hydra running the job pipeline.

``mlxhydra replay|diff|summarize|runs|resume|launch ARGS`` run a subcommand;
``--version`` prints versions; ``-sc query=bash`` is the shell asking for
completions (:mod:`mlxhydra.completion`); anything else is Hydra's command line
(:mod:`mlxhydra.command`): ``mlxhydra model=./llama quant.bits=4 [-m] ...``.
"""

import importlib
import io
import logging
import os
import sys
import threading
from typing import Callable, Dict, Sequence

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


class ClosableStdout:
    """``sys.stdout`` that outlives its reader (``mlxhydra task=generate ... | head -c 10``).

    When the reader goes away, a write or flush fails with BrokenPipeError:
    from then on stdout goes to ``os.devnull`` (the file descriptor too), so the
    run goes on and ends as it would have, its record and files complete; the
    streamed text, the log and the closing ``run directory:`` line have nowhere
    else to go on the console, and the log file says stdout was closed.
    """

    def __init__(self, stream):
        self._stream = stream
        self._lock = threading.Lock()
        self.closed_early = False

    def _divert(self) -> None:
        with self._lock:
            if self.closed_early:
                return
            self.closed_early = True
            try:
                devnull = os.open(os.devnull, os.O_WRONLY)
                try:
                    os.dup2(devnull, self._stream.fileno())
                finally:
                    os.close(devnull)
            except (OSError, ValueError, io.UnsupportedOperation):  # not a file descriptor
                self._stream = open(os.devnull, "w")
        if logging.getLogger().handlers:  # a job's log (a subcommand has none: it ends quietly)
            logging.getLogger("mlxhydra").warning(
                "standard output was closed (broken pipe): the run goes on; its output is in the "
                "run directory")

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self._divert()
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._divert()
            self._stream.flush()  # what was held back goes to os.devnull now

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


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


def print_version() -> None:
    """``--version``: mlxhydra's version, its dependencies' and the optional plugins'."""
    from importlib import metadata

    from .record.environment import versions

    from . import __version__

    found = versions()
    found.pop("mlxhydra", None)
    print(f"mlxhydra {__version__}")
    for name, version in found.items():
        print(f"  {name} {'not installed' if version is None else version}")
    for name in OPTIONAL_PACKAGES:
        try:
            version = metadata.version(name)
        except metadata.PackageNotFoundError:
            version = "not installed"
        print(f"  {name} {version}")


def main() -> None:
    """Entry point of ``python -m mlxhydra`` and the ``mlxhydra`` script."""
    from .command import run_hydra
    from .completion import complete, completion_query
    from .distributed.launch import exit_status_kept, restore_user_tmpdir
    from .job.thread import abandoned
    from .record.atomic import remove_unfinished
    from .record.latest import shown, started

    if sys.stdout is not None and not isinstance(sys.stdout, ClosableStdout):
        sys.stdout = ClosableStdout(sys.stdout)  # before Hydra's console handler takes it
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
    shell = completion_query(args)
    if shell is not None:  # the shell asks what may follow the line typed so far
        sys.exit(complete(shell, SUBCOMMANDS))
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
