"""The Pareto front of a sweep, marked in its summary: the jobs no other job beats on both
size (bits per weight) and quality.

:func:`pareto_front` is the front the summary figure draws and the one marked
on the summary's rows; anything with (bits per weight, metric) points can use it.
"""

import math
from typing import Any, Dict, List, Sequence, Tuple

from .columns import HIGHER_IS_BETTER, finite_number

# The quality metrics a front is marked for (higher or lower is better: columns.HIGHER_IS_BETTER).
QUALITY = ("kl_mean", "perplexity", "ln_perplexity_ratio", "accuracy", "top1_agreement")
COLUMN = "pareto"


def pareto_front(points: Sequence[Tuple[float, float]], maximize: bool = False) -> List[int]:
    """Indices of the points no other point beats on both x (lower) and y, sorted by x.

    Beaten means another point has at most its x and a y at least as good: of two
    points with the same y, the one with more x is off the front; of identical
    points, the first.

    Args:
        points: (x, y) pairs, e.g. (bits per weight, KL).
        maximize: y is better when higher (accuracy).
    """
    sign = -1.0 if maximize else 1.0
    order = sorted(range(len(points)), key=lambda i: (points[i][0], sign * points[i][1]))
    front, best = [], math.inf
    for i in order:
        y = sign * points[i][1]
        if y < best:
            front.append(i)
            best = y
    return front


def mark_front(rows: List[Dict[str, Any]], metric: str) -> bool:
    """Set ``row["pareto"]`` (True/False) on the completed rows with both values.

    Rows without them get nothing. Marks nothing, and returns False, unless
    ``metric`` is a quality metric and at least two jobs differ in bits per weight.
    """
    if metric not in QUALITY:
        return False
    done = [(r, finite_number(r.get("bits_per_weight")), finite_number((r.get("_metrics") or {}).get(metric)))
            for r in rows if r.get("status") == "completed"]
    done = [(r, x, y) for r, x, y in done if x is not None and y is not None]
    if len({x for _, x, _ in done}) < 2:
        return False
    on = set(pareto_front([(x, y) for _, x, y in done], metric in HIGHER_IS_BETTER))
    for i, (r, _, _) in enumerate(done):
        r[COLUMN] = i in on
    return True
