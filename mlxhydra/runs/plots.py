"""The summary figure of a sweep: the main metric against the swept numeric values."""

import io
import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .atomic import write_bytes_atomic
from .summary import FIXED


def _number(v: Any) -> Optional[float]:
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def plot(path: Path, rows: List[Dict[str, Any]], keys: Sequence[str], metric: str) -> bool:
    """Plot ``metric`` of the completed jobs against the swept numeric key(s).

    The first numeric key with the most values is the x axis; each combination
    of the other swept values is one line. A metric with a standard error
    (``<metric>_stderr``: perplexity, lm-eval scores) gets error bars.
    Returns False when nothing to plot.
    """
    def y_of(r):
        return _number(r.get(metric) if metric in FIXED else r["_metrics"].get(metric))

    def err_of(r):
        return _number(r["_metrics"].get(f"{metric}_stderr")) or 0.0

    done = [r for r in rows if r.get("status") == "completed" and y_of(r) is not None]
    if not done:
        return False
    numeric = [k for k in keys if all(_number(r["_overrides"].get(k)) is not None for r in done)]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    if numeric:
        x_key = max(numeric, key=lambda k: len({r["_overrides"][k] for r in done}))
        others = [k for k in keys if k != x_key]
        lines: Dict[str, List[Tuple[float, float, float]]] = {}
        for r in done:
            label = ", ".join(f"{k}={r['_overrides'].get(k)}" for k in others) or metric
            lines.setdefault(label, []).append((_number(r["_overrides"][x_key]), y_of(r), err_of(r)))
        for label, pts in lines.items():
            pts.sort()
            ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts],
                        marker="o", capsize=3, label=label)
        ax.set_xlabel(x_key)
        if len(lines) > 1 or others:
            ax.legend(fontsize="small")
    else:
        labels = [",".join(f"{k}={r['_overrides'].get(k)}" for k in keys) or str(r["job"]) for r in done]
        ax.bar(range(len(done)), [y_of(r) for r in done], yerr=[err_of(r) for r in done], capsize=3)
        ax.set_xticks(range(len(done)), labels, rotation=30, ha="right", fontsize="small")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} per job ({len(done)} completed)")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    write_bytes_atomic(path, buf.getvalue())
    return True
