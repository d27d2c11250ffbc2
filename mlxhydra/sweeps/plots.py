"""The summary figure of a sweep: the metric against bits per weight, readable at a glance.

- x is bits per weight (what quantization buys), each point labelled with
  its setting; y is the task's metric, on a log axis for KL (8-bit and 2-bit
  differ by orders of magnitude), with standard-error bars where the task
  computes them and binomial 95% intervals for accuracy;
- searches (``sweep.objective``): the budget line, penalised trials marked,
  the best trial, and the Pareto front of metric against bits per weight;
- a second panel of tokens/s against the metric when the sweep has bench
  results for the same settings.

:func:`plot_against_bits` is general: anything
with (bits per weight, metric) points can use them.
"""

import io
import math
import threading
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..record.atomic import write_bytes_atomic
from ..stats import wilson_interval
from .columns import FIXED, HIGHER_IS_BETTER
from .pareto import pareto_front

# Metrics drawn on a log axis: they span orders of magnitude across bit widths.
LOG_SCALE = ("kl_", "delta_p", "ln_perplexity_ratio")
SPEED = "generation_tps"


_warming: List[threading.Thread] = []


def warm_up() -> None:
    """Import what the figure needs (matplotlib: a second or more) in a daemon thread, once per
    process, while a sweep's jobs run: their time is mostly MLX's own threads, without the GIL,
    and the summary at the end no longer waits for the import."""
    if not _warming:
        _warming.append(threading.Thread(target=_import_matplotlib, name="mlxhydra-summary-imports",
                                         daemon=True))
        _warming[0].start()


def _import_matplotlib() -> None:
    try:
        import matplotlib.backends.backend_agg  # noqa: F401  (savefig's PNG canvas)
        import matplotlib.figure  # noqa: F401
    except Exception:  # the summary imports it again, and says what fails
        pass


def new_figure(**kwargs: Any) -> Any:
    """A matplotlib Figure of its own: no pyplot, no backend chosen.

    pyplot's state (its current figure, the process's backend) belongs to the
    caller: a notebook that writes a sweep's summary keeps its inline plots.
    The Figure renders with matplotlib's Agg canvas when saved as PNG, and is
    freed with its last reference (pyplot never held it).
    """
    from matplotlib.figure import Figure

    return Figure(**kwargs)


def _number(v: Any) -> Optional[float]:
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def error_bar(metric: str, metrics: Dict[str, Any], value: float) -> Optional[Tuple[float, float]]:
    """(below, above) the value: accuracy's 95% interval, else the task's standard error."""
    if metric == "accuracy" and _number(metrics.get("total")):
        low, high = wilson_interval(float(metrics.get("correct") or 0), float(metrics["total"]))
        return (max(0.0, value - low), max(0.0, high - value))
    se = _number(metrics.get(f"{metric}_stderr"))
    return (se, se) if se is not None else None


def setting_label(overrides: Dict[str, Any], keys: Sequence[str]) -> str:
    """``bits=4 group_size=64`` from the swept keys' values (the last part of each key)."""
    return " ".join(f"{k.rsplit('.', 1)[-1].lstrip('+~')}={overrides.get(k)}" for k in keys)


def plot_against_bits(ax: Any, points: List[Dict[str, Any]], metric: str, *,
                      budget: Optional[float] = None, best: Optional[int] = None) -> None:
    """Draw ``metric`` against bits per weight on ``ax``.

    Args:
        points: dicts with ``x`` (bits per weight), ``y``, ``label``, optional
            ``err`` ((below, above)) and ``penalised`` (bool).
        budget: a vertical budget line at this many bits per weight.
        best: index in ``points`` of the best trial, marked with a star.
    """
    kept = [p for p in points if not p.get("penalised")]
    for group, style in ((kept, dict(fmt="o", color="C0", label="jobs")),
                         ([p for p in points if p.get("penalised")],
                          dict(fmt="x", color="C3", label="penalised (sweep.penalty returned)"))):
        if not group:
            continue
        errs = [p.get("err") or (0.0, 0.0) for p in group]
        has_err = any(e != (0.0, 0.0) for e in errs)
        ax.errorbar([p["x"] for p in group], [p["y"] for p in group],
                    yerr=[[e[0] for e in errs], [e[1] for e in errs]] if has_err else None,
                    capsize=3, linestyle="none", **style)
    for p in points:
        ax.annotate(p["label"], (p["x"], p["y"]), textcoords="offset points", xytext=(4, 4),
                    fontsize="x-small")
    if len(kept) >= 2:
        front = pareto_front([(p["x"], p["y"]) for p in kept], metric in HIGHER_IS_BETTER)
        ax.plot([kept[i]["x"] for i in front], [kept[i]["y"] for i in front], color="C1",
                drawstyle="steps-post", label="Pareto front")
    if best is not None:
        ax.plot([points[best]["x"]], [points[best]["y"]], marker="*", markersize=14, color="C2",
                linestyle="none", label=f"best: {points[best]['label']}")
    if budget is not None:
        ax.axvline(budget, color="C3", linestyle="--", label=f"budget {budget:g} bits/weight")
    ys = [p["y"] for p in points]
    if metric.startswith(LOG_SCALE) and ys and min(ys) > 0:
        ax.set_yscale("log")
    ax.set_xlabel("bits per weight")
    ax.set_ylabel(metric)
    ax.grid(True, alpha=0.3, which="both")
    ax.legend(fontsize="x-small")


