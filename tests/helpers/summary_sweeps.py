"""A small sweep directory as its job records say, for the summary's in-process tests."""

import json
from pathlib import Path

import yaml


def two_job_kl_sweep(root: Path) -> Path:
    """A sweep of two kl jobs (quant.bits=2,8): their run.json files and multirun.yaml, which
    is what the summary reads."""
    for job, (bits, bpw, kl) in enumerate(((2, 3.06, 0.24), (8, 9.04, 4e-5))):
        job_dir = root / f"{job}_quant.bits={bits}"
        job_dir.mkdir(parents=True)
        (job_dir / "run.json").write_text(json.dumps({
            "status": "completed", "overrides": [f"quant.bits={bits}"], "choices": {"task": "kl"},
            "quantization": {"bits_per_weight": bpw},
            "metrics": {"kl_mean": kl, "kl_mean_stderr": kl / 10}}))
    (root / "multirun.yaml").write_text(yaml.safe_dump({"hydra": {
        "overrides": {"task": ["quant.bits=2,8"]},
        "sweeper": {"_target_": "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"}}}))
    return root
