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


def raise_interrupted(signum: int, _frame: object) -> None:
    """A signal handler: stop where the program is, as Ctrl-C does."""
    raise Interrupted(signum)


def interruption_message(error: BaseException) -> str:
    """``interrupted by SIGINT`` / ``SIGTERM`` for a KeyboardInterrupt or Interrupted."""
    signum = error.signum if isinstance(error, Interrupted) else signal.SIGINT
    rank = f"rank {error.rank} " if isinstance(error, RankInterrupted) else ""
    return f"{rank}interrupted by {signal.Signals(signum).name}"


def exit_code(error: BaseException) -> int:
    """128 + the signal number of an interruption (130 for Ctrl-C)."""
    signum = error.signum if isinstance(error, Interrupted) else signal.SIGINT
    return 128 + int(signum)
