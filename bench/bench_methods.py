"""Calibrated quantization methods: mlxhydra against mlx-lm's own commands, side by side.

    python bench/bench_methods.py                         # the four methods on a small llama
    python bench/bench_methods.py --cases gptq dynamic --repeats 3
    python bench/bench_methods.py --memory                # bigger than memory, in a cgroup

Each side loads the same float16 model, quantizes it with the same settings,
seed and calibration text, and saves it:

- baseline: mlx-lm's command (``python -m mlx_lm awq|gptq|dynamic_quant``, with
  ``HOME`` pointing at a folder that holds the calibration text where its
  ``load_data`` looks before downloading; ``mlx_lm.dwq`` reads a Hugging Face
  dataset, so for DWQ ``bench/mlx_lm_dwq.py`` runs its steps on the same text);
- candidate: ``python -m mlxhydra model=DIR quant.method=... task=save``.

Before timing, one run of each side writes its model and the two are compared
tensor by tensor (``identical`` in the results); these runs are also the
warm-up. Timing, peak RSS and the alternating order are bench_load.py's.

``--memory`` runs the bigger-than-memory cases, both sides inside a cgroup v1
memory limit below the float model's size (it needs root and
``/sys/fs/cgroup/memory``): GPTQ and AWQ on a 0.67 GB float32 llama under
``--medium-limit-gb`` (0.56), and dynamic quantization from a sensitivities
file on bench_load.py's 2.2 GB float16 llama under ``--limit-gb`` (1.2). A side
either finishes (peak RSS, mx peak, saved size) or is killed at the limit.
Run it alone (``flock /tmp/bench.lock``): it takes tens of minutes on 2 CPUs.
Results: ``bench/results_methods.json``.
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_load as bl  # noqa: E402

RESULTS = bl.BENCH / "results_methods.json"
TEXT = bl.ROOT / "mlxhydra" / "data" / "tiny_calibration.txt"
TOKENIZER = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
TINY = bl.ROOT / "mlxhydra" / "models" / "tiny"
# A small float16 llama: 4 blocks of hidden 384 (9.4M parameters, 19 MB).
SMALL = {
    "model_type": "llama", "hidden_size": 384, "num_hidden_layers": 4, "intermediate_size": 1024,
    "num_attention_heads": 6, "num_key_value_heads": 2, "rms_norm_eps": 1e-5,
    "vocab_size": 4096, "max_position_embeddings": 1024, "rope_theta": 10000.0,
    "tie_word_embeddings": False, "torch_dtype": "float16",
}
# A float32 llama larger than the memory limit of the GPTQ/AWQ memory cases (168M parameters,
# 670 MB): blocks of moderate width, so that GPTQ's O(out x in^2) work fits a slow CPU.
MEDIUM = {
    "model_type": "llama", "hidden_size": 1024, "num_hidden_layers": 16, "intermediate_size": 2048,
    "num_attention_heads": 16, "num_key_value_heads": 8, "rms_norm_eps": 1e-5,
    "vocab_size": 8192, "max_position_embeddings": 1024, "rope_theta": 10000.0,
    "tie_word_embeddings": False,
}
CGROUP_ROOT = Path("/sys/fs/cgroup/memory")

# method -> (mlx-lm command's arguments, mlxhydra overrides): the same settings (GPTQ's
# Hessians in the model's dtype, as mlx_lm.gptq sums them, so that the outputs are identical).
METHODS = {
    "awq": (["awq", "--bits", "4", "--num-samples", "4", "--sequence-length", "32",
             "--n-grid", "3"],
            ["quant.method=awq", "quant.bits=4", "quant.awq.n_grid=3",
             "quant.calibration.num_samples=4", "quant.calibration.sequence_length=32"]),
    "gptq": (["gptq", "--bits", "4", "--num-samples", "32", "--sequence-length", "64"],
             ["quant.method=gptq", "quant.bits=4", "quant.calibration.num_samples=32",
              "quant.calibration.sequence_length=64", "quant.gptq.hessian_dtype=model"]),
    # mlx_lm.dynamic_quant reads every 512-token row of its text: SHORT_TEXT has 4.
    "dynamic": (["dynamic_quant", "--low-bits", "3", "--high-bits", "4", "--target-bpw", "4.0"],
                ["quant.method=dynamic", "quant.bits=3", "quant.dynamic.high_bits=4",
                 "quant.dynamic.target_bpw=4.0", "quant.calibration.num_samples=-1",
                 "quant.calibration.sequence_length=512"]),
    "dwq": (["--bits", "3", "--num-samples", "16", "--num-valid-samples", "4",
             "--max-seq-length", "65", "--learning-rate", "1e-4", "--batch-size", "4"],
            ["quant.method=dwq", "quant.bits=3", "quant.calibration.num_samples=16",
             "quant.calibration.sequence_length=65", "quant.dwq.learning_rate=1e-4",
             "quant.dwq.num_valid_samples=4"]),
}
# The bigger-than-memory cases: (model, mlx-lm arguments, mlxhydra overrides). Few calibration
# tokens: the CPU back end is slow. dynamic reads sensitivities (synthetic, written here) so that
# neither side runs the sensitivity pass, which needs the whole model on both.
MEMORY = {
    "dynamic": ("llama-1b", ["dynamic_quant", "--low-bits", "3", "--high-bits", "4",
                             "--target-bpw", "3.6", "--sensitivities", "{sensitivities}"],
                ["quant.method=dynamic", "quant.bits=3", "quant.dynamic.high_bits=4",
                 "quant.dynamic.target_bpw=3.6", "quant.dynamic.sensitivities={sensitivities}"]),
    "gptq": ("medium", ["gptq", "--bits", "4", "--num-samples", "2", "--sequence-length", "64"],
             ["quant.method=gptq", "quant.bits=4", "quant.calibration.num_samples=2",
              "quant.calibration.sequence_length=64", "quant.gptq.hessian_dtype=model"]),
    "awq": ("medium", ["awq", "--bits", "4", "--num-samples", "1", "--sequence-length", "64",
                       "--n-grid", "2"],
            ["quant.method=awq", "quant.bits=4", "quant.awq.n_grid=2",
             "quant.calibration.num_samples=1", "quant.calibration.sequence_length=64"]),
}
SHORT_CHARS = 2100  # about four 512-token rows of the character-level tokenizer


def with_tokenizer(model_dir: Path) -> Path:
    for name in TOKENIZER:
        if not (model_dir / name).is_file():
            shutil.copy(TINY / name, model_dir / name)
    return model_dir


def cached_model(name: str, config: Dict[str, Any], dtype: Optional[str]) -> Path:
    """A random llama built once with mlx-lm's classes into bench/.cache/NAME."""
    target = bl.CACHE / name
    stamp = target / "bench_config.json"
    if not (stamp.is_file() and json.loads(stamp.read_text()) == config):
        shutil.rmtree(target, ignore_errors=True)
        sets = [f"{k}={json.dumps(v)}" for k, v in config.items() if k != "model_type"]
        subprocess.run([bl.PY, str(bl.ROOT / "tests" / "helpers" / "random_models.py"), str(target),
                        *(["--dtype", dtype] if dtype else []), "--set", *sets], check=True)
        stamp.write_text(json.dumps(config))
    return with_tokenizer(target)


