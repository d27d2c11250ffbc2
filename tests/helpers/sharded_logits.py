"""Run under mlx.launch: load models sharded with mlxhydra's loader, save each rank's logits.

    mlx.launch -n 2 --backend ring -- python tests/helpers/sharded_logits.py OUT_DIR CASES.json

CASES.json: a list of {"name", "model_dir", "shard", "quant" (or null)}. Each rank writes
OUT_DIR/<name>.<rank>.npy (the logits of TOKENS) and OUT_DIR/<name>.<rank>.json (its
LoadReport.sharding and the quantization's unmatched_rules, or {"error": message} when loading
failed with a ConfigError).
"""

import json
import sys
from pathlib import Path

import mlx.core as mx
import numpy as np

from mlxhydra.distributed import ranks
from mlxhydra.errors import ConfigError
from mlxhydra.load.loader import build_model
from mlxhydra.load.model_config import load_config
from mlxhydra.load.settings import LoadSettings

TOKENS = [[1, 5, 9, 20, 3, 17, 42, 8, 0, 63, 11, 12]]


def main():
    out, cases = Path(sys.argv[1]), json.loads(Path(sys.argv[2]).read_text())
    world = ranks.join()
    for case in cases:
        stem = f"{case['name']}.{world.rank}"
        try:
            model, _, report = build_model(case["model_dir"], load_config(case["model_dir"]),
                                           LoadSettings.from_groups({"shard": case["shard"]}, case.get("quant")))
        except ConfigError as e:
            (out / f"{stem}.json").write_text(json.dumps({"error": str(e)}))
            continue
        logits = model(mx.array(TOKENS)).astype(mx.float32)
        np.save(out / f"{stem}.npy", np.array(logits))
        unmatched = report.quantization.get("unmatched_rules")
        (out / f"{stem}.json").write_text(json.dumps({**report.sharding, "unmatched_rules": unmatched}))


if __name__ == "__main__":
    main()
