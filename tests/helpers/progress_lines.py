"""The sweep progress lines of a command's output (mlxhydra/sweeps/job_progress.py), parsed."""

import re
from typing import List, NamedTuple, Optional

# What mlxhydra.progress.duration writes.
DURATION = r"(?:\d\.\d s|\d+ s|\d+ min \d\d s|\d+ h \d\d min)"
LOGGED = re.compile(r"^\[[^\]]+\]\[mlxhydra\]\[INFO\] - (\[\d+(?:/\d+)?\] .*)$", re.M)
LINE = re.compile(rf"^\[(\d+)(?:/(\d+))?\] (.+) (completed in|failed after) ({DURATION}) · "
                  rf"elapsed ({DURATION})(?: · ETA ({DURATION}))?$")


class ProgressLine(NamedTuple):
    k: int
    n: Optional[int]
    overrides: str
    verb: str
    took: str
    elapsed: str
    eta: Optional[str]


def progress_lines(output: str) -> List[ProgressLine]:
    """Every progress line of ``output``, in order; each must have the documented shape."""
    lines = []
    for text in LOGGED.findall(output):
        m = LINE.match(text)
        assert m, f"a progress line of another shape: {text!r}"
        k, n, overrides, verb, took, elapsed, eta = m.groups()
        lines.append(ProgressLine(int(k), int(n) if n else None, overrides, verb, took, elapsed, eta))
    return lines


def seconds(duration: str) -> float:
    """A duration as written back to seconds (to the precision written)."""
    parts = re.findall(r"([\d.]+) (h|min|s)", duration)
    return sum(float(v) * {"h": 3600, "min": 60, "s": 1}[u] for v, u in parts)