def text_for(method: str) -> Path:
    """The calibration text: the embedded model's, or its first rows for dynamic."""
    if method != "dynamic":
        return TEXT
    short = bl.CACHE / "calibration_short.txt"
    bl.CACHE.mkdir(parents=True, exist_ok=True)
    short.write_text(TEXT.read_text()[:SHORT_CHARS])
    return short


def home_with_text(workdir: Path, text: Path) -> Path:
    """A HOME where mlx_lm.quant.utils.load_data finds its calibration file (no download)."""
    cache = workdir / "home" / ".cache" / "mlx-lm"
    cache.mkdir(parents=True, exist_ok=True)
    shutil.copy(text, cache / "calibration_v5.txt")
    return workdir / "home"


def mlx_lm_command(method: str, args: List[str], model_dir: Path, out: Path, workdir: Path) -> List[str]:
    if method == "dwq":
        return [bl.PY, str(bl.BENCH / "mlx_lm_dwq.py"), "--model", str(model_dir), "--mlx-path",
                str(out), "--data", str(TEXT), *args]
    return ["env", f"HOME={home_with_text(workdir, text_for(method))}", bl.PY, "-m", "mlx_lm",
            *args, "--model", str(model_dir), "--mlx-path", str(out)]


def mlxhydra_command(method: str, overrides: List[str], model_dir: Path, out: Path) -> List[str]:
    return bl.mlxhydra_cli(f"model={model_dir}", *overrides,
                           f"quant.calibration.data={text_for(method)}", "task=save",
                           f"task.path={out}")


def make_case(method: str, model_dir: Path) -> bl.Case:
    args, overrides = METHODS[method]
    return bl.Case(
        method, f"{method}: mlx-lm's command vs python -m mlxhydra quant.method={method} task=save",
        baseline=bl.Side(f"mlx-lm {args[0] if method != 'dwq' else 'dwq steps'}",
                         lambda ctx: [mlx_lm_command(method, args, model_dir, ctx.workdir / "out",
                                                     ctx.workdir)]),
        candidate=bl.Side(f"mlxhydra quant.method={method}",
                          lambda ctx: [mlxhydra_command(method, overrides, model_dir,
                                                        ctx.workdir / "out")],
                          collect=bl.mlxhydra_records))


