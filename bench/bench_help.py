"""Start-up: ``mlxhydra --help`` against a bare ``@hydra.main`` app's ``--help``, many short runs.

    python bench/bench_help.py [--repeats 30] [--other-source DIR]

Each repeat runs every command once, in a shuffled order, each a fresh process from an empty
directory with bytecode cached (one untimed run of each first). Prints the median wall and CPU
seconds of each and their ratios to the bare app, and the load average; ``--other-source``
adds another checkout's ``--help`` (on PYTHONPATH) measured the same way, interleaved.
"""

import argparse
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--other-source", type=Path, default=None)
    a = p.parse_args()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONDONTWRITEBYTECODE", "PYTHONPATH")}
    commands = {
        "bare Hydra app --help": ([sys.executable, str(BENCH / "bare_hydra_app.py"), "--help"], env),
        "mlxhydra --help": ([sys.executable, "-m", "mlxhydra", "--help"], {**env, "PYTHONPATH": str(ROOT)}),
    }
    if a.other_source is not None:
        commands[f"mlxhydra --help ({a.other_source})"] = (
            [sys.executable, "-m", "mlxhydra", "--help"], {**env, "PYTHONPATH": str(a.other_source)})
    wall = {k: [] for k in commands}
    cpu = {k: [] for k in commands}
    load = os.getloadavg()
    with tempfile.TemporaryDirectory() as cwd:
        for argv, e in commands.values():
            subprocess.run(argv, env=e, cwd=cwd, capture_output=True, check=True)
        for _ in range(a.repeats):
            order = list(commands)
            random.shuffle(order)
            for k in order:
                argv, e = commands[k]
                before = resource.getrusage(resource.RUSAGE_CHILDREN)
                t = time.perf_counter()
                subprocess.run(argv, env=e, cwd=cwd, capture_output=True, check=True)
                wall[k].append(time.perf_counter() - t)
                after = resource.getrusage(resource.RUSAGE_CHILDREN)
                cpu[k].append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
    base = next(iter(commands))
    mw, mc = statistics.median(wall[base]), statistics.median(cpu[base])
    print("| command | wall s | CPU s | wall ratio | CPU ratio |\n|---|---:|---:|---:|---:|")
    for k in commands:
        w, c = statistics.median(wall[k]), statistics.median(cpu[k])
        print(f"| {k} | {w:.3f} | {c:.3f} | {w / mw:.2f}x | {c / mc:.2f}x |")
    print(f"\n{a.repeats} repeats, medians; load average {load[0]:.1f} before, "
          f"{os.getloadavg()[0]:.1f} after ({os.cpu_count()} CPUs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
