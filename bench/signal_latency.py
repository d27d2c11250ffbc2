"""How long ``python -m mlxhydra`` takes to answer SIGTERM while one long MLX call runs.

    python bench/signal_latency.py [--repeats 3] [--other-source DIR] [--cap 60]

The job loads the embedded model through ``tests/helpers/slow_model.py``, whose
``sanitize`` evaluates one graph of 2048×2048 matrix products that would run
for hours. One second into that call the command gets SIGTERM; the script
measures the time until the process exits and reads the run's ``run.json``.
``--other-source`` runs the same with another checkout's ``mlxhydra`` first on
PYTHONPATH (e.g. ``git archive main | tar -x -C /tmp/main``): the two side by
side, each capped at ``--cap`` seconds (then killed). Prints one
``BENCH_RESULT {json}`` line.
"""

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]


def once(source: Optional[Path], cap: float) -> dict:
    with tempfile.TemporaryDirectory() as cwd:
        paths = [str(p) for p in (source, ROOT / "tests" / "helpers") if p is not None]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
        env.pop("HYDRA_FULL_ERROR", None)
        proc = subprocess.Popen([sys.executable, "-m", "mlxhydra", "load.model_class=slow_model:Model"],
                                cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        record = None
        while record is None:
            for path in Path(cwd).rglob("run.json"):
                try:
                    if "weight_files" in json.loads(path.read_text()):
                        record = path
                except ValueError:
                    pass
            assert proc.poll() is None, "the run ended before its weights were read"
            time.sleep(0.05)
        time.sleep(1.0)  # inside the one long mx.eval
        sent = time.perf_counter()
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=cap)
            seconds = time.perf_counter() - sent
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            code, seconds = None, None
        return {"answered_s": seconds, "exit": code,
                "status": json.loads(record.read_text())["status"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--other-source", type=Path, default=None,
                        help="another checkout's root, measured the same way")
    parser.add_argument("--cap", type=float, default=60.0, help="seconds before SIGKILL")
    args = parser.parse_args()
    sides = {"this": None, **({"other": args.other_source} if args.other_source else {})}
    runs = {name: [] for name in sides}
    for _ in range(args.repeats):  # interleaved
        for name, source in sides.items():
            runs[name].append(once(source, args.cap))
    result = {}
    for name, rs in runs.items():
        answered = [r["answered_s"] for r in rs if r["answered_s"] is not None]
        result[name] = {"median_answered_s": statistics.median(answered) if answered else None,
                        "not_answered_within_cap": len(rs) - len(answered), "runs": rs}
    print("BENCH_RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
