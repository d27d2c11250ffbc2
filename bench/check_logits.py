"""Quick in-process check: mlxhydra's loads give exactly mlx-lm's logits.

    python bench/check_logits.py

For small random llamas (built with mlx-lm's classes in a temporary
directory), compares ``mlxhydra.load_model(dir)`` with
``mlx_lm.utils.load_model(dir)`` and ``mlxhydra.load_model(dir, quant={"bits": 4,
"group_size": 64})`` with ``load_model`` + ``quantize_model(bits=4, group_size=64)``:
every parameter and the logits of a fixed prompt must be bit-identical.
Exits 1 on any difference. Run it after a performance change to the loader.
"""

import sys
import tempfile
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from helpers.random_models import BASE, build  # noqa: E402

MODELS = {
    "llama-f32": (dict(BASE["llama"]), {}),
    "llama-f16-tied": ({**BASE["llama"], "hidden_size": 256, "intermediate_size": 512,
                        "num_hidden_layers": 3, "vocab_size": 512, "tie_word_embeddings": True},
                       {"dtype": "float16", "seed": 1}),
    "llama-bf16-sharded": ({**BASE["llama"], "hidden_size": 128, "intermediate_size": 384},
                           {"dtype": "bfloat16", "seed": 2, "shards": 3}),
}


def same(a, b) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and bool(mx.array_equal(a, b).item())


def compare(label: str, ours, theirs) -> list:
    problems = []
    p_ours, p_theirs = dict(tree_flatten(ours.parameters())), dict(tree_flatten(theirs.parameters()))
    if p_ours.keys() != p_theirs.keys():
        problems.append(f"{label}: parameter names differ: {sorted(p_ours.keys() ^ p_theirs.keys())[:5]}")
    else:
        diff = [k for k in p_ours if not same(p_ours[k], p_theirs[k])]
        if diff:
            problems.append(f"{label}: {len(diff)} parameters differ, e.g. {diff[:3]}")
    tokens = mx.array([[1, 5, 9, 2, 7, 3, 11, 4]])
    lo, lt = ours(tokens), theirs(tokens)
    if not same(lo, lt):
        problems.append(f"{label}: logits differ (max abs {mx.abs(lo - lt).max().item()})")
    return problems


def main() -> int:
    import mlxhydra
    from mlx_lm.utils import load_model, quantize_model

    problems = []
    with tempfile.TemporaryDirectory(prefix="mlxhydra-logits-") as tmp:
        for name, (config, options) in MODELS.items():
            d = Path(tmp) / name
            build(d, config, **options)
            ours, _ = mlxhydra.load_model(d)
            theirs, _ = load_model(d)
            problems += compare(f"{name} float", ours, theirs)
            ours, ours_config = mlxhydra.load_model(d, quant={"bits": 4, "group_size": 64})
            theirs, theirs_config = load_model(d)
            theirs, theirs_config = quantize_model(theirs, theirs_config, 64, 4)
            problems += compare(f"{name} 4-bit", ours, theirs)
            if ours_config.get("quantization") != theirs_config.get("quantization"):
                problems.append(f"{name} 4-bit: config quantization "
                                f"{ours_config.get('quantization')} != {theirs_config.get('quantization')}")
            print(f"{name}: checked float and 4-bit", flush=True)
    for p in problems:
        print("DIFFERENT:", p)
    print("logits and parameters identical to mlx-lm" if not problems else f"{len(problems)} differences")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
