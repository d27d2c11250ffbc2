"""LoRA/DoRA adapters (``load.adapter_path``), applied and fused as mlx-lm applies and fuses them.

``mlx_lm.load(path, adapter_path=...)`` loads the (quantized) model first and
then calls mlx-lm's ``load_adapters``; here the same call comes after the
loader's runtime quantization, so a 4-bit run with an adapter is mlx-lm's
QLoRA layout. ``load.fuse=true`` then merges each adapter into its layer with
the layer's own ``fuse`` (what ``mlx_lm.fuse`` does), so ``task=save`` writes
a plain model.
"""

import math
from pathlib import Path
from typing import Any, Dict, List, Mapping

from ..config.checks import MAX_INTEGER
from ..config.model_source import read_json_object
from ..errors import WeightsError
from .weight_files import fingerprint, read_header

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapters.safetensors"
FINE_TUNE_TYPES = ("lora", "dora", "full")
# safetensors dtypes that are not floating point: no adapter parameter holds them (mlx-lm trains
# only floating-point parameters), as no floating-point parameter of a model takes them.
NOT_FLOATING = ("BOOL", "U8", "I8", "I16", "U16", "I32", "U32", "I64", "U64")
SHOWN = 5


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
    problems += [f"load.adapter_path={value}: {CONFIG_FILE} {p}" for p in config_problems(config)]
    weights = path / WEIGHTS_FILE
    if not weights.exists() and not weights.is_symlink():
        problems.append(f"load.adapter_path={value}: {path} has no {WEIGHTS_FILE}")
        return problems
    try:
        header = read_header(weights)  # a regular file with a sound header (as for base weights)
    except WeightsError as e:
        return problems + [f"load.adapter_path={value}: {e}"]
    wrong = sorted(f"{name} {info['dtype']}" for name, info in header.items()
                   if name != "__metadata__" and info["dtype"] in NOT_FLOATING)
    if wrong:
        more = f" (+{len(wrong) - SHOWN} more)" if len(wrong) > SHOWN else ""
        problems.append(f"load.adapter_path={value}: {weights} holds integer or boolean data, which "
                        f"no adapter parameter takes (they are floating point): {len(wrong)} wrong "
                        f"dtype: {', '.join(wrong[:SHOWN])}{more}")
    return problems


def config_problems(config: Mapping[str, Any]) -> List[str]:
    """Every value of ``adapter_config.json`` that mlx-lm's ``load_adapters`` reads, checked.

    mlx-lm reads ``fine_tune_type`` (default lora) and, for lora and dora,
    ``num_layers`` (the last N blocks; -1 or 0: all of them, as Python slices)
    and ``lora_parameters``: ``rank``, ``scale``, ``dropout`` (``nn.Dropout``:
    0 <= p < 1) and optional ``keys`` (module paths). ``use_dora``, written by
    older mlx-lm, must agree with ``fine_tune_type``, the key mlx-lm reads now.
    """
    problems: List[str] = []

    def bad(key: str, value: Any, expected: str) -> None:
        problems.append(f"has {key}={value!r}, expected {expected}")

    def integer(value: Any, low: int) -> bool:
        return type(value) is int and low <= value <= MAX_INTEGER

    kind = config.get("fine_tune_type", "lora")
    if kind not in FINE_TUNE_TYPES:
        bad("fine_tune_type", kind, f"one of {', '.join(FINE_TUNE_TYPES)}")
        return problems
    use_dora = config.get("use_dora")
    if "use_dora" in config and not isinstance(use_dora, bool):
        bad("use_dora", use_dora, "true or false")
    elif use_dora is True and kind != "dora":
        problems.append(f"has use_dora=true with fine_tune_type={kind!r}: mlx-lm reads only "
                        "fine_tune_type (set fine_tune_type to dora)")
    if kind == "full":
        return problems
    if "num_layers" not in config:
        problems.append("lacks num_layers (written by mlx_lm.lora)")
    elif not integer(config["num_layers"], -1):
        bad("num_layers", config["num_layers"], f"an integer from -1 (all layers) to {MAX_INTEGER}")
    lora = config.get("lora_parameters")
    if not isinstance(lora, dict):
        what = "lacks lora_parameters" if "lora_parameters" not in config else None
        if what:
            problems.append(f"{what} (written by mlx_lm.lora)")
        else:
            bad("lora_parameters", lora, "a mapping with rank, scale and dropout")
        return problems
    for key, ok, expected in (
        ("rank", lambda v: integer(v, 1), f"an integer from 1 to {MAX_INTEGER}"),
        ("scale", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v),
         "a finite number"),
        ("dropout", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v < 1,
         "a number from 0 to below 1"),
    ):
        if key not in lora:
            problems.append(f"lacks lora_parameters.{key} (written by mlx_lm.lora)")
        elif not ok(lora[key]):
            bad(f"lora_parameters.{key}", lora[key], expected)
    keys = lora.get("keys")
    if keys is not None and not (isinstance(keys, list) and all(isinstance(k, str) and k for k in keys)):
        bad("lora_parameters.keys", keys, "a list of module paths (self_attn.q_proj...) or null")
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
