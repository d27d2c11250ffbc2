"""Load benchmark: mlxhydra against mlx-lm (and a bare Hydra app), side by side.

    python bench/bench_load.py                  # every case, 3 interleaved repeats
    python bench/bench_load.py --repeats 5 --cases float_load quant4_load
    python bench/bench_load.py --list           # the registered cases

The first run builds a random ~1.1B-parameter float16 llama (TinyLlama-1.1B's
shape) with mlx-lm's own classes into ``bench/.cache/llama-1b`` (git-ignored,
about 2.2 GB); later runs reuse it (``--rebuild`` makes it again).

Every measurement runs in a fresh subprocess, started from an empty temporary
directory. Wall time is measured around the whole process, CPU time (user + system)
from its rusage (less sensitive to other load on the machine); peak RSS is the
child's ``ru_maxrss`` from ``os.wait4``; ``mx.get_peak_memory()`` comes from
the child (mlx-lm side: its ``BENCH_RESULT`` line; mlxhydra side: run.json).
The two sides of a case alternate (A B, then B A, ...) so that drift in the
machine's load hits both; one untimed warm-up per case puts the weight file
in the page cache first. Results: a table on stdout and ``bench/results.json``.

Add a case with :func:`register_case` (see the cases at the end of the file).
"""

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
CACHE = BENCH / ".cache"
RESULTS = BENCH / "results.json"
PY = sys.executable

# TinyLlama-1.1B's shape (random weights, float16).
LLAMA_1B = {
    "model_type": "llama", "hidden_size": 2048, "num_hidden_layers": 22,
    "intermediate_size": 5632, "num_attention_heads": 32, "num_key_value_heads": 4,
    "rms_norm_eps": 1e-5, "vocab_size": 32000, "max_position_embeddings": 2048,
    "rope_theta": 10000.0, "tie_word_embeddings": False, "torch_dtype": "float16",
}


# --------------------------------------------------------------------------- cases

@dataclass
class Context:
    """What the commands of a case may refer to."""

    model_dir: Path  # the cached ~1.1B float16 llama
    workdir: Path  # this run's empty working directory


@dataclass
class Side:
    """One side of a comparison.

    commands: the processes of one measurement, run one after another (wall
        times add up, peak RSS is the largest).
    collect: extra figures read after a measurement, e.g. from files the
        process wrote into ``ctx.workdir``; ``BENCH_RESULT {json}`` lines on
        stdout are merged in automatically.
    """

    label: str
    commands: Callable[[Context], List[List[str]]]
    collect: Optional[Callable[[Context], Dict[str, Any]]] = None
    before: Optional[Callable[[], None]] = None  # untimed, before each measurement (drop caches)


@dataclass
class Case:
    name: str
    description: str
    baseline: Side
    candidate: Side
    # Targets: "wall_ratio" (candidate / baseline median wall), "rss_ratio" (the same
    # for peak RSS) and "candidate_rss_bytes" (candidate median peak RSS), each an upper bound.
    targets: Dict[str, float] = field(default_factory=dict)
    needs_model: bool = True
    repeats: Optional[int] = None  # overrides --repeats for cheap cases


CASES: Dict[str, Case] = {}


def register_case(name: str, description: str, baseline: Side, candidate: Side, *,
                  targets: Optional[Dict[str, float]] = None, needs_model: bool = True,
                  repeats: Optional[int] = None) -> Case:
    """Add a case to the benchmark (run in registration order).

    A side may run several processes per measurement; e.g. a sweep case::

        register_case(
            "sweep6_quant",
            "6-job quant sweep vs 6 separate mlx-lm load+quantize runs",
            baseline=Side("6 x mlx-lm load+quantize", lambda ctx: [
                [PY, str(BENCH / "mlx_lm_load.py"), str(ctx.model_dir), "--bits", str(b)]
                for b in (2, 3, 4, 5, 6, 8)]),
            candidate=Side("mlxhydra -m (6 jobs)", lambda ctx: [mlxhydra_cli(
                "-m", f"model={ctx.model_dir}", "quant.bits=2,3,4,5,6,8")],
                collect=mlxhydra_records),
            targets={"wall_ratio": 1.0})
    """
    case = Case(name, description, baseline, candidate, dict(targets or {}), needs_model, repeats)
    CASES[name] = case
    return case


