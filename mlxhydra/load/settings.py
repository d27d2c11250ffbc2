"""How to load a model: the ``load`` and ``quant`` groups, checked once and frozen.

:class:`LoadSettings` is what :func:`~mlxhydra.load.loader.build_model` takes:
the job, the KL reference, the draft model and the Python API each build one
(:meth:`LoadSettings.from_groups`) and load through the same function. The
defaults are those of ``conf/load/default.yaml`` and ``conf/quant/none.yaml``,
read from the shipped files; none is repeated here.
"""

import dataclasses
from dataclasses import dataclass
from typing import Any, List, Mapping, Optional, Union

from ..config.declared import shipped_defaults, unknown_key_problems
from ..errors import ConfigError
from .adapters import adapter_problems
from .quant_spec import QuantSpec, parse_quant
from .quantized_compute import compute_problems

FLAGS = ("strict", "lazy", "trust_remote_code")
FINGERPRINTS = ("fast", "full")
DTYPE_NAMES = ("float16", "bfloat16", "float32")
CLASS_PATHS = ("model_class", "args_class")
SHARD_MODES = ("auto", "none", "tensor", "pipeline")  # see sharding.py


def dtype_problems(dtype: Any) -> List[str]:
    """The problem with a ``load.dtype`` value, if any."""
    if dtype is None or dtype in DTYPE_NAMES:
        return []
    return [f"load.dtype={dtype!r}: expected one of {', '.join(DTYPE_NAMES)} or null"]


def shard_problems(value: Any) -> List[str]:
    """The problem with a ``load.shard`` value, if any."""
    if value in SHARD_MODES:
        return []
    return [f"load.shard={value!r}: expected one of {', '.join(SHARD_MODES)}"]


def load_problems(load: Mapping[str, Any]) -> List[str]:
    """Every problem of the ``load`` node.

    ``bool("no")`` is True: a flag given as a string (``load.trust_remote_code=no``)
    must be refused, not taken as true.
    """
    problems = []
    for key in FLAGS:
        if key in load and not isinstance(load[key], bool):
            problems.append(f"load.{key}={load[key]!r}: expected true or false")
    if "fingerprint" in load and load["fingerprint"] not in FINGERPRINTS:
        problems.append(
            f"load.fingerprint={load['fingerprint']!r}: expected one of {', '.join(FINGERPRINTS)}"
        )
    problems += dtype_problems(load.get("dtype"))
    if "shard" in load:
        problems += shard_problems(load["shard"])
    for key in CLASS_PATHS:
        value = load.get(key)
        if value is not None and (not isinstance(value, str) or not value):
            problems.append(f"load.{key}={value!r}: expected an import path 'package.module:Class' or null")
    return problems + adapter_problems(load)


@dataclass(frozen=True)
class LoadSettings:
    """The checked ``load`` settings and the parsed ``quant`` node of one model.

    The fields other than ``quant`` and ``compute`` are the keys of
    ``conf/load/default.yaml`` (a test keeps them equal).
    """

    strict: bool
    lazy: bool
    dtype: Optional[str]
    trust_remote_code: bool
    model_class: Optional[str]
    args_class: Optional[str]
    fingerprint: str
    adapter_path: Optional[str]
    fuse: bool
    shard: str
    quant: Optional[QuantSpec] = None  # None: no runtime quantization
    compute: Optional[str] = None  # quant.compute: native, dequantized, auto (None: native)

    @classmethod
    def from_groups(cls, load: Optional[Mapping[str, Any]] = None,
                    quant: Union[QuantSpec, Mapping[str, Any], None] = None) -> "LoadSettings":
        """Check and freeze a ``load`` node and a ``quant`` node (or an already parsed QuantSpec).

        Keys missing from ``load`` take ``conf/load/default.yaml``'s values; a
        missing ``quant`` node means no quantization.

        Raises:
            ConfigError: every problem of both nodes.
        """
        node = {**shipped_defaults("load", "default"), **(load or {})}
        problems = unknown_key_problems("load", node) + load_problems(node)
        compute = quant.get("compute") if isinstance(quant, Mapping) else None
        problems += compute_problems(compute)
        spec = quant if isinstance(quant, QuantSpec) else None
        if quant is not None and spec is None:
            try:
                spec = parse_quant(quant)
            except ConfigError as e:
                problems += e.problems
        if problems:
            raise ConfigError(problems)
        return cls.checked(node, spec, compute)

    @classmethod
    def checked(cls, load: Mapping[str, Any], quant: Optional[QuantSpec],
                compute: Optional[str]) -> "LoadSettings":
        """Freeze settings already checked (the validate stage checks them with everything else)."""
        node = {**shipped_defaults("load", "default"), **load}
        own = {f.name: node[f.name] for f in dataclasses.fields(cls) if f.name not in ("quant", "compute")}
        return cls(**own, quant=quant, compute=compute)

    def replace(self, **changes: Any) -> "LoadSettings":
        """A copy with some fields changed (the draft model: as stored, unsharded)."""
        return dataclasses.replace(self, **changes)
