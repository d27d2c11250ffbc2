"""The rank of each job of a sweep by its headline metric, marked in its summary.

A sweep over learning rates or bit widths is read for its best job first: the
``rank`` column says where each completed job stands (1 is best), so the
summary can be read, or sorted, without knowing which way the metric points.
"""

from typing import Any, Dict, List

from .columns import HIGHER_IS_BETTER, finite_number

COLUMN = "rank"


def mark_ranks(rows: List[Dict[str, Any]], metric: str) -> bool:
    """Set ``row["rank"]`` on the completed rows with a finite ``metric``; True when marked.

    Competition ranking: jobs with equal values share a rank and the next rank
    skips (1, 1, 3). Bits per weight is a size, not a result, and ranks nothing;
    neither does a sweep with fewer than two ranked jobs.
    """
    if metric == "bits_per_weight":
        return False
    scored = [(r, finite_number((r.get("_metrics") or {}).get(metric)))
              for r in rows if r.get("status") == "completed"]
    scored = [(r, -y if metric in HIGHER_IS_BETTER else y) for r, y in scored if y is not None]
    if len(scored) < 2:
        return False
    for r, y in scored:
        r[COLUMN] = 1 + sum(1 for _, other in scored if other < y)
    return True
