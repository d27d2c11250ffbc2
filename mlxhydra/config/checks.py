"""One settings check for every node: each problem as ``prefix.KEY=VALUE: expected ...``."""

import math
from pathlib import Path
from typing import Any, List, Mapping, Optional, Sequence

from ..file_checks import regular_file_problem, utf8_problem

MAX_INTEGER = 2**31 - 1  # the largest MLX array dimension (int32)


class SettingsCheck:
    """Collects every problem of a task's settings, each as ``task.KEY=VALUE: expected ...``.

    Each task's ``settings_problems(task)`` uses one and returns its ``problems``; the
    validate stage reports them together before any weight is read. Other
    nodes use it with their own ``prefix`` (``quant.dwq``).
    """

    def __init__(self, task: Mapping[str, Any], prefix: str = "task"):
        self.task = task
        self.prefix = prefix
        self.problems: List[str] = []

    def fail(self, key: str, expected: str) -> None:
        self.problems.append(f"{self.prefix}.{key}={self.task.get(key)!r}: expected {expected}")

    def integer(self, key: str, minimum: int = 1, allow_negative_one: bool = False,
                maximum: int = MAX_INTEGER, optional: bool = False) -> None:
        """An integer from ``minimum`` (1: positive, 0: or 0) to ``maximum``, or -1 when
        allowed (null when optional).

        The default maximum is what an MLX array dimension holds (2**31 - 1).
        """
        value = self.task.get(key)
        if value is None and optional:
            return
        if type(value) is int and value > maximum:
            self.fail(key, f"at most {maximum}")
            return
        ok = type(value) is int and (value >= minimum or (allow_negative_one and value == -1))
        if not ok:
            expect = ("a positive integer" if minimum == 1 else "a positive integer or 0"
                      if minimum == 0 else f"at least {minimum}")
            self.fail(key, expect + (" or -1" if allow_negative_one else "")
                      + (" or null" if optional else ""))

    def number(self, key: str, low: float, high: Optional[float] = None, expected: str = "",
               optional: bool = False) -> None:
        """A finite number in [low, high] (null allowed when optional)."""
        value = self.task.get(key)
        if value is None and optional:
            return
        ok = (isinstance(value, (int, float)) and not isinstance(value, bool)
              and math.isfinite(value) and value >= low and (high is None or value <= high))
        if not ok:
            self.fail(key, expected or (f"a number in {low}..{high}" if high is not None
                                        else f"a number >= {low}"))

    def boolean(self, key: str) -> None:
        if not isinstance(self.task.get(key, False), bool):
            self.fail(key, "true or false")

    def choice(self, key: str, choices: Sequence[Any], default: Any = None) -> None:
        if self.task.get(key, default) not in choices:
            self.fail(key, "one of " + ", ".join(
                "null" if c is None else str(c).lower() if isinstance(c, bool) else str(c)
                for c in choices))

    def data_file(self, key: str = "data") -> None:
        """An explicit data file must exist, not be empty and be UTF-8 text (null: the default file)."""
        value = self.task.get(key)
        if value is None:
            return
        if not isinstance(value, str) or not value:
            self.fail(key, "a file path or null")
            return
        path = Path(value).expanduser().absolute()
        problem = regular_file_problem(path)  # a FIFO or a device is never opened
        if problem:
            self.problems.append(f"{self.prefix}.{key}={value}: {path} {problem}")
        elif path.stat().st_size == 0:
            self.problems.append(f"{self.prefix}.{key}: {path} is empty")
        else:
            try:
                problem = utf8_problem(path)
            except OSError as e:
                problem = f"cannot be read: {e.strerror or e}"
            if problem:
                self.problems.append(f"{self.prefix}.{key}={value}: {path} {problem}")
