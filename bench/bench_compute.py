"""Quality tasks on quantized models on the CPU back end: quant.compute=native vs dequantized.

    python bench/bench_compute.py                   # the medium float16 llama and the tiny model
    python bench/bench_compute.py --models medium --lengths 128 512 --repeats 5 --native-length 32
    python bench/bench_compute.py --baseline-source /tmp/main   # and another checkout's dequantized

For each model, side by side in one run, each a fresh ``python -m mlxhydra`` process on the
same tokens (one row of each ``--lengths``):

- ``task=perplexity`` of the float model and of the quantized model with
  ``quant.compute=dequantized`` (and, with ``--baseline-source``, the same with another
  checkout's code), interleaved ``--repeats`` times: the task's own seconds (``run.json``
  ``times.task``), their medians and the median of each round's ratio to the float run;
- at ``--native-length`` tokens (native ``quantized_matmul`` costs the same per row whatever
  the batch, so a short row keeps its minutes down): the float, native and dequantized models
  once each, then ``task=kl`` of the dequantized model against the float model
  (KL(float ‖ quantized)) and against the native run (``task.reference=<native run dir>``,
  rebuilt natively): KL(native ‖ dequantized);
- for the tiny model also ``task=accuracy`` (one token at a time: generation).

Models: ``medium``, a random float16 llama built once into ``bench/.cache/llama-compute``
(hidden 1024, 4 layers, intermediate 2816, 16 heads / 4 KV heads, vocab 4096, ~53M parameters,
with the embedded model's character tokenizer), and ``tiny``, the embedded model (bfloat16).
Results: a Markdown table on stdout and ``bench/results_compute.json``.
"""

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_load as bl  # noqa: E402

RESULTS = bl.BENCH / "results_compute.json"
TINY = bl.ROOT / "mlxhydra" / "models" / "tiny"
MEDIUM = {
    "model_type": "llama", "hidden_size": 1024, "num_hidden_layers": 4,
    "intermediate_size": 2816, "num_attention_heads": 16, "num_key_value_heads": 4,
    "rms_norm_eps": 1e-5, "vocab_size": 4096, "max_position_embeddings": 2048,
    "rope_theta": 10000.0, "tie_word_embeddings": False,
}


def tokens(length: int) -> List[str]:
    """One row of ``length`` tokens."""
    return [f"task.sequence_length={length}", "task.batch_size=1", "task.num_samples=1"]


def ensure_medium(rebuild: bool = False) -> Path:
    """The medium float16 llama with the tiny model's tokenizer and eval.txt (built once)."""
    target = bl.CACHE / "llama-compute"
    stamp = target / "bench_config.json"
    if not rebuild and stamp.is_file() and json.loads(stamp.read_text()) == MEDIUM:
        return target
    tmp = bl.CACHE / "llama-compute.building"
    shutil.rmtree(tmp, ignore_errors=True)
    sets = [f"{k}={json.dumps(v)}" for k, v in MEDIUM.items() if k != "model_type"]
    subprocess.run([bl.PY, str(bl.ROOT / "tests" / "helpers" / "random_models.py"), str(tmp),
                    "--dtype", "float16", "--set", *sets], check=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                 "eval.txt", "accuracy.jsonl"):
        shutil.copy(TINY / name, tmp / name)
    stamp_tmp = tmp / "bench_config.json"
    stamp_tmp.write_text(json.dumps(MEDIUM))
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return target


def run_cli(workdir: Path, *overrides: str, source: Optional[Path] = None) -> Dict[str, Any]:
    """One ``python -m mlxhydra`` process (``source``: another checkout's code first on the
    path); its run.json with the process's wall and CPU time."""
    before = set(workdir.glob("outputs/runs/*/*"))
    log = workdir / f".bench-{len(before)}.log"
    argv = bl.mlxhydra_cli(*overrides)
    if source is not None:
        argv = ["env", f"PYTHONPATH={source}", *argv]
    proc = bl.run_process(argv, workdir, log)
    (run_dir,) = set(workdir.glob("outputs/runs/*/*")) - before
    record = json.loads((run_dir / "run.json").read_text())
    if record["status"] != "completed":
        raise RuntimeError(f"{overrides}: {record.get('error')}")
    return {"run_dir": str(run_dir), "wall_s": proc["wall_s"], "cpu_s": proc["cpu_s"],
            "task_s": record["times"]["task"], "metrics": record["metrics"],
            "mx_peak_bytes": record.get("peak_memory_bytes"),
            "compute": record["quantization"].get("compute"),
            "bits_per_weight": record["quantization"].get("bits_per_weight")}


def measure_speed(name: str, model: str, lengths: Sequence[int], bits: int, repeats: int,
                  workdir: Path, baseline: Optional[Path]) -> List[Dict[str, Any]]:
    """Float vs dequantized (vs the baseline's dequantized) perplexity, interleaved rounds."""
    rows = []
    sides = [("float", [], None), ("dequantized", [f"quant.bits={bits}", "quant.compute=dequantized"], None)]
    if baseline is not None:
        sides.append(("baseline dequantized", sides[1][1], baseline))
    for length in lengths:
        runs: Dict[str, List[Dict[str, Any]]] = {side: [] for side, _, _ in sides}
        for i in range(repeats):
            for side, quant, source in sides:
                r = run_cli(workdir, model, "task=perplexity", *tokens(length), *quant, source=source)
                runs[side].append(r)
                print(f"{name} {length} tokens round {i} {side}: {r['task_s']:.2f} s", flush=True)
        floats = [r["task_s"] for r in runs["float"]]
        for side, _, _ in sides:
            times = [r["task_s"] for r in runs[side]]
            rows.append({"model": name, "task": "perplexity", "tokens": length,
                         "bits": None if side == "float" else bits, "compute": side,
                         "task_s": statistics.median(times), "task_s_all": times,
                         "vs_float": statistics.median(t / f for t, f in zip(times, floats)),
                         "mx_peak_bytes": runs[side][0]["mx_peak_bytes"],
                         "metrics": runs[side][0]["metrics"]})
    return rows


