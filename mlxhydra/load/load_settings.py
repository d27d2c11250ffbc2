"""The ``load`` settings and what each accepts (checked before any weight is read)."""

from typing import Any, List, Mapping

from .adapters import adapter_problems

FLAGS = ("strict", "lazy", "trust_remote_code")
FINGERPRINTS = ("fast", "full")
DTYPE_NAMES = ("float16", "bfloat16", "float32")
CLASS_PATHS = ("model_class", "args_class")
SHARD_MODES = ("auto", "none", "tensor", "pipeline")  # see sharding.py


def check_dtype(dtype: Any) -> List[str]:
    """The problem with a ``load.dtype`` value, if any."""
    if dtype is None or dtype in DTYPE_NAMES:
        return []
    return [f"load.dtype={dtype!r}: expected one of {', '.join(DTYPE_NAMES)} or null"]


def check_shard(value: Any) -> List[str]:
    """The problem with a ``load.shard`` value, if any."""
    if value in SHARD_MODES:
        return []
    return [f"load.shard={value!r}: expected one of {', '.join(SHARD_MODES)}"]


def check_load(load: Mapping[str, Any]) -> List[str]:
    """Every problem of the ``load`` node.

    ``bool("no")`` is True: a flag given as a string (``load.trust_remote_code=no``)
    must be refused, not taken as true.
    """
    problems = []
    for key in FLAGS:
        if key in load and not isinstance(load[key], bool):
            problems.append(f"load.{key}={load[key]!r}: expected true or false")
    if load.get("fingerprint", "fast") not in FINGERPRINTS:
        problems.append(
            f"load.fingerprint={load.get('fingerprint')!r}: expected one of {', '.join(FINGERPRINTS)}"
        )
    problems += check_dtype(load.get("dtype"))
    problems += check_shard(load.get("shard", "auto"))
    for key in CLASS_PATHS:
        value = load.get(key)
        if value is not None and (not isinstance(value, str) or not value):
            problems.append(f"load.{key}={value!r}: expected an import path 'package.module:Class' or null")
    return problems + adapter_problems(load)
