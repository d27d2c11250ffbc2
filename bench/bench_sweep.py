"""Sweep benchmark: one k-job mlxhydra sweep vs k separate mlx-lm load+quantize runs.

    python bench/bench_sweep.py                 # bits 2,3,4,5,6,8 at group size 64
    python bench/bench_sweep.py --repeats 3 --bits 2 4 8
    python bench/bench_sweep.py --cache cold --cases sweep_quant sweep_cache   # as root

Both sides quantize bench_load.py's cached ~1.1B float16 llama
(``bench/.cache/llama-1b``, built on first use) to each bit width:

- baseline: ``bench/mlx_lm_load.py DIR --bits B`` once per width, each its own
  process (``mlx_lm.utils.load_model`` + ``quantize_model``): N reads of the
  float weights; wall times add up, peak RSS is the largest process's.
- candidate: ``python -m mlxhydra -m model=DIR quant.bits=B1,B2,...`` — one
  process with Hydra's basic launcher and the default settings (each job reads the
  weight files and quantizes layer by layer), N quantizations, run records and the
  summary files.

``--cases sweep_cache`` measures the same sweep with ``sweep.reuse_weights=false`` (the
default) vs true (the float weights read once and kept, mlxhydra/load/weights_cache.py).
``--cases sweep_other --other-source DIR`` measures the same sweep run from another checkout
(``git archive main | tar -x -C DIR``: before a change) vs this one.

``--cache cold`` empties the OS page cache before every measurement (``sync`` and
``/proc/sys/vm/drop_caches``: Linux, as root; it slows the whole machine for a moment), so
the first read of the weights in each measurement comes from the disk; ``warm`` (default)
leaves the file in the page cache, as after the warm-up.

The measuring (fresh processes, ``os.wait4`` peak RSS, alternating order,
one warm-up) is bench_load.py's; results go to ``bench/results_sweep.json``.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_load as bl  # noqa: E402

RESULTS = bl.BENCH / "results_sweep.json"
BITS = (2, 3, 4, 5, 6, 8)
GROUP_SIZE = 64


def sweep_records(ctx: bl.Context) -> Dict[str, Any]:
    """Figures of the candidate's sweep: jobs completed, cache hits, mx peak."""
    runs = [json.loads(p.read_text()) for p in (ctx.workdir / "outputs").rglob("run.json")]
    bad = [r.get("status") for r in runs if r.get("status") != "completed"]
    if bad:
        raise RuntimeError(f"mlxhydra sweep jobs not completed: {bad}")
    summaries = list((ctx.workdir / "outputs").rglob("summary.csv"))
    peaks = [r["peak_memory_bytes"] for r in runs if r.get("peak_memory_bytes") is not None]
    return {
        "jobs": len(runs),
        "cache": sorted(str(r.get("weights_cache")) for r in runs),
        "summary_written": bool(summaries),
        "bits_per_weight": sorted(r["quantization"]["bits_per_weight"] for r in runs),
        "mx_peak_bytes": max(peaks) if peaks else None,
        "job_load_s": [round(sum(r["times"].get(k, 0.0) for k in ("instantiate", "load_weights", "quantize")), 2)
                       for r in sorted(runs, key=lambda r: r.get("job_num") or 0)],
    }


def drop_page_cache() -> None:
    """Write dirty pages and empty the OS page cache (Linux, root)."""
    subprocess.run(["sync"], check=True)
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def make_case(bits: Sequence[int], group_size: int, before=None) -> bl.Case:
    """The side-by-side case for these bit widths (registered in bench_load's registry)."""
    widths = ",".join(str(b) for b in bits)
    return bl.register_case(
        "sweep_quant",
        f"{len(bits)} quantizations (bits {widths}, group {group_size}): "
        f"{len(bits)} mlx-lm processes vs one mlxhydra -m sweep",
        baseline=bl.Side(
            f"{len(bits)} x mlx-lm load+quantize",
            lambda ctx: [[bl.PY, str(bl.BENCH / "mlx_lm_load.py"), str(ctx.model_dir),
                          "--bits", str(b), "--group-size", str(group_size)] for b in bits],
            before=before),
        candidate=bl.Side(
            f"mlxhydra -m ({len(bits)} jobs)",
            lambda ctx: [bl.mlxhydra_cli("-m", f"model={ctx.model_dir}", f"quant.bits={widths}",
                                         f"quant.group_size={group_size}", "task=load")],
            collect=sweep_records, before=before),
        targets={"wall_ratio": 0.8, "rss_ratio": 0.7},
    )


