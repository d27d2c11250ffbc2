"""Every error mlxhydra raises on purpose, and the exceptions that stop a run.

Errors derive from :class:`MlxhydraError`, a Hydra ``CompactHydraException``:
on the command line Hydra shows the message alone (the full trace with
``HYDRA_FULL_ERROR=1``). Each also derives from the built-in error that
mlx-lm raises in the same situation, so Python callers can catch either.

:class:`Interrupted`, :class:`SweepStopped` and :class:`SweepFailed` are not
errors but ways a run ends: BaseExceptions, like KeyboardInterrupt, so that no
``except Exception`` (Hydra's and its launchers' included) swallows them.
"""

import signal
from typing import Any, Iterable

from hydra.errors import CompactHydraException
from hydra.plugins.config_source import ConfigLoadError


class MlxhydraError(CompactHydraException):
    """Base of every error mlxhydra raises on purpose."""


class ConfigError(MlxhydraError, ValueError):
    """One or more bad configuration values, reported together."""

    def __init__(self, problems: Iterable[str] | str):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("; ".join(self.problems))


class RemoteCodeError(ConfigError):
    """A model directory asks to run its own Python without permission."""


class ModelDirError(MlxhydraError, ConfigLoadError):
    """A ``model=`` value that does not name a usable model directory.

    A ConfigLoadError too: Hydra raises it from the config source while composing.
    """


class ModelDirNotFound(ModelDirError, FileNotFoundError):
    """The directory or its config.json does not exist."""


class HubError(ModelDirError):
    """A Hugging Face Hub id that cannot be resolved (offline and not cached, gated, no such repo)."""


class OverrideSyntaxError(MlxhydraError, ValueError):
    """A command-line override that Hydra's grammar rejects, named in the message."""


class WeightsError(MlxhydraError, ValueError):
    """Weight files that are unreadable or do not fit the model."""


class MissingWeightsError(WeightsError, FileNotFoundError):
    """A model directory without weight files."""


class TaskError(MlxhydraError, ValueError):
    """A task that cannot run with the settings or data it was given."""


class RunDirError(MlxhydraError, ValueError):
    """A path given to a subcommand is not a usable run or sweep directory."""


class UpstreamError(MlxhydraError, ImportError):
    """An installed mlx-lm or Hydra lacks a name mlxhydra relies on."""


class FileSystemError(MlxhydraError, OSError):
    """A file or directory that cannot be read or written: the path and the reason, one line.

    ``errno`` and ``strerror`` are those of the OSError it reports (when made
    with :meth:`from_os_error`); the message stays the one line given.
    """

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else type(self).__name__

    @classmethod
    def from_os_error(cls, message: str, error: OSError) -> "FileSystemError":
        made = cls(message)
        made.errno, made.strerror = error.errno, error.strerror
        return made


class RecordWriteError(FileSystemError):
    """run.json (or another record of the run) could not be written."""


class RunDirTaken(MlxhydraError, FileExistsError):
    """A run or sweep directory that already holds another run's records."""


class RankFailed(MlxhydraError, RuntimeError):
    """Another rank of a distributed run failed, or the connection to one was lost."""


class Interrupted(BaseException):
    """The run was stopped by a signal (SIGINT, SIGTERM, SIGHUP).

    The command exits 128 + the signal number.
    """

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(f"interrupted by signal {signum}")


class RankInterrupted(Interrupted):
    """Another rank of a distributed run was stopped by a signal."""

    def __init__(self, signum: int, rank: int):
        super().__init__(signum)
        self.rank = rank


class SweepStopped(BaseException):
    """``sweep.fail_fast=true`` and a job failed: the remaining jobs do not run."""

    def __init__(self, job: Any, error: str):
        super().__init__(job, error)
        self.job, self.error = job, error

    def __str__(self) -> str:
        return f"job {self.job} failed and sweep.fail_fast=true: {self.error}"


class SweepFailed(BaseException):
    """A multirun ended with failed jobs (raised after its summary is written)."""

    def __init__(self, failed: int, jobs: int, summary: str):
        super().__init__(failed, jobs, summary)
        self.failed, self.jobs, self.summary = failed, jobs, summary

    def __str__(self) -> str:
        return f"{self.failed} of {self.jobs} jobs failed (see {self.summary})"


class RefusedBeforeRun(BaseException):
    """An error a Hydra callback found before the run starts (``error``).

    Hydra turns a callback's Exception into a warning and goes on; this one
    passes through, and the command reports ``error`` as any other error.
    """

    def __init__(self, error: MlxhydraError):
        super().__init__(error)
        self.error = error

    def __str__(self) -> str:
        return str(self.error)


def describe_os_error(error: OSError, path: object = None) -> str:
    """``PATH: reason`` for an OSError (``path`` when the error names none)."""
    where = error.filename if error.filename is not None else path
    reason = error.strerror or str(error) or type(error).__name__
    if error.filename2 is not None:
        where = f"{where} -> {error.filename2}"
    return f"{where}: {reason}" if where is not None else reason


# Lines of OmegaConf's and Hydra's messages that repeat what the first line says.
_DETAIL_LINES = ("full_key:", "object_type=", "reference_type=", "    ")
_SEARCH_PATH = "\nConfig search path:"  # Hydra's list of config sources after a missing option


def one_line_message(error: BaseException) -> str:
    """The message of an error as the one line the command prints and records.

    mlxhydra's errors are one line already; Hydra's and OmegaConf's several lines
    (``Could not override 'x'`` / ``Key 'x' is not in struct`` / ``full_key: ...``)
    are joined, their detail lines dropped; an OSError is ``PATH: reason``; any
    other error is its type and message.
    """
    from omegaconf.errors import OmegaConfBaseException

    # Hydra's "Could not find 'model/x'" is an OSError too: its text, not a path, says what is wrong.
    if isinstance(error, OSError) and not isinstance(error, (MlxhydraError, CompactHydraException)):
        return describe_os_error(error)
    if isinstance(error, CompactHydraException):
        text = str(error).split(_SEARCH_PATH)[0]  # the options are listed before it
        if isinstance(error.__cause__, OmegaConfBaseException):
            text += "\n" + str(error.__cause__)
    else:
        text = f"{type(error).__name__}: {error}"
    lines = [line.strip() for line in text.splitlines()
             if line.strip() and not line.startswith(_DETAIL_LINES)]
    return " ".join(lines) or type(error).__name__


def raise_interrupted(signum: int, _frame: object) -> None:
    """A signal handler: stop where the program is, as Ctrl-C does."""
    raise Interrupted(signum)


def interruption_message(error: BaseException) -> str:
    """``interrupted by SIGINT`` / ``SIGTERM`` / ``SIGHUP`` for a KeyboardInterrupt or Interrupted."""
    signum = error.signum if isinstance(error, Interrupted) else signal.SIGINT
    rank = f"rank {error.rank} " if isinstance(error, RankInterrupted) else ""
    return f"{rank}interrupted by {signal.Signals(signum).name}"


def exit_code(error: BaseException) -> int:
    """128 + the signal number of an interruption (130 for Ctrl-C)."""
    signum = error.signum if isinstance(error, Interrupted) else signal.SIGINT
    return 128 + int(signum)
