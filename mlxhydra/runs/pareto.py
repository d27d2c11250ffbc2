"""The Pareto front of a sweep: the jobs no other job beats on both size and quality.

A completed job is on the front when no other completed job has at most its
bits per weight and a metric at least as good, one of the two strictly
better. The summary marks the front for the quality metrics below.
"""

import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

# Quality metrics and whether lower is better.
LOWER_IS_BETTER = {"kl_mean": True, "perplexity": True, "ln_perplexity_ratio": True,
                   "accuracy": False, "top1_agreement": False}
COLUMN = "pareto"


def front(points: Sequence[Tuple[float, float]], lower_is_better: bool = True) -> List[bool]:
    """For each ``(bits_per_weight, metric)`` point, whether it is on the Pareto front."""
    sign = 1.0 if lower_is_better else -1.0
    on = []
    for i, (x, y) in enumerate(points):
        dominated = any(
            xo <= x and sign * yo <= sign * y and (xo < x or sign * yo < sign * y)
            for j, (xo, yo) in enumerate(points) if j != i)
        on.append(not dominated)
    return on


def _number(v: Any) -> Optional[float]:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return float(v)


def mark_front(rows: List[Dict[str, Any]], metric: str) -> bool:
    """Set ``row["pareto"]`` (True/False) on the completed rows with both values.

    Rows without them get nothing. Marks nothing, and returns False, unless
    ``metric`` is a quality metric and at least two jobs differ in bits per weight.
    """
    if metric not in LOWER_IS_BETTER:
        return False
    done = [(r, _number(r.get("bits_per_weight")), _number((r.get("_metrics") or {}).get(metric)))
            for r in rows if r.get("status") == "completed"]
    done = [(r, x, y) for r, x, y in done if x is not None and y is not None]
    if len({x for _, x, _ in done}) < 2:
        return False
    flags = front([(x, y) for _, x, y in done], LOWER_IS_BETTER[metric])
    for (r, _, _), flag in zip(done, flags):
        r[COLUMN] = flag
    return True
