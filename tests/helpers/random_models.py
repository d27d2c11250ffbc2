"""Build a small random model with mlx-lm's own classes and save it as mlx-lm saves models.

    python tests/helpers/random_models.py OUT_DIR [--model-type llama] [--seed 0] [--shards 1|layers]
        [--quantize BITS] [--mode affine] [--set key=json ...]

Used by the tests' fixtures and the benchmark; nothing is downloaded.
"""

import argparse
import json
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten

from mlx_lm.utils import quantize_model, save_config, save_model

from mlxhydra._upstream import get_classes

BASE = {
    "llama": {
        "model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2,
        "intermediate_size": 128, "num_attention_heads": 4, "num_key_value_heads": 2,
        "rms_norm_eps": 1e-5, "vocab_size": 256, "max_position_embeddings": 512,
        "rope_theta": 10000.0, "tie_word_embeddings": False,
    },
    "qwen3": {
        "model_type": "qwen3", "hidden_size": 64, "num_hidden_layers": 2,
        "intermediate_size": 128, "num_attention_heads": 4, "num_key_value_heads": 2,
        "head_dim": 16, "rms_norm_eps": 1e-6, "vocab_size": 256,
        "max_position_embeddings": 512, "rope_theta": 1000000.0, "tie_word_embeddings": True,
    },
    "gemma3_text": {
        "model_type": "gemma3_text", "hidden_size": 64, "num_hidden_layers": 2,
        "intermediate_size": 128, "num_attention_heads": 4, "num_key_value_heads": 1,
        "head_dim": 16, "rms_norm_eps": 1e-6, "vocab_size": 256, "query_pre_attn_scalar": 16,
        "sliding_window": 8, "sliding_window_pattern": 2, "max_position_embeddings": 512,
    },
    "qwen3_moe": {
        "model_type": "qwen3_moe", "hidden_size": 64, "num_hidden_layers": 2,
        "intermediate_size": 128, "num_attention_heads": 4, "num_key_value_heads": 2,
        "head_dim": 16, "num_experts": 4, "num_experts_per_tok": 2, "decoder_sparse_step": 1,
        "mlp_only_layers": [], "moe_intermediate_size": 64, "rms_norm_eps": 1e-6,
        "vocab_size": 256, "rope_theta": 1000000.0, "tie_word_embeddings": False,
        "max_position_embeddings": 512, "norm_topk_prob": True,
    },
    # Multi-head latent attention, a dense first layer, then MoE (float32 only on CPU).
    "deepseek_v3": {
        "model_type": "deepseek_v3", "hidden_size": 64, "num_hidden_layers": 4,
        "intermediate_size": 128, "moe_intermediate_size": 32, "num_attention_heads": 4,
        "num_key_value_heads": 4, "n_shared_experts": 1, "n_routed_experts": 4,
        "num_experts_per_tok": 2, "n_group": 1, "topk_group": 1, "first_k_dense_replace": 1,
        "kv_lora_rank": 16, "q_lora_rank": 32, "qk_rope_head_dim": 8, "qk_nope_head_dim": 16,
        "v_head_dim": 16, "rms_norm_eps": 1e-6, "vocab_size": 256,
        "max_position_embeddings": 512, "rope_theta": 10000.0, "tie_word_embeddings": False,
    },
}


def build(out_dir, config, seed=0, shards=1, quantize=None, mode="affine", group_size=None,
          dtype=None):
    """Create, save and return the config of a random model in ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    mx.random.seed(seed)
    model_cls, args_cls = get_classes(config)
    model = model_cls(args_cls.from_dict(config))
    if dtype is not None:
        model.set_dtype(getattr(mx, dtype))
    mx.eval(model.parameters())
    config = dict(config)
    if quantize is not None:
        model, config = quantize_model(model, config, group_size, quantize, mode=mode)
    if shards == "layers" or shards > 1:
        weights = dict(tree_flatten(model.parameters()))
        size = sum(v.nbytes for v in weights.values())
        index = {"metadata": {"total_size": size}, "weight_map": {}}
        keys = sorted(weights)
        if shards == "layers":  # one file per decoder layer, then one for the rest (as HF checkpoints)
            layer = lambda k: int(k.split(".")[2]) if k.startswith("model.layers.") else 1 << 30  # noqa: E731
            numbers = sorted({layer(k) for k in keys})
            parts = [[k for k in keys if layer(k) == n] for n in numbers]
        else:
            per = -(-len(keys) // shards)
            parts = [keys[i * per:(i + 1) * per] for i in range(shards)]
        for i, part_keys in enumerate(parts):
            part = {k: weights[k] for k in part_keys}
            name = f"model-{i + 1:05d}-of-{len(parts):05d}.safetensors"
            mx.save_safetensors(str(out_dir / name), part, metadata={"format": "mlx"})
            index["weight_map"].update({k: name for k in part})
        (out_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    else:
        save_model(out_dir, model)
    save_config(dict(config), out_dir / "config.json")
    return config


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out_dir")
    p.add_argument("--model-type", default="llama", choices=sorted(BASE))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shards", type=lambda v: v if v == "layers" else int(v), default=1,
                   help="number of weight files, or 'layers': one per decoder layer")
    p.add_argument("--quantize", type=int, default=None)
    p.add_argument("--mode", default="affine")
    p.add_argument("--dtype", default=None)
    p.add_argument("--set", nargs="*", default=[], help="key=JSON value overrides")
    a = p.parse_args()
    config = dict(BASE[a.model_type])
    for item in a.set:
        k, _, v = item.partition("=")
        config[k] = json.loads(v)
    build(a.out_dir, config, a.seed, a.shards, a.quantize, a.mode, dtype=a.dtype)


if __name__ == "__main__":
    main()
