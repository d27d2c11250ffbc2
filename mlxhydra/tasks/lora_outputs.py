"""task=lora's files in the run directory, in mlx-lm's layout, never half written.

Training writes its adapters into ``<run dir>/checkpoints/``, and every ``save_every``
iterations mlx-lm's numbered copy and the resumable checkpoint (:mod:`.lora_checkpoint`,
which stays there); only once training ends are ``adapters.safetensors`` and
``adapter_config.json`` renamed into the run directory, so ``load.adapter_path=<run dir>`` (or
``latest``) and ``mlx_lm.load(..., adapter_path=<run dir>)`` never see a half-written pair.
"""

import os
from pathlib import Path
from typing import Any, Dict

CHECKPOINTS = "checkpoints"
ADAPTERS = "adapters.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
TRAIN_LOG = "train_log.jsonl"
LOSS_FIGURE = "loss.png"
FUSED = "fused_model"


class Staging:
    """Where the trainer writes (``checkpoints/``) and how its result reaches the run directory."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.dir = self.run_dir / CHECKPOINTS
        self.adapter_file = self.dir / ADAPTERS

    def __enter__(self) -> "Staging":
        self.dir.mkdir(exist_ok=True)
        return self

    def publish(self, adapter_config: Dict[str, Any]) -> None:
        """Move the final adapters into the run directory, then write their config (as
        mlx_lm.lora writes it: mlx-lm's ``save_config`` of its arguments)."""
        from mlx_lm.utils import save_config

        staged_config = self.dir / ADAPTER_CONFIG
        save_config(dict(adapter_config), staged_config)
        os.replace(self.adapter_file, self.run_dir / ADAPTERS)
        os.replace(staged_config, self.run_dir / ADAPTER_CONFIG)

    def __exit__(self, *exc: Any) -> None:
        # A failed or interrupted run leaves no unnumbered (possibly half-written) adapters.
        for name in (ADAPTERS, ADAPTER_CONFIG):
            try:
                (self.dir / name).unlink()
            except FileNotFoundError:
                pass
        try:
            self.dir.rmdir()  # only when no numbered checkpoint was written
        except OSError:
            pass


def fuse(model) -> int:
    """Merge each adapter into its layer, as mlx_lm.fuse does (quantized layers stay quantized).

    Returns:
        The number of layers fused.
    """
    from mlx.utils import tree_unflatten

    model.eval()
    fused = [(n, m.fuse(dequantize=False)) for n, m in model.named_modules() if hasattr(m, "fuse")]
    if fused:
        model.update_modules(tree_unflatten(fused))
    return len(fused)


def save_figure(fig, path: Path) -> None:
    """Write a Figure as PNG, atomically."""
    import io

    from ..record.atomic import write_bytes_atomic

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    write_bytes_atomic(path, buf.getvalue())
