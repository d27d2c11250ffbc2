"""``mlxhydra diff RUN_A RUN_B``: what differs between two recorded runs.

Compares, as flattened dotted keys, the task overrides (``.hydra/overrides.yaml``
parsed with Hydra's own override parser), the composed config
(``.hydra/config.yaml``), the model config (``model_config.json``), the weights
fingerprint, the library versions, the platform, the quantization summary
(bits per weight, parameters, layer counts) and the metrics. Only differing keys
are printed, with both values; timestamps, timings, memory and paths of the run
directories themselves are never compared (a metric naming a file in its own run
directory reads `<run_dir>/...`).
"""

import argparse
import json
import math
import re
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from .records import RUN_RECORD, read_json

ABSENT = "(absent)"
RUN_DIR_PLACEHOLDER = "<run_dir>"
OVERRIDES = Path(".hydra") / "overrides.yaml"
CONFIG = Path(".hydra") / "config.yaml"
HYDRA = Path(".hydra") / "hydra.yaml"
FINGERPRINT = re.compile(r"^([a-z]+:)?sha256:[0-9a-f]{64}$")


class RunDirError(Exception):
    """A path given on the command line is not a usable run directory."""


def check_run_dir(path: str, command: str) -> Path:
    """Return ``path`` as a Path, or raise RunDirError with a one-line message."""
    run_dir = Path(path)
    if not run_dir.exists():
        raise RunDirError(f"{command} {path}: no such directory")
    if not (run_dir / OVERRIDES).is_file():
        raise RunDirError(f"{command} {path}: {path} is not a run directory (no {OVERRIDES})")
    return run_dir.resolve()


def flatten(value: Any, prefix: str = "") -> Dict[str, Any]:
    """Flatten nested dicts and lists into ``{"a.b.0.c": leaf}``.

    Nested empty dicts and lists are kept as leaves so that "nothing" still
    compares; an empty or missing top level flattens to no keys.
    """
    if not prefix and not value:
        return {}
    if isinstance(value, dict) and value:
        out: Dict[str, Any] = {}
        for k, v in value.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    if isinstance(value, (list, tuple)) and value:
        out = {}
        for i, v in enumerate(value):
            out.update(flatten(v, f"{prefix}.{i}" if prefix else str(i)))
        return out
    return {prefix: value}


def same(a: Any, b: Any) -> bool:
    """Exact equality, with NaN equal to NaN and True not equal to 1."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return isinstance(a, bool) == isinstance(b, bool) and a == b


def _json(path: Path) -> Any:
    try:
        return read_json(path)
    except FileNotFoundError:
        return None
    except (OSError, json.JSONDecodeError) as e:
        raise RunDirError(f"{path}: unreadable ({e})") from e


def _yaml(path: Path) -> Any:
    from omegaconf import OmegaConf

    if not path.is_file():
        return None
    return OmegaConf.to_container(OmegaConf.load(path), resolve=False)


def parse_overrides(overrides: Sequence[str]) -> Dict[str, Any]:
    """``["quant.bits=4", "+x=1"]`` → ``{"quant.bits": "4", "+x": "1"}`` via Hydra's parser."""
    try:
        from hydra.core.override_parser.overrides_parser import OverridesParser

        parsed = OverridesParser.create().parse_overrides(list(overrides))
        return {o.get_key_element(): o.get_value_element_as_str() for o in parsed}
    except Exception:  # an override Hydra cannot parse still compares as text
        return dict(o.split("=", 1) if "=" in o else (o, None) for o in overrides)


def layer_settings(layers: Optional[Dict[str, Any]]) -> Dict[str, int]:
    """Count quantized layers per (mode, bits, group_size)."""
    counts: Counter = Counter()
    for params in (layers or {}).values():
        if isinstance(params, dict):
            counts[f"{params.get('mode', 'affine')}_{params.get('bits')}bit_g{params.get('group_size')}"] += 1
    return dict(sorted(counts.items()))


def in_run_dir(value: Any, run_dirs: Sequence[str]) -> Any:
    """A path inside the run's own directory written as ``<run_dir>/...``, so that two
    runs' files in their own directories compare equal."""
    if isinstance(value, str):
        for run_dir in run_dirs:
            value = value.replace(run_dir, RUN_DIR_PLACEHOLDER)
    return value


def load_run(run_dir: Path) -> Dict[str, Dict[str, Any]]:
    """Every compared section of a run directory, each flattened to dotted keys."""
    record = _json(run_dir / RUN_RECORD) or {}
    metrics = _json(run_dir / "metrics.json")
    if metrics is None:
        metrics = record.get("metrics") or {}
    quant = dict(record.get("quantization") or {})
    layers = quant.pop("layers", None)
    if layers is not None:
        quant["layer_settings"] = layer_settings(layers)
    own = [d for d in (record.get("run_dir"), str(run_dir)) if d]
    metrics = {k: in_run_dir(v, own) for k, v in flatten(metrics).items()}
    return {
        "status": {"": record.get("status")},
        "overrides": parse_overrides(_yaml(run_dir / OVERRIDES) or []),
        "config": flatten(_yaml(run_dir / CONFIG) or {}),
        "model_config": flatten(_json(run_dir / "model_config.json") or {}),
        "weights_fingerprint": {"": record.get("weights_fingerprint")},
        "versions": flatten(record.get("versions") or {}),
        "platform": flatten(record.get("platform") or {}),
        "quantization": flatten(quant),
        "metrics": metrics,
    }


def field_name(section: str, key: str) -> str:
    return f"{section}.{key}" if key else section


def differences(a: Dict[str, Dict[str, Any]], b: Dict[str, Dict[str, Any]]) -> List[Tuple[str, Any, Any]]:
    """``(field, value_a, value_b)`` for every key whose values differ."""
    rows = []
    for section in a:
        sa, sb = a[section], b.get(section, {})
        for key in list(sa) + [k for k in sb if k not in sa]:
            va, vb = sa.get(key, ABSENT), sb.get(key, ABSENT)
            if not same(va, vb):
                rows.append((field_name(section, key), va, vb))
    return rows


def show(value: Any, width: int = 60) -> str:
    """A value as one short table cell (a sha256 fingerprint cut to 16 hex digits)."""
    plain = isinstance(value, str) and value and value.strip() == value and value.isprintable()
    text = value if plain else json.dumps(value, default=str, ensure_ascii=False)
    if FINGERPRINT.match(text):
        return text[: text.index("sha256:") + 23] + "..."
    return text if len(text) <= width else text[: width - 3] + "..."


def table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A plain fixed-width text table."""
    cells = [list(header)] + [[show(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: Sequence[str]) -> int:
    """``mlxhydra diff RUN_A RUN_B [--exit-code]``; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="mlxhydra diff",
        description="Print the overrides, config, model config, versions, quantization "
                    "and metrics that differ between two run directories.",
    )
    parser.add_argument("run_a")
    parser.add_argument("run_b")
    parser.add_argument("--exit-code", action="store_true",
                        help="exit with 1 when the runs differ (like git diff --exit-code)")
    args = parser.parse_args(list(argv))
    try:
        a = load_run(check_run_dir(args.run_a, "diff"))
        b = load_run(check_run_dir(args.run_b, "diff"))
    except RunDirError as e:
        sys.stderr.write(f"mlxhydra: {e}\n")
        return 2
    rows = differences(a, b)
    if not rows:
        print("no differences")
        return 0
    print(table(("field", "A", "B"), rows))
    print(f"\nA: {args.run_a}\nB: {args.run_b}")
    return 1 if args.exit_code else 0
