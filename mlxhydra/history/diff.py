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
import re
import sys
from collections import Counter
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from ..config.overrides import parse_overrides
from ..errors import RunDirError
from ..record.run_dir import RunDir, require_run_dir
from ..record.schema import flatten, same

ABSENT = "(absent)"
# What a run directory must hold to be compared (besides .hydra/overrides.yaml).
NEEDED = (RunDir.RECORD, f"{RunDir.HYDRA}/config.yaml")
RUN_DIR_PLACEHOLDER = "<run_dir>"
FINGERPRINT = re.compile(r"^([a-z]+:)?sha256:[0-9a-f]{64}$")


def override_items(overrides: Sequence[str]) -> Dict[str, Any]:
    """``["quant.bits=4", "+x=1"]`` → ``{"quant.bits": "4", "+x": "1"}`` (the prefix kept)."""
    return {o.prefix + o.key: o.value_text for o in parse_overrides(overrides)}


def layer_settings(layers: Optional[Dict[str, Any]]) -> Dict[str, int]:
    """Count quantized layers per (mode, bits, group_size)."""
    counts: Counter = Counter()
    for params in (layers.values() if isinstance(layers, dict) else ()):
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


def load_run(run_dir: RunDir) -> Dict[str, Dict[str, Any]]:
    """Every compared section of a run directory, each flattened to dotted keys.

    Raises:
        RunDirError: a file of the run directory that is damaged, named.
    """
    record = run_dir.read_record()
    metrics = run_dir.read_metrics()
    if metrics is None:
        metrics = record.get("metrics") or {}
    quant = dict(record.get("quantization") or {})
    layers = quant.pop("layers", None)
    if layers is not None:
        quant["layer_settings"] = layer_settings(layers)
    own = [d for d in (record.get("run_dir"), str(run_dir.path)) if isinstance(d, str) and d]
    metrics = {k: in_run_dir(v, own) for k, v in flatten(metrics).items()}
    return {
        "status": {"": record.get("status")},
        "overrides": override_items(run_dir.read_overrides()),
        "config": flatten(run_dir.read_config()),
        "model_config": flatten(run_dir.read_model_config() or {}),
        "weights_fingerprint": {"": record.get("weights_fingerprint")},
        "versions": flatten(record.get("versions") or {}),
        "platform": flatten(record.get("platform") or {}),
        "quantization": {k: in_run_dir(v, own) for k, v in flatten(quant).items()},
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
        a = load_run(require_run_dir(args.run_a, "diff", NEEDED))
        b = load_run(require_run_dir(args.run_b, "diff", NEEDED))
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