def mlxhydra_cli(*overrides: str) -> List[str]:
    return [PY, "-m", "mlxhydra", *overrides]


def mlxhydra_records(ctx: Context) -> Dict[str, Any]:
    """Figures from the run.json files a mlxhydra command wrote under ctx.workdir."""
    runs = sorted((ctx.workdir / "outputs").rglob("run.json"))
    if not runs:
        return {}
    records = [json.loads(p.read_text()) for p in runs]
    bad = [r.get("status") for r in records if r.get("status") != "completed"]
    if bad:
        raise RuntimeError(f"mlxhydra run not completed: {bad}")
    peaks = [r.get("peak_memory_bytes") for r in records if r.get("peak_memory_bytes") is not None]
    out: Dict[str, Any] = {"runs": len(records)}
    if peaks:
        out["mx_peak_bytes"] = max(peaks)
    if len(records) == 1:
        out["times"] = records[0].get("times")
    return out


# --------------------------------------------------------------------------- model

def ensure_model(rebuild: bool = False) -> Path:
    """Build the ~1.1B float16 llama once (in a subprocess) and return its directory."""
    target = CACHE / "llama-1b"
    stamp = target / "bench_config.json"
    if not rebuild and stamp.is_file() and json.loads(stamp.read_text()) == LLAMA_1B:
        return target
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = CACHE / "llama-1b.building"
    shutil.rmtree(tmp, ignore_errors=True)
    sets = [f"{k}={json.dumps(v)}" for k, v in LLAMA_1B.items() if k != "model_type"]
    print(f"building {target} (~2.2 GB, once) ...", flush=True)
    t = time.perf_counter()
    subprocess.run([PY, str(ROOT / "tests" / "helpers" / "random_models.py"), str(tmp),
                    "--dtype", "float16", "--set", *sets], check=True)
    stamp_tmp = tmp / "bench_config.json"
    stamp_tmp.write_text(json.dumps(LLAMA_1B))
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    print(f"built in {time.perf_counter() - t:.1f} s", flush=True)
    return target


# --------------------------------------------------------------------------- measuring

def run_process(argv: Sequence[str], cwd: Path, log: Path) -> Dict[str, Any]:
    """Run one process; wall time, its peak RSS (os.wait4) and its BENCH_RESULT lines."""
    env = dict(os.environ)
    env.pop("HYDRA_FULL_ERROR", None)
    with open(log, "wb") as out:
        t = time.perf_counter()
        proc = subprocess.Popen(list(argv), cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t
    proc.returncode = os.waitstatus_to_exitcode(status)
    text = log.read_text(errors="replace")
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}):\n{text[-3000:]}")
    rss = usage.ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    result: Dict[str, Any] = {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime,
                              "max_rss_bytes": rss}
    for line in text.splitlines():
        if line.startswith("BENCH_RESULT "):
            result.update(json.loads(line[len("BENCH_RESULT "):]))
    return result