def make_cache_case(bits: Sequence[int], group_size: int, before=None) -> bl.Case:
    """The weights cache alone: the same sweep with sweep.reuse_weights=false vs true."""
    widths = ",".join(str(b) for b in bits)

    def sweep(reuse: bool):
        return lambda ctx: [bl.mlxhydra_cli("-m", f"model={ctx.model_dir}", f"quant.bits={widths}",
                                            f"quant.group_size={group_size}", "task=load",
                                            f"sweep.reuse_weights={str(reuse).lower()}")]

    return bl.register_case(
        "sweep_cache",
        f"the same {len(bits)}-job mlxhydra sweep without and with the weights cache",
        baseline=bl.Side("mlxhydra -m reuse_weights=false", sweep(False), collect=sweep_records,
                         before=before),
        candidate=bl.Side("mlxhydra -m reuse_weights=true", sweep(True), collect=sweep_records,
                          before=before),
    )


def make_other_case(bits: Sequence[int], group_size: int, other: Path, before=None) -> bl.Case:
    """The same sweep run from another checkout (``--other-source``: before a change) vs this one."""
    widths = ",".join(str(b) for b in bits)

    def sweep(source: Path):
        return lambda ctx: [["env", f"PYTHONPATH={source}", bl.PY, "-m", "mlxhydra", "-m",
                             f"model={ctx.model_dir}", f"quant.bits={widths}",
                             f"quant.group_size={group_size}", "task=load"]]

    return bl.register_case(
        "sweep_other",
        f"the same {len(bits)}-job mlxhydra sweep from {other} vs this checkout",
        baseline=bl.Side(f"mlxhydra -m from {other}", sweep(other), collect=sweep_records, before=before),
        candidate=bl.Side("mlxhydra -m (this checkout)", sweep(bl.ROOT), collect=sweep_records,
                          before=before),
    )


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=2, help="measurements per side (median taken)")
    p.add_argument("--bits", type=int, nargs="+", default=list(BITS))
    p.add_argument("--group-size", type=int, default=GROUP_SIZE)
    p.add_argument("--no-warmup", action="store_true")
    p.add_argument("--cases", nargs="+", default=["sweep_quant"],
                   choices=["sweep_quant", "sweep_cache", "sweep_other"],
                   help="sweep_cache: the sweep without vs with the weights cache; sweep_other: "
                        "the sweep from --other-source vs this checkout")
    p.add_argument("--other-source", type=Path, default=None,
                   help="another checkout of mlxhydra (e.g. git archive of main), for sweep_other")
    p.add_argument("--cache", choices=["warm", "cold"], default="warm",
                   help="cold: empty the OS page cache before every measurement (Linux, root)")
    p.add_argument("--output", type=Path, default=RESULTS)
    a = p.parse_args(argv)
    if a.cache == "cold" and os.geteuid() != 0:
        p.error("--cache cold needs root (it writes /proc/sys/vm/drop_caches)")
    before = drop_page_cache if a.cache == "cold" else None
    if "sweep_other" in a.cases and a.other_source is None:
        p.error("sweep_other needs --other-source DIR")
    makers = {"sweep_quant": make_case, "sweep_cache": make_cache_case,
              "sweep_other": lambda bits, gs, b: make_other_case(bits, gs, a.other_source.resolve(), b)}
    cases = [makers[name](a.bits, a.group_size, before) for name in a.cases]
    model_dir = bl.ensure_model()
    load_before = os.getloadavg()
    results = bl.run_cases(cases, a.repeats, model_dir, warmup=not a.no_warmup)
    print()
    print(bl.table(results))
    for r in results:
        for which in ("baseline", "candidate"):
            c = r[which]["runs"][-1]
            if "jobs" in c:
                print(f"{r[which]['label']}: {c['jobs']} jobs, weights cache {c['cache']}, "
                      f"per-job load+quantize s {c['job_load_s']}")
    a.output.write_text(json.dumps({
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "repeats": a.repeats, "bits": a.bits,
        "group_size": a.group_size, "page_cache": a.cache, "model": bl.LLAMA_1B,
        "machine": {**bl.machine(), "load_average_before": load_before},
        "cases": results,
    }, indent=2) + "\n")
    print(f"written {a.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
