"""How a distributed run ends when one rank fails or is interrupted.

The rank that stops first tells rank 0 why (:mod:`.rank_reports`) and waits
until rank 0 has recorded it; rank 0 stops waiting for its own job as soon
as the report is in (once its settings are checked), records the cause once,
lets the reporting ranks go, and exits; mlx.launch then stops the rest.
Without the wait, mlx.launch would stop rank 0 as soon as the failed rank
exits, possibly before its record is written.
"""

import signal
import sys
import threading
from contextlib import contextmanager
from typing import Any, Callable, Dict, Iterator, Optional, TypeVar

from ..distributed.ranks import world
from ..errors import (
    Interrupted,
    MlxhydraError,
    RankFailed,
    RankInterrupted,
    exit_code,
    interruption_message,
    raise_interrupted,
)
from .thread import on_main_thread

T = TypeVar("T")
REPORT_WAIT = 5.0  # seconds rank 0 waits for the report of the rank that stopped


def lost_peer(error: BaseException) -> bool:
    """A collective call that failed because another rank is gone."""
    text = str(error).lower()
    return (isinstance(error, RuntimeError) and not isinstance(error, MlxhydraError)
            and ("peer" in text or "connection" in text))


def explain(error: BaseException) -> BaseException:
    """What rank 0 records: the report of the rank that stopped first, when ``error`` is its echo.

    ``error`` is an echo when it is a lost connection or a SIGTERM/SIGHUP (mlx.launch
    stops every rank once one has failed); Ctrl-C and rank 0's own errors stay its own.
    """
    w = world()
    echo = lost_peer(error) or (isinstance(error, Interrupted) and error.signum != signal.SIGINT)
    if not echo or w.reports is None:
        return error
    report = w.reports.first(REPORT_WAIT)
    if report is None:
        if lost_peer(error):
            return RankFailed(f"lost the connection to another rank, which sent no report "
                              f"(killed, or out of memory?): {error}")
        return error
    return reported_cause(report)


def reported_cause(report: Dict[str, Any]) -> BaseException:
    """The error rank 0 records for another rank's report."""
    if report.get("status") == "interrupted":
        return RankInterrupted(int(report.get("signum") or signal.SIGTERM), int(report["rank"]))
    return RankFailed(f"rank {report.get('rank')} failed: {report.get('error')}")


def stopped_elsewhere(checked: threading.Event) -> Optional[Callable[[], Optional[BaseException]]]:
    """What ends rank 0's wait for its job once another rank has reported its end.

    The reporting rank waits for rank 0 to record before it exits, so rank 0
    cannot count on its next collective call failing: it stops waiting for its
    job as soon as a report is in. Only once its own settings are ``checked``:
    a bad setting fails on every rank, and rank 0 records its own words for it.

    Returns:
        None in one process; else a callable that returns the error to raise, or None.
    """
    w = world()
    if not w.distributed or w.reports is None:
        return None
    reports = w.reports

    def stop() -> Optional[BaseException]:
        report = reports.first(0) if checked.is_set() else None
        return reported_cause(report) if report is not None else None

    return stop


def release_reporters() -> None:
    """Rank 0, its record final: the ranks waiting for it may exit (nothing in one process)."""
    w = world()
    if w.leads and w.reports is not None:
        w.reports.acknowledge()


def lead(run: Callable[[], T]) -> T:
    """Run the job on rank 0: a failure that another rank caused is re-raised as that rank's."""
    try:
        return run()
    except BaseException as e:
        if not world().distributed:
            raise
        # mlx.launch stops every rank once one has ended: the record is written first
        # (the job restores the handler when it is done).
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        cause = explain(e)
        if cause is e:
            raise
        raise cause from e


def report_failure(error: BaseException) -> int:
    """On another rank than 0: send ``error`` to rank 0, show it as one line; the exit code.

    A lost connection is not sent: it echoes another rank's end, which reports its own cause.
    """
    w = world()
    if isinstance(error, (KeyboardInterrupt, Interrupted)):
        signum = error.signum if isinstance(error, Interrupted) else int(signal.SIGINT)
        message = interruption_message(error)
        report: Optional[Dict[str, Any]] = {"status": "interrupted", "signum": signum, "error": message}
        code = exit_code(error)
    else:
        message = str(error) if isinstance(error, MlxhydraError) else f"{type(error).__name__}: {error}"
        report = None if lost_peer(error) else {"status": "failed", "error": message,
                                                "error_type": type(error).__name__}
        code = 1
    sys.stderr.write(f"mlxhydra: rank {w.rank}: {message}\n")
    if report is not None and w.reports is not None:
        # Until rank 0 has recorded it, mlx.launch's SIGTERM (sent when any rank ends) must not
        # end this rank's wait: it would end rank 0 too, before its record.
        with sigterm_ignored():
            w.reports.send(report)
    return code


@contextmanager
def sigterm_ignored() -> Iterator[None]:
    """SIGTERM ignored meanwhile (on the main thread; elsewhere nothing changes)."""
    if not on_main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def follow(run: Callable[[], T]) -> T:
    """Run the job on another rank than 0: nothing is written.

    A failure or interruption is sent to rank 0, shown as one line on stderr,
    and ends this process (exit 1, or 128 + the signal number).
    """
    previous = signal.signal(signal.SIGTERM, raise_interrupted)
    try:
        return run()
    except BaseException as e:
        code = report_failure(e)
    finally:
        signal.signal(signal.SIGTERM, previous)
    raise SystemExit(code)