def same_weights(a: Path, b: Path) -> Dict[str, Any]:
    """Compare two saved models tensor by tensor."""
    import mlx.core as mx

    def tensors(d):
        out = {}
        for f in sorted(d.glob("model*.safetensors")):
            out.update(mx.load(str(f)))
        return out

    ta, tb = tensors(a), tensors(b)
    different = sorted(k for k in ta if k not in tb or ta[k].dtype != tb[k].dtype
                       or not mx.array_equal(ta[k], tb[k]).item())
    return {"identical": not different and ta.keys() == tb.keys(), "tensors": len(ta),
            "different": different[:5]}


def verify(method: str, model_dir: Path) -> Dict[str, Any]:
    """One run of each side into kept folders; their saved tensors compared."""
    args, overrides = METHODS[method]
    with tempfile.TemporaryDirectory(prefix="mlxhydra-bench-") as tmp:
        work = Path(tmp)
        for argv in (mlx_lm_command(method, args, model_dir, work / "theirs", work),
                     mlxhydra_command(method, overrides, model_dir, work / "ours")):
            bl.run_process(argv, work, work / "log.txt")
        return same_weights(work / "theirs", work / "ours")


# --------------------------------------------------------------------------- bigger than memory

class MemoryLimit:
    """A cgroup v1 memory group: processes started in it are killed past ``limit`` bytes."""

    def __init__(self, limit: int):
        self.path = CGROUP_ROOT / f"mlxhydra_bench_{os.getpid()}"
        self.limit = limit

    def __enter__(self) -> "MemoryLimit":
        self.path.mkdir()
        (self.path / "memory.limit_in_bytes").write_text(str(self.limit))
        return self

    def __exit__(self, *exc: Any) -> None:
        for _ in range(50):  # the group can be removed once its processes are gone
            try:
                self.path.rmdir()
                return
            except OSError:
                time.sleep(0.1)

    def command(self, argv: List[str]) -> List[str]:
        """``argv`` started inside the group (the shell joins it, then becomes the command)."""
        return ["sh", "-c", f'echo $$ > {self.path / "cgroup.procs"} && exec "$@"', "sh", *argv]

    def run(self, argv: List[str], cwd: Path, log: Path) -> Dict[str, Any]:
        (self.path / "memory.max_usage_in_bytes").write_text("0")
        env = dict(os.environ)
        env.pop("HYDRA_FULL_ERROR", None)
        with open(log, "wb") as out:
            t = time.perf_counter()
            proc = subprocess.Popen(self.command(argv), cwd=cwd, env=env, stdout=out,
                                    stderr=subprocess.STDOUT)
            _, status, usage = os.wait4(proc.pid, 0)
            wall = time.perf_counter() - t
        code = os.waitstatus_to_exitcode(status)
        text = log.read_text(errors="replace")
        result: Dict[str, Any] = {
            "ok": code == 0, "exit": code, "wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime,
            "max_rss_bytes": usage.ru_maxrss * 1024,
            "oom_kills": _oom_kills(self.path),
        }
        if code != 0:
            killed = code == -signal.SIGKILL or result["oom_kills"]
            result["error"] = ("killed at the memory limit" if killed
                               else (text.strip().splitlines() or ["?"])[-1][:300])
        for line in text.splitlines():
            if line.startswith("BENCH_RESULT "):
                result.update(json.loads(line[len("BENCH_RESULT "):]))
        return result


def _oom_kills(group: Path) -> int:
    try:
        for line in (group / "memory.oom_control").read_text().splitlines():
            if line.startswith("oom_kill "):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def synthetic_sensitivities(model_dir: Path, out: Path) -> Path:
    """A sensitivities file as dynamic quantization writes one: a seeded value per quantizable layer.

    The layers are the model's ``*.weight`` tensors that are not norms (read from the
    safetensors index, no weight read); the values only decide which layers get more bits.
    """
    import random

    index = json.loads((model_dir / "model.safetensors.index.json").read_text())
    layers = sorted(k[: -len(".weight")] for k in index["weight_map"]
                    if k.endswith(".weight") and "norm" not in k)
    rng = random.Random(0)
    out.write_text(json.dumps([[name, rng.random()] for name in layers]))
    return out


def memory_model(name: str) -> Path:
    return with_tokenizer(bl.ensure_model()) if name == "llama-1b" else cached_model(
        "llama-medium-f32", MEDIUM, None)


