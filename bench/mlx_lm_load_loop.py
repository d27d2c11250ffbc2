"""mlx-lm's side of the per-job fixed cost: ``mlx_lm.load`` called N times in one process.

    python bench/mlx_lm_load_loop.py MODEL_DIR [--calls 20]

Prints one line ``BENCH_RESULT {json}``: each call's seconds, their median, and the import time.
"""

import argparse
import json
import statistics
import time


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("model_dir")
    p.add_argument("--calls", type=int, default=20)
    a = p.parse_args()

    t0 = time.perf_counter()
    import mlx.core as mx
    import mlx_lm

    imported = time.perf_counter() - t0
    calls = []
    for _ in range(a.calls):
        t = time.perf_counter()
        model, tokenizer = mlx_lm.load(a.model_dir)
        mx.eval(model.parameters())
        calls.append(time.perf_counter() - t)
    print("BENCH_RESULT " + json.dumps({
        "mx_peak_bytes": mx.get_peak_memory(), "per_job_s": statistics.median(calls),
        "calls_s": calls, "times": {"import": imported, "loop": sum(calls)},
    }), flush=True)


if __name__ == "__main__":
    main()