def measure_native(name: str, model: str, length: int, bits: int, workdir: Path,
                   accuracy: bool) -> List[Dict[str, Any]]:
    """Float, native and dequantized once each at ``length`` tokens; the two KLs there."""
    rows = []
    tasks = [("perplexity", ["task=perplexity", *tokens(length)])]
    if accuracy:
        tasks.append(("accuracy", ["task=accuracy", "task.num_samples=50"]))
    for task, args in tasks:
        base = run_cli(workdir, model, *args)
        rows.append({"model": name, "task": task, "tokens": length, "bits": None, **base,
                     "compute": "float", "vs_float": 1.0})
        for compute in ("native", "dequantized"):
            r = run_cli(workdir, model, *args, f"quant.bits={bits}", f"quant.compute={compute}")
            rows.append({"model": name, "task": task, "tokens": length, "bits": bits, **r,
                         "compute": compute, "vs_float": r["task_s"] / base["task_s"]})
            print(f"{name} {task} {bits}-bit {compute}: {r['task_s']:.2f} s "
                  f"({r['task_s'] / base['task_s']:.2f}x float)", flush=True)
    native_run = next(r["run_dir"] for r in rows if r["compute"] == "native")
    quant = [f"quant.bits={bits}", "quant.compute=dequantized"]
    vs_float = run_cli(workdir, model, "task=kl", *tokens(length), *quant)
    vs_native = run_cli(workdir, model, "task=kl", *tokens(length), *quant,
                        f"task.reference={native_run}")
    kl_q, kl_n = vs_float["metrics"]["kl_mean"], vs_native["metrics"]["kl_mean"]
    rows.append({"model": name, "task": "kl", "tokens": length, "bits": bits,
                 "kl_float_quantized": kl_q, "kl_native_dequantized": kl_n,
                 "share": kl_n / kl_q if kl_q else None})
    print(f"{name} {bits}-bit KL(float||q) {kl_q:.3e}  KL(native||dequantized) {kl_n:.3e}",
          flush=True)
    return rows


def table(rows: List[Dict[str, Any]]) -> str:
    lines = ["| model | task | tokens | weights | compute | task s (median) | × float | mx peak MB "
             "| tokens/s or accuracy |", "|---|---|---:|---|---|---:|---:|---:|---:|"]
    for r in rows:
        if r["task"] == "kl":
            continue
        m = r["metrics"]
        figure = (f"{m['tokens_per_second']:.0f} tok/s, ppl {m['perplexity']:.4f}"
                  if r["task"] == "perplexity" else f"{m['accuracy']:.3f}")
        weights = "float" if r["bits"] is None else f"{r['bits']}-bit"
        ratio = "" if r["bits"] is None else f"{r['vs_float']:.2f}x"
        peak = "-" if r.get("mx_peak_bytes") is None else f"{r['mx_peak_bytes'] / 2**20:.0f}"
        lines.append(f"| {r['model']} | {r['task']} | {r['tokens']} | {weights} | {r['compute']} | "
                     f"{r['task_s']:.2f} | {ratio} | {peak} | {figure} |")
    lines += ["", "| model | tokens | weights | KL(float ‖ quantized) | KL(native ‖ dequantized) "
              "| share |", "|---|---:|---|---:|---:|---:|"]
    for r in rows:
        if r["task"] == "kl":
            share = "-" if r["share"] is None else f"{100 * r['share']:.2f} %"
            lines.append(f"| {r['model']} | {r['tokens']} | {r['bits']}-bit | "
                         f"{r['kl_float_quantized']:.3e} | {r['kl_native_dequantized']:.3e} | {share} |")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["medium", "tiny"], choices=["medium", "tiny"])
    p.add_argument("--bits", type=int, default=4)
    p.add_argument("--lengths", type=int, nargs="+", default=[128, 512],
                   help="tokens in the one row of the float vs dequantized rounds")
    p.add_argument("--repeats", type=int, default=3, help="interleaved rounds (medians taken)")
    p.add_argument("--native-length", type=int, default=128,
                   help="tokens of the native run and the KLs (0: none)")
    p.add_argument("--baseline-source", type=Path, default=None,
                   help="another checkout whose dequantized run joins each round")
    p.add_argument("--rebuild", action="store_true")
    p.add_argument("--output", type=Path, default=RESULTS)
    a = p.parse_args(argv)
    load_before = bl.os.getloadavg()
    rows: List[Dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="mlxhydra-bench-") as tmp:
        for name in a.models:
            model = f"model={ensure_medium(a.rebuild) if name == 'medium' else TINY}"
            rows += measure_speed(name, model, a.lengths, a.bits, a.repeats, Path(tmp),
                                  a.baseline_source)
            if a.native_length:
                rows += measure_native(name, model, a.native_length, a.bits, Path(tmp),
                                       accuracy=name == "tiny")
    load_after = bl.os.getloadavg()
    print(f"\nload average before {load_before[0]:.1f}, after {load_after[0]:.1f}")
    print(table(rows))
    for r in rows:
        r.pop("run_dir", None)
    a.output.write_text(json.dumps({
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "bits": a.bits, "medium": MEDIUM,
        "repeats": a.repeats, "baseline_source": str(a.baseline_source or ""),
        "machine": {**bl.machine(), "load_average_before": load_before,
                    "load_average_after": load_after}, "rows": rows,
    }, indent=2) + "\n")
    print(f"\nwritten {a.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