def measure(side: Side, model_dir: Optional[Path]) -> Dict[str, Any]:
    """One measurement of one side, in a fresh empty working directory."""
    if side.before is not None:
        side.before()
    with tempfile.TemporaryDirectory(prefix="mlxhydra-bench-") as tmp:
        ctx = Context(model_dir=model_dir, workdir=Path(tmp))
        total: Dict[str, Any] = {"wall_s": 0.0, "cpu_s": 0.0, "max_rss_bytes": 0}
        for i, argv in enumerate(side.commands(ctx)):
            r = run_process(argv, ctx.workdir, ctx.workdir / f".bench-{i}.log")
            total["wall_s"] += r.pop("wall_s")
            total["cpu_s"] += r.pop("cpu_s")
            total["max_rss_bytes"] = max(total["max_rss_bytes"], r.pop("max_rss_bytes"))
            if "mx_peak_bytes" in r:
                total["mx_peak_bytes"] = max(total.get("mx_peak_bytes", 0), r.pop("mx_peak_bytes"))
            total.update(r)
        if side.collect is not None:
            extra = side.collect(ctx)
            if "mx_peak_bytes" in extra:
                total["mx_peak_bytes"] = max(total.get("mx_peak_bytes", 0), extra.pop("mx_peak_bytes"))
            total.update(extra)
        return total


def median_of(runs: List[Dict[str, Any]], key: str) -> Optional[float]:
    values = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(values) if values else None


def summarize(case: Case, runs: Dict[str, List[Dict[str, Any]]]) -> Dict[str, Any]:
    sides = {}
    for which in ("baseline", "candidate"):
        rs = runs[which]
        sides[which] = {
            "label": getattr(case, which).label,
            "wall_s": median_of(rs, "wall_s"),
            "cpu_s": median_of(rs, "cpu_s"),
            "max_rss_bytes": median_of(rs, "max_rss_bytes"),
            "mx_peak_bytes": median_of(rs, "mx_peak_bytes"),
            "per_job_s": median_of(rs, "per_job_s"),  # cases that time each job (sweep20_fixed)
            "runs": rs,
        }
    b, c = sides["baseline"], sides["candidate"]
    ratios = {
        "wall": c["wall_s"] / b["wall_s"],
        "cpu": c["cpu_s"] / b["cpu_s"],
        "max_rss": c["max_rss_bytes"] / b["max_rss_bytes"],
    }
    if b["mx_peak_bytes"] and c["mx_peak_bytes"]:
        ratios["mx_peak"] = c["mx_peak_bytes"] / b["mx_peak_bytes"]
    if b["per_job_s"] and c["per_job_s"]:
        ratios["per_job"] = c["per_job_s"] / b["per_job_s"]
    checks = {}
    if "wall_ratio" in case.targets:
        checks["wall_ratio"] = {"target": case.targets["wall_ratio"], "value": ratios["wall"],
                                "ok": ratios["wall"] <= case.targets["wall_ratio"]}
    if "rss_ratio" in case.targets:
        checks["rss_ratio"] = {"target": case.targets["rss_ratio"], "value": ratios["max_rss"],
                               "ok": ratios["max_rss"] <= case.targets["rss_ratio"]}
    if "candidate_rss_bytes" in case.targets:
        checks["candidate_rss_bytes"] = {
            "target": case.targets["candidate_rss_bytes"], "value": c["max_rss_bytes"],
            "ok": c["max_rss_bytes"] <= case.targets["candidate_rss_bytes"]}
    return {"name": case.name, "description": case.description, **sides,
            "ratios": ratios, "targets": checks}


def run_cases(cases: List[Case], repeats: int, model_dir: Optional[Path],
              warmup: bool = True) -> List[Dict[str, Any]]:
    runs = {c.name: {"baseline": [], "candidate": []} for c in cases}
    if warmup:
        for case in cases:
            print(f"[warm-up] {case.name}", flush=True)
            measure(case.baseline, model_dir)
            measure(case.candidate, model_dir)
    for rep in range(max(c.repeats or repeats for c in cases)):
        for case in cases:
            if rep >= (case.repeats or repeats):
                continue
            order = ("baseline", "candidate") if rep % 2 == 0 else ("candidate", "baseline")
            for which in order:
                r = measure(getattr(case, which), model_dir)
                runs[case.name][which].append(r)
                print(f"[{rep + 1}] {case.name:<14} {which:<9} wall {r['wall_s']:7.2f} s  "
                      f"cpu {r['cpu_s']:7.2f} s  "
                      f"rss {r['max_rss_bytes'] / 1e9:6.2f} GB  "
                      f"mx_peak {_gb(r.get('mx_peak_bytes'))}", flush=True)
    return [summarize(c, runs[c.name]) for c in cases]