def run_memory(methods: Sequence[str], limits_gb: Dict[str, float]) -> List[Dict[str, Any]]:
    results = []
    for method in methods:
        model_name, args, overrides = MEMORY[method]
        model_dir = memory_model(model_name)
        size = sum(f.stat().st_size for f in model_dir.glob("*.safetensors"))
        limit = int(limits_gb[model_name] * 1e9)
        sides = {}
        for which in ("baseline", "candidate"):
            with tempfile.TemporaryDirectory(prefix="mlxhydra-bench-") as tmp, \
                    MemoryLimit(limit) as group:
                work = Path(tmp)
                fill = {"sensitivities": str(synthetic_sensitivities(model_dir, work / "sens.json"))}
                argv = (mlx_lm_command(method, [a.format(**fill) for a in args], model_dir,
                                       work / "out", work)
                        if which == "baseline" else
                        mlxhydra_command(method, [o.format(**fill) for o in overrides], model_dir,
                                         work / "out"))
                r = group.run(argv, work, work / "log.txt")
                if which == "candidate" and r["ok"]:
                    record = json.loads(next((work / "outputs").rglob("run.json")).read_text())
                    r["mx_peak_bytes"] = record.get("peak_memory_bytes")
                    r["times"] = record.get("times")
                if r["ok"]:
                    r["quantized_bytes"] = sum(f.stat().st_size
                                               for f in (work / "out").glob("*.safetensors"))
            label = f"mlx-lm {args[0]}" if which == "baseline" else f"mlxhydra quant.method={method}"
            sides[which] = {"label": label, **r}
            print(f"[memory] {method:<7} {which:<9} {'ok' if r['ok'] else r['error']:<28} "
                  f"wall {r['wall_s']:7.1f} s  cpu {r['cpu_s']:7.1f} s  "
                  f"rss {r['max_rss_bytes'] / 1e9:5.2f} GB", flush=True)
        results.append({"name": f"memory_{method}", "model": model_name, "model_bytes": size,
                        "limit_bytes": limit, **sides})
    return results


def memory_table(results: List[Dict[str, Any]]) -> str:
    lines = ["| case | float model GB | limit GB | side | outcome | wall s | CPU s | peak RSS GB "
             "| mx peak GB | saved GB |", "|---|---:|---:|---|---|---:|---:|---:|---:|---:|"]
    for r in results:
        for which in ("baseline", "candidate"):
            s = r[which]
            outcome = "completed" if s["ok"] else s["error"]
            lines.append(f"| {r['name']} | {r['model_bytes'] / 1e9:.2f} | {r['limit_bytes'] / 1e9:.2f} "
                         f"| {s['label']} | {outcome} | {s['wall_s']:.1f} | {s['cpu_s']:.1f} | "
                         f"{s['max_rss_bytes'] / 1e9:.2f} | {bl._gb(s.get('mx_peak_bytes')).strip()} | "
                         f"{bl._gb(s.get('quantized_bytes')).strip()} |")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=2, help="measurements per side (median taken)")
    p.add_argument("--cases", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--memory", action="store_true", help="the bigger-than-memory cases instead")
    p.add_argument("--memory-methods", nargs="+", default=list(MEMORY), choices=list(MEMORY))
    p.add_argument("--limit-gb", type=float, default=1.2, help="limit for the 2.2 GB llama")
    p.add_argument("--medium-limit-gb", type=float, default=0.56, help="limit for the 0.67 GB llama")
    p.add_argument("--output", type=Path, default=RESULTS)
    a = p.parse_args(argv)
    previous = json.loads(a.output.read_text()) if a.output.is_file() else {}
    out = {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": bl.machine()}
    if a.memory:
        results = run_memory(a.memory_methods, {"llama-1b": a.limit_gb, "medium": a.medium_limit_gb})
        print()
        print(memory_table(results))
        out.update(memory_models={"llama-1b": bl.LLAMA_1B, "medium": MEDIUM}, memory_cases=results)
        out = {**previous, **out}
    else:
        model_dir = cached_model("llama-small", SMALL, "float16")
        checks = {m: verify(m, model_dir) for m in a.cases}
        for m, c in checks.items():
            print(f"[verify] {m:<8} identical to mlx-lm's: {c['identical']} ({c['tensors']} tensors)")
        # The verification runs were the warm-up: both sides have read the model.
        results = bl.run_cases([make_case(m, model_dir) for m in a.cases], a.repeats, model_dir,
                               warmup=False)
        for r in results:
            r["output"] = checks[r["name"]]
        print()
        print(bl.table(results))
        out.update(repeats=a.repeats, model=SMALL, cases=results)
        out = {**previous, **out}
    a.output.write_text(json.dumps(out, indent=2) + "\n")
    print(f"\nwritten {a.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
