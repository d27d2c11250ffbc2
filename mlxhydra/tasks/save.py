"""``task=save``: write the composed (overridden, quantized) model as an mlx-lm model directory."""

import copy
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, List

from omegaconf import DictConfig

from ..compose import to_plain
from ..errors import TaskError

log = logging.getLogger("mlxhydra")

# Copied from the source directory when present (tokenizer, generation settings, model
# code, and the default data files of task=perplexity/kl/accuracy).
COPIED = ("eval.txt", "accuracy.jsonl", "tokenizer.json", "tokenizer_config.json",
          "special_tokens_map.json", "tokenizer.model", "vocab.json", "merges.txt", "added_tokens.json", "spiece.model", "chat_template.jinja",
          "chat_template.json", "generation_config.json", "tiktoken.model")
COPIED_GLOBS = ("*.tiktoken", "*.py")


def copy_side_files(src: Path, dst: Path) -> List[str]:
    """Copy the tokenizer and other non-weight files mlx-lm reads; returns their names."""
    names = [n for n in COPIED if (src / n).is_file()]
    names += sorted({p.name for g in COPIED_GLOBS for p in src.glob(g) if p.is_file()})
    for name in names:
        shutil.copy2(src / name, dst / name)
    return names


def target_path(value: Any, run_dir: Path) -> Path:
    """``task.path`` as an absolute path (default ``<run_dir>/model``).

    Raises:
        TaskError: the path exists already, or its parent is not a directory.
    """
    path = run_dir / "model" if value in (None, "") else Path(str(value)).expanduser().absolute()
    if path.exists() or path.is_symlink():
        raise TaskError(f"task.path={path}: already exists; refusing to overwrite it")
    if path.parent.exists() and not path.parent.is_dir():
        raise TaskError(f"task.path={path}: {path.parent} is not a directory")
    return path


def save_task(cfg: DictConfig, model: Any, config: dict, model_dir: Path, run_dir: Path):
    """Save the model with mlx-lm's ``save_model``/``save_config`` and copy the tokenizer.

    Everything is written into a temporary directory next to the target, which
    is renamed into place at the end: on error no partial directory is left.

    Returns:
        Metrics: path, bytes, files, weights_fingerprint, quantization (the
        config's entry or None).

    Raises:
        TaskError: the target exists.
    """
    from mlx_lm.utils import save_config, save_model

    from ..weights import combined_fingerprint, describe_files, weight_files

    target = target_path(to_plain(cfg.task).get("path"), run_dir)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        save_model(tmp, model)
        saved_config = copy.deepcopy(config)
        save_config(saved_config, tmp / "config.json")
        copy_side_files(model_dir, tmp)
        if target.exists():
            raise TaskError(f"task.path={target}: appeared while saving; refusing to overwrite it")
        os.rename(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    files = sorted(p.name for p in target.iterdir())
    described = describe_files(weight_files(target), "full")
    metrics = {
        "path": str(target),
        "bytes": sum(p.stat().st_size for p in target.iterdir() if p.is_file()),
        "files": files,
        "weights_fingerprint": combined_fingerprint(described),
        "quantization": config.get("quantization"),
    }
    log.info("save: wrote %s (%d files, %.1f MB)", target, len(files), metrics["bytes"] / 1e6)
    return metrics