def _by_setting(rows: List[Dict[str, Any]], keys: Sequence[str]) -> Dict[str, List[Dict[str, Any]]]:
    """Rows grouped by their swept values other than the task."""
    groups: Dict[str, List[Dict[str, Any]]] = {}
    for r in rows:
        setting = setting_label(r["_overrides"], [k for k in keys if not k.startswith("task")])
        groups.setdefault(setting, []).append(r)
    return groups


def figure(rows: List[Dict[str, Any]], keys: Sequence[str], metric: str,
           sweep: Optional[Dict[str, Any]] = None):
    """The summary figure (a matplotlib Figure), or None when nothing can be plotted.

    Args:
        rows, keys: from :func:`mlxhydra.sweeps.summary.collect`.
        metric: the metric to plot.
        sweep: the sweep policy (``objective``, ``max_bits_per_weight``, ``penalty``).
    """
    sweep = sweep or {}

    def y_of(r):
        return _number(r.get(metric) if metric in FIXED else r["_metrics"].get(metric))

    done = [r for r in rows if r.get("status") == "completed" and y_of(r) is not None]
    if not done:
        return None
    if metric == "bits_per_weight" or any(_number(r.get("bits_per_weight")) is None for r in done):
        return _figure_by_key(done, keys, metric, y_of)
    budget = _number(sweep.get("max_bits_per_weight"))
    penalty = _number(sweep.get("penalty"))
    # label with the swept values that differ between the plotted jobs (not task=kl on each)
    label_keys = [k for k in keys if len({r["_overrides"].get(k) for r in done}) > 1] or list(keys)
    points = []
    for r in done:
        y = y_of(r)
        objective = _number(r.get("objective"))
        over = budget is not None and r["bits_per_weight"] > budget
        points.append({"x": r["bits_per_weight"], "y": y, "job": r["job"],
                       "label": setting_label(r["_overrides"], label_keys) or str(r["job"]),
                       "err": error_bar(metric, r["_metrics"], y), "objective": objective,
                       "penalised": over or (penalty is not None and objective == penalty)})
    best = None
    if sweep.get("objective"):
        scored = [i for i, p in enumerate(points) if not p["penalised"] and p["objective"] is not None]
        if scored:
            best = min(scored, key=lambda i: points[i]["objective"])
    speed = _speed_pairs(rows, keys, metric, y_of)
    fig = new_figure(figsize=(12 if speed else 7.5, 5))
    axes = fig.subplots(1, 2 if speed else 1, squeeze=False)
    ax = axes[0][0]
    plot_against_bits(ax, points, metric, budget=budget, best=best)
    ax.set_title(f"{metric} against bits per weight ({len(done)} completed of {len(rows)} jobs)")
    if speed:
        _plot_speed(axes[0][1], speed, metric)
    fig.tight_layout()
    return fig


def _speed_pairs(rows, keys, metric, y_of) -> List[Dict[str, Any]]:
    """(tokens/s, metric, label) for each setting with both a bench job and a quality job."""
    if metric == SPEED:
        return []
    pairs = []
    for label, group in _by_setting([r for r in rows if r.get("status") == "completed"], keys).items():
        speeds = [_number(r["_metrics"].get(SPEED)) for r in group if r.get("_task") == "bench"]
        quality = [y_of(r) for r in group if y_of(r) is not None]
        if speeds and speeds[0] is not None and quality:
            pairs.append({"x": speeds[0], "y": quality[0], "label": label})
    return pairs


def _plot_speed(ax, pairs, metric) -> None:
    ax.plot([p["x"] for p in pairs], [p["y"] for p in pairs], "o", color="C4")
    for p in pairs:
        ax.annotate(p["label"], (p["x"], p["y"]), textcoords="offset points", xytext=(4, 4),
                    fontsize="x-small")
    if metric.startswith(LOG_SCALE) and min(p["y"] for p in pairs) > 0:
        ax.set_yscale("log")
    ax.set_xlabel("generation tokens/s (task=bench)")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} against speed")
    ax.grid(True, alpha=0.3, which="both")


def _figure_by_key(done, keys, metric, y_of):
    """The metric against the swept numeric key (when there are no bits per weight to plot against)."""
    numeric = [k for k in keys if all(_number(r["_overrides"].get(k)) is not None for r in done)]
    fig = new_figure(figsize=(7, 4.5))
    ax = fig.subplots()
    if numeric:
        x_key = max(numeric, key=lambda k: len({r["_overrides"][k] for r in done}))
        others = [k for k in keys if k != x_key]
        lines: Dict[str, List[Tuple[float, float]]] = {}
        for r in done:
            label = setting_label(r["_overrides"], others) or metric
            lines.setdefault(label, []).append((_number(r["_overrides"][x_key]), y_of(r)))
        for label, pts in lines.items():
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
        ax.set_xlabel(x_key)
        if len(lines) > 1 or others:
            ax.legend(fontsize="small")
    else:
        labels = [setting_label(r["_overrides"], keys) or str(r["job"]) for r in done]
        ax.bar(range(len(done)), [y_of(r) for r in done])
        ax.set_xticks(range(len(done)), labels, rotation=30, ha="right", fontsize="small")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} per job ({len(done)} completed)")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    return fig


def plot(path: Path, rows: List[Dict[str, Any]], keys: Sequence[str], metric: str,
         sweep: Optional[Dict[str, Any]] = None) -> bool:
    """Write the summary figure to ``path`` (PNG, atomically); False when nothing to plot."""
    fig = figure(rows, keys, metric, sweep)
    if fig is None:
        return False
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    write_bytes_atomic(path, buf.getvalue())
    return True
