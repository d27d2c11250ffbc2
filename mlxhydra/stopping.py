"""A stop asked of the running job, for tasks that can end cleanly when asked.

SIGTERM and SIGHUP stop a job at once (:mod:`mlxhydra.job.thread`): the main thread records
``interrupted`` and the command exits without waiting for the job's thread. A task that can
do better, such as ``task=lora`` writing a checkpoint after its current step, runs inside
:func:`honoured` and polls :func:`requested`; the main thread then asks it to stop and waits up
to :data:`GRACE_SECONDS` for it before recording the interruption.
"""

import threading
from contextlib import contextmanager
from typing import Iterator

# How long a task that honours stop requests gets to end (docker stop's default wait).
GRACE_SECONDS = 10.0

_requested = threading.Event()
_honoured = threading.Event()


@contextmanager
def honoured() -> Iterator[None]:
    """The block honours stop requests (polls :func:`requested`); a request is cleared after."""
    _requested.clear()
    _honoured.set()
    try:
        yield
    finally:
        _honoured.clear()
        _requested.clear()


def honouring() -> bool:
    """True while a task that honours stop requests runs."""
    return _honoured.is_set()


def request() -> None:
    """Ask the running task to stop."""
    _requested.set()


def requested() -> bool:
    return _requested.is_set()
