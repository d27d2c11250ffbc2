"""task=lora's resumable checkpoint: everything training needs to go on bit for bit.

One file, ``<run dir>/checkpoints/resume.safetensors``, replaced atomically at every
``save_every`` step: the trainable weights, the optimizer's state (its ``step`` drives the
learning-rate schedule), gradients accumulated towards the next update, the report window's
sums, mlx's random key (LoRA dropout), numpy's and Python's random states, the reports so far,
and the settings that decide the trajectory. The data order is not stored: it is replayed from
the seed (:func:`.lora_loop.replay_data_order`) and checked against the stored numpy state.
"""

import json
import random
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

from ..errors import MlxhydraError, TaskError
from ..load.weight_files import read_header
from ..record.atomic import atomic_file
from .lora_loop import Position

STATE = "resume.safetensors"
FORMAT = 1
# Settings that do not change the steps already taken: a resumed run may change them.
FREE = ("name", "config_file", "fuse", "data", "iters", "save_every", "test", "test_batches",
        "resume_from")
SPLITS = ("train", "valid")


def trajectory(settings: Mapping[str, Any], data_sha256: Mapping[str, str]) -> Dict[str, Any]:
    """The settings and data that decide every step, as a checkpoint holds them."""
    kept = {k: v for k, v in settings.items() if k not in FREE}
    return {**kept, "data_sha256": {k: data_sha256.get(k) for k in SPLITS}}


def state_file(value: str) -> Path:
    """``task.resume_from``'s checkpoint: the file, a checkpoints directory or a run directory."""
    path = Path(value).expanduser().absolute()
    for candidate in (path / "checkpoints" / STATE, path / STATE):
        if candidate.is_file():
            return candidate
    return path if path.suffix == ".safetensors" or not path.is_dir() else path / "checkpoints" / STATE


def read_meta(file: Path) -> Dict[str, Any]:
    """The checkpoint's description, from the file's header alone (no tensor is read).

    Raises:
        MlxhydraError: the file is missing, not a sound safetensors file or not a checkpoint.
    """
    header = read_header(file)
    try:
        meta = json.loads((header.get("__metadata__") or {})["mlxhydra_checkpoint"])
    except (KeyError, TypeError, ValueError):
        meta = None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise TaskError(f"{file}: not a task=lora checkpoint of format {FORMAT}")
    return meta


def resume_problems(value: Any, settings: Mapping[str, Any], data_sha256: Mapping[str, str]) -> List[str]:
    """``task.resume_from`` against this run's settings and data (no weight is read)."""
    shown = f"task.resume_from={value}"
    if value is None:
        return []
    if not isinstance(value, str) or not value:
        return [f"{shown!r}: expected a run directory, its checkpoints/ or {STATE}, or null"]
    file = state_file(value)
    if not file.exists():
        return [f"{shown}: no checkpoint at {file} (one is written every task.save_every steps)"]
    try:
        meta = read_meta(file)
    except MlxhydraError as e:
        return [f"{shown}: {e}"]
    ours = json.loads(json.dumps(trajectory(settings, data_sha256)))
    theirs = meta.get("settings") or {}
    differ = [f"{k}={ours.get(k)!r} (the checkpoint's: {theirs.get(k)!r})"
              for k in sorted(set(ours) | set(theirs), key=str) if ours.get(k) != theirs.get(k)]
    if differ:
        return [f"{shown}: the checkpoint was trained with other settings: " + "; ".join(differ)]
    if settings.get("iters", 0) <= meta["step"]:
        return [f"{shown}: the checkpoint is at step {meta['step']}, task.iters={settings.get('iters')} "
                "(expected more iterations than that)"]
    return []


def base_model(record: Mapping[str, Any]) -> Dict[str, Any]:
    """What a run's record says of the model trained on: its weight files and quantization."""
    return {k: record.get(k) for k in ("weights_fingerprint", "quantization")}


