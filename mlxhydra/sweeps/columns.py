"""The columns of a sweep's summary rows that both the summary and its figure read."""

import math
from typing import Any, Optional

# Columns of every summary row, after the job number and the swept keys.
FIXED = ["job", "status", "bits_per_weight", "parameters", "peak_memory_mb", "load_s",
         "weights_cache"]

# Metrics where higher is better (the rest: lower is better).
HIGHER_IS_BETTER = ("accuracy", "top1_agreement", "generation_tps", "prompt_tps",
                    "tokens_per_second")


def finite_number(v: Any) -> Optional[float]:
    """A metric cell as a float, or None when it is not a finite number (a bool is not one)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return float(v)
