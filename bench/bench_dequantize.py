"""Where quant.compute=dequantized spends its time: one process, forward passes side by side.

    python bench/bench_dequantize.py                       # 128 and 512 tokens, 5 rounds
    python bench/bench_dequantize.py --lengths 128 --repeats 9

In one process, on the medium float16 llama of ``bench_compute.py`` (built there once):

- forward passes of one row of random tokens through the float model, the 4-bit model with
  ``quant.compute=dequantized``, and the same with the earlier dequantization
  (``mx.dequantize`` into the model's dtype, as before float32 scales), interleaved rounds;
  the wall and CPU seconds of each (medians) and the median of each round's ratio to float;
- for each distinct weight shape: ``x @ W.T`` with a float ``W``, each way of dequantizing
  ``W``, and dequantize-then-multiply, also through ``mx.compile``; CPU milliseconds.

Process CPU time is steadier than wall time on a shared machine (mlx's CPU kernels run one
thread here). Results: a Markdown table on stdout and ``bench/results_dequantize.json``.
"""

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import mlx.core as mx

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_compute as bc  # noqa: E402
import bench_load as bl  # noqa: E402
from mlxhydra.load.loader import load_model  # noqa: E402
from mlxhydra.load.quantized_compute import DequantizedLinear, DequantizedEmbedding  # noqa: E402

RESULTS = bl.BENCH / "results_dequantize.json"


def _model_dtype_weight(layer) -> mx.array:
    # The earlier way: mlx's dequantize in the scales' own dtype (float16 arithmetic).
    return mx.dequantize(layer["weight"], scales=layer["scales"], biases=layer.get("biases"),
                         group_size=layer.group_size, bits=layer.bits, mode=layer.mode)


class EarlierLinear(DequantizedLinear):
    def __call__(self, x):
        return x @ _model_dtype_weight(self).T


class EarlierEmbedding(DequantizedEmbedding):
    def as_linear(self, x):
        return x @ _model_dtype_weight(self).T


def timed(fn: Callable[[], Any]) -> Dict[str, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    mx.eval(fn())
    return {"wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu}


def forward_rounds(model_dir: Path, lengths: Sequence[int], repeats: int) -> List[Dict[str, Any]]:
    models = {"float": load_model(model_dir)[0]}
    for side in ("dequantized", "earlier dequantized"):
        models[side] = load_model(model_dir, quant={"bits": 4, "compute": "dequantized"})[0]
    for _, m in models["earlier dequantized"].named_modules():
        m.__class__ = {DequantizedLinear: EarlierLinear,
                       DequantizedEmbedding: EarlierEmbedding}.get(type(m), type(m))
    rows = []
    for length in lengths:
        tokens = mx.random.randint(0, bc.MEDIUM["vocab_size"], (1, length), key=mx.random.key(0))
        runs: Dict[str, List[Dict[str, float]]] = {side: [] for side in models}
        for model in models.values():  # warm-up: weights read, buffers allocated
            mx.eval(model(tokens))
        for i in range(repeats):
            for side, model in models.items():
                runs[side].append(timed(lambda: model(tokens)))
            print(f"{length} tokens round {i}: " + ", ".join(
                f"{s} {r[-1]['wall_s']:.2f} s" for s, r in runs.items()), flush=True)
        for side, rs in runs.items():
            row: Dict[str, Any] = {"tokens": length, "side": side, "rounds": rs}
            for k in ("wall_s", "cpu_s"):
                row[k] = statistics.median(r[k] for r in rs)
                row[f"{k}_vs_float"] = statistics.median(
                    r[k] / f[k] for r, f in zip(rs, runs["float"]))
            rows.append(row)
    return rows


def layer_costs(rows: int, repeats: int) -> List[Dict[str, Any]]:
    """CPU ms per op for each distinct (out, in) weight shape of the medium model."""
    h, inter, kv = bc.MEDIUM["hidden_size"], bc.MEDIUM["intermediate_size"], 256
    out = []
    for o, i in [(h, h), (kv, h), (inter, h), (h, inter), (bc.MEDIUM["vocab_size"], h)]:
        w = (mx.random.normal((o, i), key=mx.random.key(1)) * 0.02).astype(mx.float16)
        x = mx.random.normal((1, rows, i), key=mx.random.key(2)).astype(mx.float16)
        wq, s, b = mx.quantize(w, 64, 4)
        s32, b32 = s.astype(mx.float32), b.astype(mx.float32)
        mx.eval(w, x, wq, s, b, s32, b32)
        fused = mx.compile(lambda x, wq, s, b: x @ mx.dequantize(
            wq, s.astype(mx.float32), b.astype(mx.float32), 64, 4, dtype=mx.float16).T)
        ops = {
            "float matmul": lambda: x @ w.T,
            "dequantize float16": lambda: mx.dequantize(wq, s, b, 64, 4),
            "dequantize float32 scales -> float16": lambda: mx.dequantize(
                wq, s.astype(mx.float32), b.astype(mx.float32), 64, 4, dtype=mx.float16),
            "dequantize float32": lambda: mx.dequantize(wq, s32, b32, 64, 4),
            "earlier: dequantize float16 + matmul": lambda: x @ mx.dequantize(wq, s, b, 64, 4).T,
            "now: dequantize (float32 scales) + matmul": lambda: x @ mx.dequantize(
                wq, s.astype(mx.float32), b.astype(mx.float32), 64, 4, dtype=mx.float16).T,
            "now, mx.compile": lambda: fused(x, wq, s, b),
        }
        cpu: Dict[str, List[float]] = {k: [] for k in ops}
        for _ in range(repeats):
            for k, fn in ops.items():
                cpu[k].append(timed(fn)["cpu_s"])
        out.append({"shape": [o, i], "rows": rows,
                    "cpu_ms": {k: 1e3 * statistics.median(v) for k, v in cpu.items()}})
    return out


def report(forward: List[Dict[str, Any]], layers: List[Dict[str, Any]]) -> str:
    lines = ["| tokens | side | wall s | × float | CPU s | × float (CPU) |",
             "|---:|---|---:|---:|---:|---:|"]
    for r in forward:
        lines.append(f"| {r['tokens']} | {r['side']} | {r['wall_s']:.2f} | "
                     f"{r['wall_s_vs_float']:.2f}× | {r['cpu_s']:.2f} | {r['cpu_s_vs_float']:.2f}× |")
    names = list(layers[0]["cpu_ms"])
    lines += ["", "| CPU ms, " + f"{layers[0]['rows']} rows | " + " | ".join(
        f"{o}×{i}" for o, i in (r["shape"] for r in layers)) + " |",
        "|---|" + "---:|" * len(layers)]
    for n in names:
        lines.append(f"| {n} | " + " | ".join(f"{r['cpu_ms'][n]:.1f}" for r in layers) + " |")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lengths", type=int, nargs="+", default=[128, 512])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--output", type=Path, default=RESULTS)
    a = p.parse_args(argv)
    load_before = os.getloadavg()
    forward = forward_rounds(bc.ensure_medium(), a.lengths, a.repeats)
    layers = layer_costs(a.lengths[0], a.repeats)
    load_after = os.getloadavg()
    print(f"\nload average before {load_before[0]:.1f}, after {load_after[0]:.1f}")
    print(report(forward, layers))
    a.output.write_text(json.dumps({
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "medium": bc.MEDIUM,
        "machine": {**bl.machine(), "load_average_before": load_before,
                    "load_average_after": load_after},
        "forward": forward, "layers": layers}, indent=2) + "\n")
    print(f"\nwritten {a.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