def save(file: Path, model, optimizer, p: Position, settings: Dict[str, Any], seed: int,
         reports: Dict[str, List[Dict[str, Any]]], base: Optional[Mapping[str, Any]] = None) -> None:
    """Write the checkpoint of ``p`` atomically (``base``: :func:`base_model`)."""
    import mlx.core as mx
    import numpy as np
    from mlx.utils import tree_flatten

    arrays = {f"adapters.{k}": v for k, v in tree_flatten(model.trainable_parameters())}
    arrays.update({f"optimizer.{k}": v for k, v in tree_flatten(optimizer.state)})
    if p.grad is not None:
        arrays.update({f"grad.{k}": v for k, v in tree_flatten(p.grad)})
    for name in ("losses", "n_tokens"):
        if isinstance(getattr(p, name), mx.array):
            arrays[f"window.{name}"] = getattr(p, name)
    arrays["random.mlx"] = mx.random.state[0]
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    arrays["random.numpy"] = mx.array(keys)
    meta = {"format": FORMAT, "step": p.step, "steps": p.steps, "train_time": p.train_time,
            "trained_tokens": p.trained_tokens, "seed": seed, "settings": settings, "base": dict(base or {}),
            "numpy": [int(pos), int(has_gauss), float(gauss)], "python": random.getstate(),
            "reports": reports}
    with atomic_file(file) as tmp:
        mx.save_safetensors(str(tmp), arrays, metadata={"mlxhydra_checkpoint": json.dumps(meta)})


def _tree(loaded: Dict[str, Any], prefix: str, like: Any, file: Path):
    """``like``'s tree with the checkpoint's ``prefix.*`` arrays at its leaves (all of them)."""
    from mlx.utils import tree_flatten, tree_map_with_path

    wanted = {f"{prefix}.{k}" for k, _ in tree_flatten(like)}
    found = {k for k in loaded if k.startswith(prefix + ".")}
    if wanted != found:
        odd = sorted(wanted ^ found)
        raise TaskError(f"{file}: its {prefix} do not fit this model ({len(odd)} differ, e.g. {odd[0]})")
    return tree_map_with_path(lambda path, _: loaded[f"{prefix}.{path}"], like)


def restore(file: Path, model, optimizer, seed: int, base: Optional[Mapping[str, Any]] = None
            ) -> Tuple[Position, Dict[str, Any]]:
    """Put the checkpoint's weights, optimizer and random states in place.

    Returns:
        The position to go on from, and the checkpoint's description (its ``reports``).

    Raises:
        TaskError: the file cannot be read, was trained with another seed or on another base
            (weight files, quantization; where both records say), or does not fit.
    """
    import mlx.core as mx
    from mlx.utils import tree_flatten

    meta = read_meta(file)
    if meta["seed"] != seed:
        raise TaskError(f"task.resume_from: {file} was trained with seed={meta['seed']}, this run "
                        f"has seed={seed} (expected the same seed)")
    theirs = meta.get("base") or {}
    differ = [k for k, v in (base or {}).items() if v is not None and theirs.get(k) is not None
              and json.loads(json.dumps(v)) != theirs[k]]
    if differ:
        raise TaskError(f"task.resume_from: {file} was trained on another base model: its "
                        f"{' and '.join(differ)} differ from this run's (expected the same weights "
                        "and quantization)")
    try:
        loaded = mx.load(str(file))
    except (RuntimeError, ValueError, OSError) as e:
        raise TaskError(f"task.resume_from: {file} cannot be read: {' '.join(str(e).split())}") from None
    params = model.trainable_parameters()
    model.load_weights(tree_flatten(_tree(loaded, "adapters", params, file)), strict=False)
    optimizer.init(params)
    optimizer.state = _tree(loaded, "optimizer", optimizer.state, file)
    p = Position(step=meta["step"], steps=meta["steps"], train_time=meta["train_time"],
                 trained_tokens=meta["trained_tokens"])
    if any(k.startswith("grad.") for k in loaded):
        p.grad = _tree(loaded, "grad", params, file)
    p.losses = loaded.get("window.losses", 0)
    p.n_tokens = loaded.get("window.n_tokens", 0)
    high, low = loaded["random.mlx"].tolist()
    mx.random.seed((high << 32) | low)  # mlx's key for a seed is its two 32-bit halves
    version, state, gauss = meta["python"]
    random.setstate((version, tuple(state), gauss))
    mx.eval(model.parameters(), optimizer.state, p.grad, p.losses, p.n_tokens)
    return p, {**meta, "numpy_keys": loaded["random.numpy"]}


def require_same_numpy_state(meta: Dict[str, Any], file: Path) -> None:
    """After the replay of the data order, numpy's generator must be where the checkpoint left it."""
    import numpy as np

    _, keys, pos, has_gauss, gauss = np.random.get_state()
    if not (np.array_equal(np.array(meta["numpy_keys"]), keys)
            and [int(pos), int(has_gauss), float(gauss)] == meta["numpy"]):
        raise TaskError(f"task.resume_from: {file}: replaying the data order from the seed does not "
                        f"reach the checkpoint's step {meta['step']} state (the data or mlx-lm's batching "
                        "changed since it was written)")
