"""LoRA/DoRA adapters made as ``mlx_lm.lora`` makes them, with random non-zero weights.

mlx-lm's tuner converts the layers (``linear_to_lora_layers`` on a frozen
model), the trainable parameters go to ``adapters.safetensors`` and the
settings to ``adapter_config.json`` (``save_config(vars(args))``). Training is
replaced by random values, so that the adapters change the logits.
"""

from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten, tree_map, tree_unflatten

from mlx_lm.tuner.utils import linear_to_lora_layers
from mlx_lm.utils import load_model, save_config


def make_adapter(model_dir: Path, out_dir: Path, fine_tune_type: str = "lora", num_layers: int = 2,
                 rank: int = 4, scale: float = 10.0, seed: int = 0) -> Path:
    """Write an adapter for the model in ``model_dir`` to ``out_dir`` and return ``out_dir``."""
    model, _ = load_model(Path(model_dir))
    model.freeze()
    lora_parameters = {"rank": rank, "scale": scale, "dropout": 0.0}
    linear_to_lora_layers(model, num_layers, lora_parameters, use_dora=fine_tune_type == "dora")
    mx.random.seed(seed)
    trained = tree_map(lambda p: 0.05 * mx.random.normal(p.shape), model.trainable_parameters())
    if fine_tune_type == "dora":  # keep the magnitudes near the layers' own norms
        flat = dict(tree_flatten(model.trainable_parameters()))
        trained = tree_unflatten([(k, flat[k] * (1 + v) if k.endswith(".m") else v)
                                  for k, v in tree_flatten(trained)])
    model.update(trained)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    mx.save_safetensors(str(out_dir / "adapters.safetensors"),
                        dict(tree_flatten(model.trainable_parameters())))
    save_config({"fine_tune_type": fine_tune_type, "num_layers": num_layers,
                 "lora_parameters": lora_parameters, "model": str(model_dir)},
                out_dir / "adapter_config.json")
    return out_dir
