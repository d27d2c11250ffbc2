"""The project's own errors.

Each is a Hydra ``CompactHydraException``, so on the command line Hydra shows
the message alone (the full trace with ``HYDRA_FULL_ERROR=1``). Each also
derives from the built-in error that mlx-lm raises in the same situation, so
Python callers can catch either.
"""

import signal
from typing import Iterable

from hydra.errors import CompactHydraException


class MlxhydraError(CompactHydraException):
    """Base of every error mlxhydra raises on purpose."""


class ConfigError(MlxhydraError, ValueError):
    """One or more bad configuration values, reported together."""

    def __init__(self, problems: Iterable[str] | str):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("; ".join(self.problems))


class RemoteCodeError(ConfigError):
    """A model directory asks to run its own Python without permission."""


class WeightsError(MlxhydraError, ValueError):
    """Weight files that are unreadable or do not fit the model."""


class MissingWeightsError(WeightsError, FileNotFoundError):
    """A model directory without weight files."""


class TaskError(MlxhydraError, ValueError):
    """A task that cannot run with the settings or data it was given."""


class Interrupted(BaseException):
    """The run was stopped by SIGINT or SIGTERM.

    A BaseException, like KeyboardInterrupt, so that no ``except Exception``
    (Hydra's included) swallows it; the command exits 128 + the signal number.
    """

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(f"interrupted by signal {signum}")


def raise_interrupted(signum: int, _frame: object) -> None:
    """A SIGTERM handler: stop where the program is, as Ctrl-C does."""
    raise Interrupted(signum)


def interruption_message(error: BaseException) -> str:
    """``interrupted by SIGINT`` / ``SIGTERM`` for a KeyboardInterrupt or Interrupted."""
    signum = error.signum if isinstance(error, Interrupted) else signal.SIGINT
    return f"interrupted by {signal.Signals(signum).name}"