# --------------------------------------------------------------------------- output

def _gb(v: Optional[float]) -> str:
    return "     -" if v is None else f"{v / 1e9:6.2f}"


def table(results: List[Dict[str, Any]]) -> str:
    """A Markdown table: both sides' medians and the ratios."""
    lines = [
        "| case | side | wall s | CPU s | peak RSS GB | mx peak GB |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in results:
        for which in ("baseline", "candidate"):
            s = r[which]
            lines.append(f"| {r['name']} | {s['label']} | {s['wall_s']:.2f} | {s['cpu_s']:.2f} | "
                         f"{_gb(s['max_rss_bytes']).strip()} | {_gb(s['mx_peak_bytes']).strip()} |")
        ratio = r["ratios"]
        verdicts = ", ".join(
            f"{k} {'ok' if v['ok'] else 'MISSED'} (target {v['target']:g})"
            for k, v in r["targets"].items())
        mx_ratio = f"{ratio['mx_peak']:.2f}x" if "mx_peak" in ratio else "-"
        lines.append(f"| {r['name']} | **ratio** | **{ratio['wall']:.2f}x** | {ratio['cpu']:.2f}x | "
                     f"**{ratio['max_rss']:.2f}x** | {mx_ratio} |")
        if "per_job" in ratio:
            lines.append(f"| {r['name']} | per job s | {r['baseline']['per_job_s']:.3f} vs "
                         f"{r['candidate']['per_job_s']:.3f}: **{ratio['per_job']:.1f}x** | | | |")
        if verdicts:
            lines.append(f"| {r['name']} | targets | {verdicts} | | | |")
    return "\n".join(lines)


def machine() -> Dict[str, Any]:
    info: Dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform(),
                            "cpus": os.cpu_count(), "load_average": os.getloadavg()}
    try:
        from importlib import metadata

        for pkg in ("mlx", "mlx-lm", "hydra-core", "omegaconf"):
            info[pkg] = metadata.version(pkg)
    except Exception:
        pass
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"],
                             capture_output=True, text=True)
        info["git_commit"] = out.stdout.strip() or None
    except OSError:
        pass
    return info


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3, help="measurements per side (median taken)")
    p.add_argument("--cases", nargs="*", default=None, help="case names (default: all)")
    p.add_argument("--list", action="store_true", help="list the cases and exit")
    p.add_argument("--rebuild", action="store_true", help="build the cached model again")
    p.add_argument("--no-warmup", action="store_true")
    p.add_argument("--output", type=Path, default=RESULTS)
    a = p.parse_args(argv)
    if a.list:
        for c in CASES.values():
            print(f"{c.name:<16} {c.description}")
        return 0
    unknown = [n for n in (a.cases or []) if n not in CASES]
    if unknown:
        p.error(f"unknown cases {unknown}; known: {', '.join(CASES)}")
    cases = [CASES[n] for n in (a.cases or CASES)]
    model_dir = ensure_model(a.rebuild) if any(c.needs_model for c in cases) or a.rebuild else None
    load_before = os.getloadavg()
    results = run_cases(cases, a.repeats, model_dir, warmup=not a.no_warmup)
    print(f"\nload average before {load_before[0]:.1f}, after {os.getloadavg()[0]:.1f} "
          f"({os.cpu_count()} CPUs): wall times include waiting for a CPU; CPU s does not")
    print(table(results))
    a.output.write_text(json.dumps({
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "repeats": a.repeats,
        "model": LLAMA_1B, "machine": {**machine(), "load_average_before": load_before},
        "cases": results,
    }, indent=2) + "\n")
    print(f"\nwritten {a.output}")
    missed = [r["name"] for r in results for v in r["targets"].values() if not v["ok"]]
    if missed:
        print(f"targets missed: {', '.join(missed)}")
    return 0


