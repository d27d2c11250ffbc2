"""Progress of a long loop, shown where someone watches: a bar on a terminal, log lines elsewhere.

On a terminal (stderr is a TTY) a tqdm bar shows the count, the elapsed time
and the ETA, and is erased at the end. Elsewhere (a log file, a SLURM job, a
pipe) a bar would be noise: one log line every :data:`LOG_EVERY_SECONDS`
(``kl: 120/400 batches (30%) · elapsed 1 min 02 s · ETA 2 min 25 s``), none
for a loop shorter than that and none for its last step (the task logs its
result then).
"""

import logging
import sys
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterable, Iterator, Optional, TextIO

log = logging.getLogger("mlxhydra")

# A log line at most this often when no terminal watches (a minute of a long task is
# news; more often would fill a job's log).
LOG_EVERY_SECONDS = 60.0


def duration(seconds: float) -> str:
    """``0.6 s``, ``41 s``, ``3 min 05 s``, ``2 h 07 min``: a time span as people read it."""
    if seconds < 9.95:
        return f"{max(0.0, seconds):.1f} s"
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def eta(elapsed: float, done: int, total: int) -> Optional[float]:
    """Seconds left at the pace so far (None before the first step and after the last)."""
    if done <= 0 or total <= done:
        return None
    return elapsed / done * (total - done)


def _logged(iterable: Iterable[Any], total: int, desc: str, unit: str, every: float,
            clock: Callable[[], float]) -> Iterator[Any]:
    start = last = clock()
    for done, item in enumerate(iterable, 1):
        yield item  # the caller's step runs here; it is done when the loop comes back
        now = clock()
        if now - last >= every and done < total:
            last = now
            left = eta(now - start, done, total)
            log.info("%s: %d/%d %s (%d%%) · elapsed %s%s", desc, done, total, unit,
                     100 * done // total, duration(now - start),
                     f" · ETA {duration(left)}" if left is not None else "")


def progress(iterable: Iterable[Any], total: int, desc: str, *, unit: str = "batches",
             stream: Optional[TextIO] = None, every: Optional[float] = None,
             clock: Callable[[], float] = time.monotonic) -> Iterable[Any]:
    """``iterable``, reporting its progress: a tqdm bar with an ETA on ``stream`` (default:
    stderr) when it is a terminal, else a log line every ``every`` seconds (default:
    :data:`LOG_EVERY_SECONDS`). The bar is redrawn at most every 0.1 s (tqdm's
    default), or every ``every`` seconds when that is shorter."""
    stream = stream if stream is not None else sys.stderr
    every = LOG_EVERY_SECONDS if every is None else every
    if _is_terminal(stream):
        from tqdm import tqdm

        return tqdm(iterable, total=total, desc=desc, unit=f" {unit}", file=stream, leave=False,
                    dynamic_ncols=True, mininterval=min(every, 0.1))
    return _logged(iterable, total, desc, unit, every, clock)


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


@contextmanager
def ticking(model: Callable[..., Any], steps: Iterable[Any]) -> Iterator[Callable[..., Any]]:
    """``model``, advancing the progress iterator ``steps`` at each call.

    For a loop that is not ours (mlx-lm's ``eval_ppl`` calls the model once per
    batch, then evaluates that batch's loss): call ``i`` marks batch ``i - 1``
    done, the end of the ``with`` block the last one.
    """
    it = iter(steps)

    def counted(*args: Any, **kwargs: Any) -> Any:
        next(it, None)
        return model(*args, **kwargs)

    try:
        yield counted
        for _ in it:  # the last step done (a bar then closes itself)
            pass
    finally:
        close = getattr(it, "close", None)
        if close is not None:  # an error: a bar is erased, no more lines
            close()
