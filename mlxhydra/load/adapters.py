"""LoRA/DoRA adapters (``load.adapter_path``), applied and fused as mlx-lm applies and fuses them.

``mlx_lm.load(path, adapter_path=...)`` loads the (quantized) model first and
then calls mlx-lm's ``load_adapters``; here the same call comes after the
loader's runtime quantization, so a 4-bit run with an adapter is mlx-lm's
QLoRA layout. ``load.fuse=true`` then merges each adapter into its layer with
the layer's own ``fuse`` (what ``mlx_lm.fuse`` does), so ``task=save`` writes
a plain model.
"""

from pathlib import Path
from typing import Any, Dict, List, Mapping

from ..config.model_source import read_json_object
from ..errors import WeightsError
from .weight_files import fingerprint

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapters.safetensors"
FINE_TUNE_TYPES = ("lora", "dora", "full")


def adapter_dir(value: str) -> Path:
    """The absolute adapter directory of a ``load.adapter_path`` value."""
    return Path(value).expanduser().absolute()


def read_adapter_config(path: Path) -> Dict[str, Any]:
    """The adapter's ``adapter_config.json`` (only a regular file is opened).

    Raises:
        ValueError: naming the file, when it is missing, not JSON or not an object.
    """
    file = path / CONFIG_FILE
    if not file.exists() and not file.is_symlink():
        raise ValueError(f"{path} has no {CONFIG_FILE} (expected an mlx-lm adapter directory "
                         f"with {CONFIG_FILE} and {WEIGHTS_FILE})")
    return read_json_object(file, "an mlx-lm adapter config", error=ValueError, bounded=False)


def adapter_problems(load: Mapping[str, Any]) -> List[str]:
    """Problems with ``load.adapter_path`` and ``load.fuse``, found without reading any weight."""
    value, fuse = load.get("adapter_path"), load.get("fuse", False)
    problems = []
    if not isinstance(fuse, bool):
        problems.append(f"load.fuse={fuse!r}: expected true or false")
    if value is None:
        if fuse is True:
            problems.append("load.fuse=true needs load.adapter_path (the adapters to fuse)")
        return problems
    if not isinstance(value, str) or not value:
        return problems + [f"load.adapter_path={value!r}: expected an adapter directory or null"]
    path = adapter_dir(value)
    if not path.is_dir():
        what = "does not exist" if not path.exists() else "is not a directory"
        return problems + [f"load.adapter_path={value}: {path} {what} (expected an mlx-lm "
                           f"adapter directory with {CONFIG_FILE} and {WEIGHTS_FILE})"]
    try:
        config = read_adapter_config(path)
    except ValueError as e:
        return problems + [f"load.adapter_path={value}: {e}"]
    kind = config.get("fine_tune_type", "lora")
    if kind not in FINE_TUNE_TYPES:
        problems.append(f"load.adapter_path={value}: {CONFIG_FILE} has fine_tune_type={kind!r}, "
                        f"expected one of {', '.join(FINE_TUNE_TYPES)}")
    elif kind != "full" and not {"num_layers", "lora_parameters"} <= set(config):
        problems.append(f"load.adapter_path={value}: {CONFIG_FILE} lacks num_layers or "
                        "lora_parameters (written by mlx_lm.lora)")
    if not (path / WEIGHTS_FILE).is_file():
        problems.append(f"load.adapter_path={value}: {path} has no {WEIGHTS_FILE}")
    return problems


def save_problems(load: Mapping[str, Any], task: Mapping[str, Any]) -> List[str]:
    """task=save writes an mlx-lm model directory, which cannot hold unfused adapters."""
    if task.get("name") == "save" and load.get("adapter_path") and not load.get("fuse"):
        return ["task=save with load.adapter_path needs load.fuse=true (the adapters are saved "
                "fused into the weights, as mlx_lm.fuse does)"]
    return []


def apply_adapters(model, value: str, fuse: bool = False) -> Dict[str, Any]:
    """Apply the adapters in ``value`` to ``model`` with mlx-lm's ``load_adapters``.

    Args:
        model: The loaded (and possibly quantized) model; changed in place.
        value: The adapter directory.
        fuse: Merge each adapter into its layer (``mlx_lm.fuse``'s step), keeping
            quantized layers quantized.

    Returns:
        The run.json ``adapter`` entry (see ``mlxhydra.record.schema.AdapterRecord``).

    Raises:
        WeightsError: adapters that do not fit the model, naming the directory.
    """
    from mlx.utils import tree_flatten, tree_unflatten
    from mlx_lm.utils import load_adapters


    path = adapter_dir(value)
    config = read_adapter_config(path)
    before = sum(v.size for _, v in tree_flatten(model.parameters()))
    try:
        load_adapters(model, str(path))
    except (ValueError, KeyError, TypeError) as e:  # mlx-lm's messages name the tensors
        detail = " ".join(str(e).replace("\n", "; ").split())
        raise WeightsError(f"load.adapter_path={value}: the adapters do not fit the model: "
                           f"{detail}") from e
    model.eval()
    if fuse:
        fused = [(name, module.fuse(dequantize=False)) for name, module in model.named_modules()
                 if hasattr(module, "fuse")]
        if fused:
            model.update_modules(tree_unflatten(fused))
    after = sum(v.size for _, v in tree_flatten(model.parameters()))
    return {
        "path": str(path),
        "config": config,
        "fingerprint": fingerprint(path / WEIGHTS_FILE, "full"),
        "fused": fuse,
        "parameters": after - before,
    }
