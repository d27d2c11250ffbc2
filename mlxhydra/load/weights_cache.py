"""Float weights reused by the jobs of one multirun process (``sweep.reuse_weights=true``).

A sweep over quantization settings loads the same model directory N times.
By default each job reads the files again: from the OS page cache after the
first job, which costs little and keeps each job's memory to the quantized
model plus a layer. With ``sweep.reuse_weights=true`` and a key (the
directory's weights fingerprint, given by the job only in multirun mode)
the first job's opened weights are kept and later jobs get a
shallow copy of the same dict: the arrays are read from disk once (MLX keeps
an evaluated array's data while it is referenced) and each job only
quantizes. MLX arrays are immutable and the loader pops entries from its own
copy, so a job never changes what the next one gets.

Only one model's weights are kept (a new key drops the old entry), and
nothing is kept without a key, so a single run's memory is unchanged.
"""

import threading
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

_lock = threading.Lock()
_entry: Dict[str, dict] = {}


def open_weights(key: Optional[str], opener: Callable[[], dict]) -> Tuple[dict, Optional[str]]:
    """Weights for one job: ``(weights, "hit" | "miss" | None)``.

    Args:
        key: The weights fingerprint, or None to read without caching.
        opener: Reads the weight files into a dict (``loader.read_weights``).

    Returns:
        A dict the caller may change (pop, replace entries) freely, and
        whether it came from the cache (None when no key was given).
    """
    if key is None:
        return opener(), None
    with _lock:
        cached = _entry.get(key)
        if cached is not None:
            return dict(cached), "hit"
        _entry.clear()  # at most one model's float weights in memory
    weights = opener()
    with _lock:
        _entry[key] = dict(weights)
    return weights, "miss"


def clear() -> None:
    """Drop the cached weights (their memory is freed once no model uses them)."""
    with _lock:
        _entry.clear()


def cached_keys() -> list:
    """The keys held now (for tests and logs)."""
    with _lock:
        return list(_entry)


def job_key(sweep: Mapping[str, Any], fingerprint: Optional[str]) -> Optional[str]:
    """The cache key for this job: the fingerprint in a multirun, else None.

    Args:
        sweep: The ``sweep`` settings; ``reuse_weights: true`` turns the reuse on.
        fingerprint: The weights fingerprint of the job's model directory.
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not fingerprint or not sweep.get("reuse_weights", False):
        return None
    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    return fingerprint
