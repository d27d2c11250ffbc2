"""Tracking overhead: one `task=load` run on the embedded model without a logger, and with each tracker.

    flock /tmp/bench.lock python bench/bench_tracking.py --repeats 5

Each case is a fresh ``python -m mlxhydra task=load [logger=X]`` process in one
scratch working directory, the cases alternating, after one warm-up run per
case (so MLflow's SQLite store already exists: creating it is timed once,
separately, as ``mlflow_new_store``). Reported: median wall seconds per case
and its ratio to the run without a logger. Results go to bench/results_tracking.json.
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
CASES = {"none": [], "csv": ["logger=csv"], "tensorboard": ["logger=tensorboard"],
         "mlflow": ["logger=mlflow"]}


def run(cwd: Path, args) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "mlxhydra", "task=load", *args], cwd=cwd, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cwd = Path(tmp)
        new_store = run(cwd, CASES["mlflow"])  # creates outputs/mlflow.db
        for extra in CASES.values():
            run(cwd, extra)  # warm-up
        times = {name: [] for name in CASES}
        for _ in range(args.repeats):
            for name, extra in CASES.items():
                times[name].append(run(cwd, extra))
    medians = {name: statistics.median(ts) for name, ts in times.items()}
    result = {"repeats": args.repeats, "median_seconds": medians,
              "ratio_to_none": {n: medians[n] / medians["none"] for n in medians},
              "mlflow_new_store_seconds": new_store, "all_seconds": times}
    (BENCH / "results_tracking.json").write_text(json.dumps(result, indent=2) + "\n")
    for name in CASES:
        print(f"{name:12s} {medians[name]:6.2f} s  x{result['ratio_to_none'][name]:.2f}")
    print(f"mlflow, first run on a new store: {new_store:.2f} s")


if __name__ == "__main__":
    main()
