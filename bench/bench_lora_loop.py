"""task=lora's training loop (mlxhydra/tasks/lora_loop.py) against mlx-lm's ``train``, side by side.

The same model (the embedded tiny llama), data (its fine-tuning set), settings and seed; the
variants run interleaved, each in a fresh model, taking each place in the order in turn:

- ``mlx_lm``: ``mlx_lm.tuner.trainer.train``;
- ``ours``: ``lora_loop.train`` with no checkpoint due;
- ``ours+ckpt``: ``lora_loop.train`` writing the resumable checkpoint every ``--save-every``.

Prints each variant's median tokens/s, seconds and peak memory, the ratios to mlx-lm, the load
average, and checks that every variant ends with the same training loss.

    python bench/bench_lora_loop.py [--iters 60] [--reps 5] [--save-every 10] [--out FILE]
"""

import argparse
import contextlib
import io
import json
import os
import statistics
import tempfile
import time
import types
from pathlib import Path

import mlx.core as mx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "mlxhydra" / "models" / "tiny"
DATA = ROOT / "mlxhydra" / "data" / "tiny_finetune"
VARIANTS = ("mlx_lm", "ours", "ours+ckpt")


def run(variant: str, iters: int, save_every: int, out: Path):
    from mlx_lm import load
    from mlx_lm.lora import CONFIG_DEFAULTS
    from mlx_lm.tuner.callbacks import TrainingCallback
    from mlx_lm.tuner.datasets import CacheDataset, load_dataset
    from mlx_lm.tuner.trainer import TrainingArgs, train

    from mlxhydra.tasks import lora_checkpoint, lora_loop
    from mlxhydra.tasks.lora import build_optimizer, prepare_model

    args = types.SimpleNamespace(**{**CONFIG_DEFAULTS, "model": str(TINY), "data": str(DATA),
                                    "iters": iters, "batch_size": 4, "num_layers": 2,
                                    "learning_rate": 1e-3, "train": True, "seed": 0})
    reports = []

    class Capture(TrainingCallback):
        def on_train_loss_report(self, info):
            reports.append(info)

    np.random.seed(0)
    model, tokenizer = load(str(TINY))
    train_set, valid_set, _ = load_dataset(args, tokenizer)
    prepare_model(model, args)
    saving = variant == "ours+ckpt"
    targs = TrainingArgs(batch_size=4, iters=iters, val_batches=1, steps_per_report=iters,
                         steps_per_eval=10**9, steps_per_save=save_every if saving else 10**9,
                         adapter_file=str(out / "adapters.safetensors"))
    optimizer = build_optimizer(args)
    train_set, valid_set = CacheDataset(train_set), CacheDataset(valid_set)
    mx.reset_peak_memory()
    start = time.perf_counter()
    if variant == "mlx_lm":
        with contextlib.redirect_stdout(io.StringIO()):
            train(model=model, args=targs, optimizer=optimizer, train_dataset=train_set,
                  val_dataset=valid_set, training_callback=Capture())
    else:
        def checkpoint(p):
            lora_checkpoint.save(out / lora_checkpoint.STATE, model, optimizer, p, {}, 0,
                                 {"train": reports, "val": []})

        lora_loop.train(model, optimizer, train_set, valid_set, targs, Capture(),
                        lora_loop.train_batches(train_set, targs), lora_loop.Position(), checkpoint)
    seconds = time.perf_counter() - start
    last = reports[-1]
    return {"tokens_per_second": last["trained_tokens"] / seconds, "seconds": seconds,
            "peak_memory_gb": mx.get_peak_memory() / 1e9, "train_loss": last["train_loss"]}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--iters", type=int, default=60)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--save-every", type=int, default=10)
    p.add_argument("--out")
    a = p.parse_args()
    results = {v: [] for v in VARIANTS}
    load_before = os.getloadavg()
    for rep in range(a.reps):
        order = VARIANTS[rep % 3:] + VARIANTS[:rep % 3]  # each variant in each place in turn
        for variant in order:
            with tempfile.TemporaryDirectory() as tmp:
                results[variant].append(run(variant, a.iters, a.save_every, Path(tmp)))
    load_after = os.getloadavg()
    losses = {r["train_loss"] for rs in results.values() for r in rs}
    summary = {v: {k: statistics.median(r[k] for r in rs) for k in ("tokens_per_second", "seconds",
                                                                       "peak_memory_gb")}
               for v, rs in results.items()}
    base = summary["mlx_lm"]
    for v, m in summary.items():
        print(f"{v:10s} {m['tokens_per_second']:8.0f} tok/s ({m['tokens_per_second'] / base['tokens_per_second']:.3f}x)"
              f"  {m['seconds']:6.2f} s  peak {m['peak_memory_gb'] * 1000:.1f} MB "
              f"({m['peak_memory_gb'] / base['peak_memory_gb']:.3f}x)")
    print(f"same final training loss in every run: {len(losses) == 1}; "
          f"load average {load_before[0]:.1f} -> {load_after[0]:.1f}; {a.reps} repetitions, medians")
    if a.out:
        Path(a.out).write_text(json.dumps({"args": vars(a), "summary": summary, "runs": results,
                                           "loadavg": [load_before, load_after]}, indent=2))


if __name__ == "__main__":
    main()
