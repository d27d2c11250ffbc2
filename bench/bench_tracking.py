"""Tracking overhead: one `task=load` run on the embedded model without a logger, and with each tracker.

    flock /tmp/bench.lock python bench/bench_tracking.py --repeats 5

Each case is a fresh ``python -m mlxhydra task=load [logger=X]`` process in one
scratch working directory, the cases alternating, after one warm-up run per
case (so MLflow's SQLite store already exists: creating it is timed once,
separately, as ``mlflow_new_store``). Reported: median wall and CPU (user +
system, the child process's) seconds per case, and their ratios to the run
without a logger (CPU time is the steadier figure on a shared machine). Results go to bench/results_tracking.json.
"""

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
CASES = {"none": [], "csv": ["logger=csv"], "tensorboard": ["logger=tensorboard"],
         "mlflow": ["logger=mlflow"]}


def run(cwd: Path, args) -> tuple:
    """(wall seconds, CPU seconds user+system) of one run in a fresh process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "mlxhydra", "task=load", *args], cwd=cwd, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cwd = Path(tmp)
        new_store, _ = run(cwd, CASES["mlflow"])  # creates outputs/mlflow.db
        for extra in CASES.values():
            run(cwd, extra)  # warm-up
        times = {name: [] for name in CASES}
        for _ in range(args.repeats):
            for name, extra in CASES.items():
                times[name].append(run(cwd, extra))
    wall = {name: statistics.median(t[0] for t in ts) for name, ts in times.items()}
    cpu = {name: statistics.median(t[1] for t in ts) for name, ts in times.items()}
    result = {"repeats": args.repeats, "median_wall_seconds": wall, "median_cpu_seconds": cpu,
              "wall_ratio_to_none": {n: wall[n] / wall["none"] for n in wall},
              "cpu_ratio_to_none": {n: cpu[n] / cpu["none"] for n in cpu},
              "mlflow_new_store_seconds": new_store, "all_wall_cpu_seconds": times}
    (BENCH / "results_tracking.json").write_text(json.dumps(result, indent=2) + "\n")
    for name in CASES:
        print(f"{name:12s} wall {wall[name]:6.2f} s (x{result['wall_ratio_to_none'][name]:.2f})  "
              f"cpu {cpu[name]:6.2f} s (x{result['cpu_ratio_to_none'][name]:.2f})")
    print(f"mlflow, first run on a new store: {new_store:.2f} s")


if __name__ == "__main__":
    main()
