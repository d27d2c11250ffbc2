"""mlx-lm's own load (and optional runtime quantization): the baseline of ``bench_load.py``.

    python bench/mlx_lm_load.py MODEL_DIR [--bits 4 --group-size 64]

Prints one line ``BENCH_RESULT {json}`` with mlx's peak memory and stage times.
"""

import argparse
import json
import time
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("model_dir")
    p.add_argument("--bits", type=int, default=None)
    p.add_argument("--group-size", type=int, default=64)
    a = p.parse_args()

    t0 = time.perf_counter()
    import mlx.core as mx
    from mlx_lm.utils import load_model, quantize_model

    t1 = time.perf_counter()
    model, config = load_model(Path(a.model_dir))
    t2 = time.perf_counter()
    if a.bits is not None:
        model, config = quantize_model(model, config, a.group_size, a.bits)
        mx.eval(model.parameters())
    t3 = time.perf_counter()
    print("BENCH_RESULT " + json.dumps({
        "mx_peak_bytes": mx.get_peak_memory(),
        "times": {"import": t1 - t0, "load": t2 - t1, "quantize": t3 - t2},
    }), flush=True)


if __name__ == "__main__":
    main()
