"""The summary figure of a sweep: the main metric against the swept numeric values,
or against bits per weight with the Pareto front when the summary marks one."""

import io
import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .atomic import write_bytes_atomic
from .pareto import COLUMN as PARETO
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
    of the other swept values is one line. Returns False when nothing to plot.
    """
    def y_of(r):
        return _number(r.get(metric) if metric in FIXED else r["_metrics"].get(metric))

    done = [r for r in rows if r.get("status") == "completed" and y_of(r) is not None]
    if not done:
        return False
    numeric = [k for k in keys if all(_number(r["_overrides"].get(k)) is not None for r in done)]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    if any(PARETO in r for r in done):
        _front(ax, [r for r in done if PARETO in r], keys, y_of, metric)
    elif numeric:
        x_key = max(numeric, key=lambda k: len({r["_overrides"][k] for r in done}))
        others = [k for k in keys if k != x_key]
        lines: Dict[str, List[Tuple[float, float]]] = {}
        for r in done:
            label = ", ".join(f"{k}={r['_overrides'].get(k)}" for k in others) or metric
            lines.setdefault(label, []).append((_number(r["_overrides"][x_key]), y_of(r)))
        for label, pts in lines.items():
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
        ax.set_xlabel(x_key)
        if len(lines) > 1 or others:
            ax.legend(fontsize="small")
    else:
        labels = [",".join(f"{k}={r['_overrides'].get(k)}" for k in keys) or str(r["job"]) for r in done]
        ax.bar(range(len(done)), [y_of(r) for r in done])
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


def _front(ax, rows: List[Dict[str, Any]], keys: Sequence[str], y_of, metric: str) -> None:
    """``metric`` against bits per weight: the jobs by their swept values, the front as a line."""
    groups: Dict[str, List[Dict[str, Any]]] = {}
    others = [k for k in keys if not any(k.endswith(b) for b in (".bits", ".group_size"))]
    for r in rows:
        label = ", ".join(f"{k}={r['_overrides'].get(k)}" for k in others) or metric
        groups.setdefault(label, []).append(r)
    for label, members in groups.items():
        ax.scatter([r["bits_per_weight"] for r in members], [y_of(r) for r in members],
                   label=label, zorder=3)
    on = sorted((r["bits_per_weight"], y_of(r)) for r in rows if r[PARETO])
    ax.plot([p[0] for p in on], [p[1] for p in on], color="black", linewidth=1, zorder=2,
            label="Pareto front")
    if metric.startswith("kl") or metric.endswith("perplexity"):
        ax.set_yscale("log")
    ax.set_xlabel("bits per weight")
    ax.legend(fontsize="small")
