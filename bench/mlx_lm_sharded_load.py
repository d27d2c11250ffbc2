"""mlx-lm's own sharded load: the baseline of ``bench_distributed.py``, run under mlx.launch.

    mlx.launch -n 2 --backend ring -- python bench/mlx_lm_sharded_load.py MODEL_DIR

Each rank prints one line ``BENCH_RESULT {json}`` with its mlx peak memory, the bytes of the
parameters it holds and its load time, under keys that name the rank (``rank1_mx_peak_bytes``).
"""

import json
import sys
import time


def main() -> None:
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm.utils import sharded_load

    rank = mx.distributed.init().rank()
    t = time.perf_counter()
    model, _ = sharded_load(sys.argv[1])
    seconds = time.perf_counter() - t
    held = sum(v.nbytes for _, v in tree_flatten(model.parameters()))
    print("BENCH_RESULT " + json.dumps({
        f"rank{rank}_mx_peak_bytes": mx.get_peak_memory(), f"rank{rank}_parameter_bytes": held,
        f"rank{rank}_load_s": seconds,
    }), flush=True)


if __name__ == "__main__":
    main()
