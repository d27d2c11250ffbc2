"""Generation and adapter benchmark: mlxhydra against mlx-lm, side by side in one process.

    python bench/bench_generate.py                 # 5 interleaved repeats, medians
    python bench/bench_generate.py --repeats 3 --tokens 128

Cases (each side measured alternately, A B then B A, after one untimed warm-up):

- ``generate``: tokens/s of ``mlx_lm.generate.stream_generate`` consumed as
  ``mlx_lm.generate`` does, against mlxhydra's ``generate_text`` with a stop
  string that never matches and a streaming sink (the text state machine and
  the callback are the whole difference). eos is ignored so both generate
  exactly ``--tokens`` tokens.
- ``speculative``: the same with a draft model (a smaller random llama) drafting
  3 tokens a step (``mlx_lm.generate``'s default), both sides.
- ``load`` and ``adapter_load``: seconds for ``mlx_lm.load(dir)`` against
  mlxhydra's ``prepare`` of ``model=dir`` (composition, checks, fingerprint,
  load), then the same with the adapter (``adapter_path=...``,
  ``load.adapter_path=...``): the difference is what applying the adapter costs.
- ``kv_scoring``: seconds to score one batch of rows in one forward call
  against the same rows through a quantized KV cache (``task.kv_bits=8``,
  ``prefill_step_size`` 1 and 16): the cost of measuring KV quantization.

The models are random llamas built with mlx-lm's classes in a temporary
directory, with the embedded tiny model's tokenizer; nothing is downloaded.
Results: a table on stdout and ``bench/results_generate.json``.
"""

import argparse
import json
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT / "tests"))

MODEL = {"model_type": "llama", "hidden_size": 256, "num_hidden_layers": 4,
         "intermediate_size": 704, "num_attention_heads": 4, "num_key_value_heads": 2,
         "rms_norm_eps": 1e-5, "vocab_size": 128, "max_position_embeddings": 2048,
         "rope_theta": 10000.0, "tie_word_embeddings": False}
DRAFT = {**MODEL, "hidden_size": 64, "num_hidden_layers": 2, "intermediate_size": 128,
         "num_attention_heads": 2, "num_key_value_heads": 1}


def build(root: Path):
    from helpers.adapters import make_adapter
    from helpers.random_models import build as build_model

    from mlxhydra.config.model_source import embedded_models_dir

    tiny = embedded_models_dir() / "tiny"
    dirs = {}
    for name, config, seed in (("model", MODEL, 0), ("draft", DRAFT, 1)):
        d = root / name
        build_model(d, config, seed=seed)
        for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            shutil.copy(tiny / f, d / f)
        dirs[name] = d
    dirs["adapter"] = make_adapter(dirs["model"], root / "adapter", num_layers=4, rank=8)
    return dirs


def alternate(a, b, repeats):
    """Run a() and b() alternately (a b, b a, ...) after one warm-up each; medians."""
    a(), b()
    times = {"mlx-lm": [], "mlxhydra": []}
    for i in range(repeats):
        for name, f in ((("mlx-lm", a), ("mlxhydra", b)) if i % 2 == 0
                        else (("mlxhydra", b), ("mlx-lm", a))):
            times[name].append(f())
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--output", default=str(BENCH / "results_generate.json"))
    args = parser.parse_args()

    import mlx.core as mx
    from mlx_lm import load as mlx_lm_load
    from mlx_lm.generate import stream_generate
    from mlx_lm.sample_utils import make_sampler

    from mlxhydra._upstream import clear_eos_tokens
    from mlxhydra.config.composition import compose
    from mlxhydra.job.pipeline import prepare
    from mlxhydra.job.validation import validate
    from mlxhydra.tasks.generation import Generation, generate_text
    from mlxhydra.tasks.kv_cache import ThroughCache

    root = Path(tempfile.mkdtemp(prefix="mlxhydra-bench-"))
    try:
        dirs = build(root)
        model, tokenizer = mlx_lm_load(str(dirs["model"]))
        draft, _ = mlx_lm_load(str(dirs["draft"]))
        clear_eos_tokens(tokenizer)
        prompt = tokenizer.encode("41+28=069\n12+07=019\n" * 4)
        sampler = make_sampler(0.0)
        results = {}

        def theirs(draft_model=None):
            def run():
                tic = time.perf_counter()
                text = ""
                for r in stream_generate(model, tokenizer, prompt, max_tokens=args.tokens,
                                         sampler=sampler, draft_model=draft_model,
                                         num_draft_tokens=3):
                    text += r.text
                return r.generation_tokens / (time.perf_counter() - tic)
            return run

        def ours(draft_model=None):
            sink = []
            how = Generation(max_tokens=args.tokens, sampler=sampler, stop=["never-matches"],
                             on_text=sink.append, draft_model=draft_model)

            def run():
                tic = time.perf_counter()
                out = generate_text(model, tokenizer, prompt, how)
                return out["generation_tokens"] / (time.perf_counter() - tic)
            return run

        results["generate (tokens/s)"] = alternate(theirs(), ours(), args.repeats)
        results["speculative (tokens/s)"] = alternate(theirs(draft), ours(draft), args.repeats)

        def load_theirs(**adapter):
            def run():
                tic = time.perf_counter()
                mlx_lm_load(str(dirs["model"]), **adapter)
                return time.perf_counter() - tic
            return run

        def load_ours(*adapter):
            def run():
                tic = time.perf_counter()
                cfg = compose([f"model={dirs['model']}", *adapter])
                prepare(cfg, validate(cfg))
                return time.perf_counter() - tic
            return run

        results["load (s)"] = alternate(load_theirs(), load_ours(), args.repeats)
        results["adapter_load (s)"] = alternate(
            load_theirs(adapter_path=str(dirs["adapter"])),
            load_ours(f"load.adapter_path={dirs['adapter']}"), args.repeats)

        rows = mx.array([prompt[:64]] * 4)
        kv = {}
        for label, task in (("one forward call", None),
                            ("kv_bits=8, step 16", {"kv_bits": 8, "kv_group_size": 64,
                                                    "quantized_kv_start": 0, "prefill_step_size": 16}),
                            ("kv_bits=8, step 1", {"kv_bits": 8, "kv_group_size": 64,
                                                   "quantized_kv_start": 0, "prefill_step_size": 1})):
            forward = model if task is None else ThroughCache(model, task)
            mx.eval(forward(rows))
            times = []
            for _ in range(args.repeats):
                tic = time.perf_counter()
                mx.eval(forward(rows))
                times.append(time.perf_counter() - tic)
            kv[label] = statistics.median(times)
        results["kv_scoring (s per 4x64 batch)"] = kv
    finally:
        shutil.rmtree(root, ignore_errors=True)

    print(f"{'case':34} {'mlx-lm':>10} {'mlxhydra':>10} {'ratio':>7}")
    for case, sides in results.items():
        if "mlx-lm" in sides:
            ratio = sides["mlxhydra"] / sides["mlx-lm"]
            print(f"{case:34} {sides['mlx-lm']:10.3f} {sides['mlxhydra']:10.3f} {ratio:7.3f}")
        else:
            base = sides["one forward call"]
            for label, seconds in sides.items():
                print(f"{case + ': ' + label:50} {seconds:10.4f} s  x{seconds / base:.1f}")
    out = {"platform": platform.platform(), "machine": platform.machine(), "repeats": args.repeats,
           "tokens": args.tokens, "results": results}
    Path(args.output).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