# --------------------------------------------------------------------------- the cases

register_case(
    "float_load",
    "float16 load: mlx_lm.utils.load_model vs python -m mlxhydra model=DIR (full CLI)",
    baseline=Side("mlx-lm load_model",
                  lambda ctx: [[PY, str(BENCH / "mlx_lm_load.py"), str(ctx.model_dir)]]),
    candidate=Side("mlxhydra CLI",
                   lambda ctx: [mlxhydra_cli(f"model={ctx.model_dir}")],
                   collect=mlxhydra_records),
    targets={"wall_ratio": 1.1},
)

register_case(
    "quant4_load",
    "4-bit runtime quantization: load_model + quantize_model(4, 64) vs mlxhydra quant.bits=4",
    baseline=Side("mlx-lm load+quantize",
                  lambda ctx: [[PY, str(BENCH / "mlx_lm_load.py"), str(ctx.model_dir),
                                "--bits", "4", "--group-size", "64"]]),
    candidate=Side("mlxhydra CLI quant.bits=4",
                   lambda ctx: [mlxhydra_cli(f"model={ctx.model_dir}", "quant.bits=4")],
                   collect=mlxhydra_records),
    targets={"wall_ratio": 1.1, "candidate_rss_bytes": 1.0e9},
)

register_case(
    "startup_help",
    "start-up: python -m mlxhydra --help vs a bare @hydra.main app's --help",
    baseline=Side("bare Hydra app --help",
                  lambda ctx: [[PY, str(BENCH / "bare_hydra_app.py"), "--help"]]),
    candidate=Side("mlxhydra --help", lambda ctx: [mlxhydra_cli("--help")]),
    targets={"wall_ratio": 1.2},
    needs_model=False,
    repeats=None,
)

TINY = ROOT / "mlxhydra" / "models" / "tiny"
SWEEP_JOBS = 20


def per_job_figures(ctx: Context) -> Dict[str, Any]:
    """A sweep's fixed cost per job, from its run.json files: the median time between two jobs'
    ends (everything a job costs: its composition, Hydra's set-up, the job, the callbacks), the
    median of each job's own span (started to ended) and of each stage in ``times``."""
    from datetime import datetime

    records = [json.loads(p.read_text()) for p in (ctx.workdir / "outputs").rglob("run.json")]
    records.sort(key=lambda r: r["job_num"])
    ended = [datetime.fromisoformat(r["ended"]).timestamp() for r in records]
    span = [e - datetime.fromisoformat(r["started"]).timestamp() for e, r in zip(ended, records)]
    later = records[1:]  # the first job also pays the command's start-up and imports
    stages = {k: statistics.median(r["times"].get(k, 0.0) for r in later) for k in later[0]["times"]}
    return {"jobs": len(records), "per_job_s": statistics.median(b - a for a, b in zip(ended, ended[1:])),
            "job_span_s": statistics.median(span[1:]), "stage_medians": stages,
            "first_job_times": records[0]["times"]}


register_case(
    "sweep20_fixed",
    f"fixed cost per job: {SWEEP_JOBS} x mlx_lm.load(tiny) in one process vs "
    f"mlxhydra -m task=load seed=range({SWEEP_JOBS}) (the embedded model)",
    baseline=Side(f"{SWEEP_JOBS} x mlx_lm.load, one process",
                  lambda ctx: [[PY, str(BENCH / "mlx_lm_load_loop.py"), str(TINY),
                                "--calls", str(SWEEP_JOBS)]]),
    candidate=Side(f"mlxhydra -m ({SWEEP_JOBS} jobs)",
                   lambda ctx: [mlxhydra_cli("-m", "task=load", f"seed=range({SWEEP_JOBS})")],
                   collect=per_job_figures),
    needs_model=False,
)


if __name__ == "__main__":
    sys.exit(main())
