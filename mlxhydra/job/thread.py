"""The job's own thread, so that the main thread answers signals within a fraction of a second.

Python runs signal handlers in the main thread only, and only between
bytecodes: a long MLX call (one forward pass of a large quantized model on
the CPU, a quantization) on the main thread holds off SIGTERM for as long as
it runs. So the job runs on one worker thread per process, while the main
thread waits: a handler's :class:`~mlxhydra.errors.Interrupted` (or Ctrl-C's
KeyboardInterrupt) ends the wait at once (after up to :data:`mlxhydra.stopping.GRACE_SECONDS`
for a task that honours stop requests), the job records ``interrupted``,
and the command exits 128 + the signal number without waiting for the MLX
call (:func:`abandoned` tells the command that a job is still running; it
then ends the process with ``os._exit``).

One thread serves every job of the process: MLX streams belong to the thread
that made them, so arrays kept between the jobs of a sweep (the weights
cache, mlx-lm's generation stream) stay usable.
"""

import queue
import signal
import threading
from contextlib import contextmanager
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

from .. import stopping
from ..errors import Interrupted, RankInterrupted, raise_interrupted

# SIGINT keeps Python's own handler (KeyboardInterrupt), which launchers such as joblib expect.
HANDLED = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))
POLL_SECONDS = 0.2

_lock = threading.Lock()
_worker: Optional["_Worker"] = None
_busy = threading.Event()  # set while the worker runs a job, abandoned or not


class _Worker(threading.Thread):
    """A daemon thread that runs submitted functions one at a time."""

    def __init__(self) -> None:
        super().__init__(name="mlxhydra-job", daemon=True)
        self.tasks: "queue.SimpleQueue" = queue.SimpleQueue()

    def run(self) -> None:
        while True:
            func, box, done = self.tasks.get()
            try:
                box["value"] = func()
            except BaseException as e:  # handed to the waiting thread
                box["error"] = e
            finally:
                _busy.clear()
                done.set()


def on_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def run_in_job_thread(func: Callable[[], Any],
                      stop: Optional[Callable[[], Optional[BaseException]]] = None) -> Any:
    """Run ``func()`` on the job thread and wait for it, answering signals meanwhile.

    Called from another thread than the main one (a launcher's thread), it
    runs ``func`` right there: only the main thread receives signals.

    Args:
        func: The job.
        stop: Asked every 0.2 s while waiting: an error to end the wait with, or None.

    Returns:
        What ``func`` returned.

    Raises:
        Whatever ``func`` raised; Interrupted or KeyboardInterrupt from a
        signal while waiting, or what ``stop`` returned (``func`` then goes
        on running: see :func:`abandoned`).
    """
    global _worker
    if not on_main_thread():
        return func()
    with _lock:
        if _busy.is_set():
            raise RuntimeError("an interrupted job is still running in this process")
        if _worker is None or not _worker.is_alive():
            _worker = _Worker()
            _worker.start()
        worker = _worker
        _busy.set()
    box: Dict[str, Any] = {}
    done = threading.Event()
    worker.tasks.put((func, box, done))
    try:
        while not done.wait(POLL_SECONDS):
            error = stop() if stop is not None else None
            if error is not None and not done.is_set():
                raise error
    except Interrupted as e:
        if stopping.honouring() and not isinstance(e, RankInterrupted):  # SIGTERM, SIGHUP: the task ends cleanly if it can, in time
            stopping.request()
            done.wait(stopping.GRACE_SECONDS)
        raise
    if "error" in box:
        raise box["error"]
    return box.get("value")


def abandoned() -> bool:
    """True while a job that the main thread stopped waiting for still runs."""
    return _busy.is_set()


@contextmanager
def _handlers(signums: Tuple[int, ...], handler: Callable[[int, Any], None]) -> Iterator[None]:
    """``handler`` for each of ``signums`` not ignored, the previous handlers restored after.

    A signal ignored when the command started stays ignored (``nohup`` ignores
    SIGHUP on purpose). Elsewhere than on the main thread this does nothing.
    """
    previous = {}
    if on_main_thread():
        for signum in signums:
            if signal.getsignal(signum) is not signal.SIG_IGN:
                previous[signum] = signal.signal(signum, handler)
    try:
        yield
    finally:
        for signum, old in previous.items():
            # Ignored meanwhile on purpose (a distributed run's rank 0 once another rank failed:
            # mlx.launch's SIGTERMs must not replace the recorded cause): it stays ignored.
            if signal.getsignal(signum) is not signal.SIG_IGN:
                signal.signal(signum, old)


@contextmanager
def interruption_handlers() -> Iterator[None]:
    """SIGTERM and SIGHUP raise :class:`Interrupted` in the main thread, as Ctrl-C does."""
    with _handlers(HANDLED, raise_interrupted):
        yield


@contextmanager
def signals_held(collect: Optional[List[int]] = None) -> Iterator[None]:
    """Hold SIGINT, SIGTERM and SIGHUP while a record is written; raise the first one after.

    A second signal during the write of ``interrupted`` must not leave the
    record half-updated.

    Args:
        collect: Where the held signals go instead of being raised (the caller is already
            handling an interruption, and only notes that another came).
    """
    pending: List[int] = [] if collect is None else collect
    with _handlers((signal.SIGINT, *HANDLED), lambda signum, _frame: pending.append(signum)):
        yield
    if pending and collect is None:
        if pending[0] == signal.SIGINT:
            raise KeyboardInterrupt
        raise Interrupted(pending[0])
