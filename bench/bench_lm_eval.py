"""lm-eval benchmark: ``mlx_lm.evaluate`` vs ``python -m mlxhydra task=lm_eval``, side by side.

    python bench/bench_lm_eval.py                 # 3 interleaved repeats, medians
    python bench/bench_lm_eval.py --repeats 5 --limit 100

Both sides evaluate the embedded tiny model on mlxhydra's shipped lm-eval tasks
(``tiny_sums``, generate_until exact match; ``tiny_sums_mc``, multiple choice by
log-likelihood), offline (``HF_DATASETS_OFFLINE=1``), with seed 0:

- baseline: ``python -m mlx_lm evaluate --model TINY --tasks tiny_sums.yaml
  tiny_sums_mc.yaml`` (mlx-lm loads the directory itself; lm-eval indexes all its
  own tasks, as ``mlx_lm.evaluate`` has no include path the task YAMLs are given as files);
- candidate: ``python -m mlxhydra task=lm_eval`` (the model built by mlxhydra,
  run records, lm-eval's results and per-sample logs in the run directory).

Each measurement checks that both sides report the same scores. The measuring
(fresh processes, ``os.wait4`` peak RSS, alternating order, one warm-up) is
bench_load.py's; results go to ``bench/results_lm_eval.json``.
"""

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_load as bl  # noqa: E402

RESULTS = bl.BENCH / "results_lm_eval.json"
TINY = bl.ROOT / "mlxhydra" / "models" / "tiny"
TASKS_DIR = bl.ROOT / "mlxhydra" / "lm_eval_tasks"
YAMLS = ("tiny_sums.yaml", "tiny_sums_mc.yaml")


def baseline_commands(limit: Optional[int]):
    def commands(ctx: bl.Context):
        for name in YAMLS:  # relative task files: mlx_lm.evaluate names its output after them
            shutil.copy(TASKS_DIR / name, ctx.workdir / name)
        extra = ["--limit", str(limit)] if limit else []
        return [[bl.PY, "-m", "mlx_lm", "evaluate", "--model", str(TINY), "--tasks", *YAMLS,
                 "--output-dir", "out", "--seed", "0", *extra]]
    return commands


def baseline_scores(ctx: bl.Context) -> Dict[str, Any]:
    [written] = (ctx.workdir / "out").iterdir()
    return {"scores": {name: {k: v for k, v in values.items() if "," in k}
                       for name, values in json.loads(written.read_text()).items()}}


def candidate_scores(ctx: bl.Context) -> Dict[str, Any]:
    out = bl.mlxhydra_records(ctx)
    [record] = (ctx.workdir / "outputs").rglob("run.json")
    results_file = json.loads(record.read_text())["metrics"]["results_file"]
    results = json.loads(Path(results_file).read_text())["results"]
    out["scores"] = {name: {k: v for k, v in values.items() if "," in k}
                     for name, values in results.items()}
    return out


def make_case(limit: Optional[int]) -> bl.Case:
    extra = [f"task.limit={limit}"] if limit else []
    return bl.register_case(
        "lm_eval_tiny",
        "lm-eval tiny_sums + tiny_sums_mc on the embedded model: mlx_lm.evaluate vs task=lm_eval",
        baseline=bl.Side("mlx_lm.evaluate", baseline_commands(limit), collect=baseline_scores),
        candidate=bl.Side("mlxhydra task=lm_eval",
                          lambda ctx: [bl.mlxhydra_cli("task=lm_eval", "seed=0", *extra)],
                          collect=candidate_scores),
        needs_model=False,
    )


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3, help="measurements per side (median taken)")
    p.add_argument("--limit", type=int, default=None, help="examples per task (default: all 200)")
    p.add_argument("--no-warmup", action="store_true")
    p.add_argument("--output", type=Path, default=RESULTS)
    a = p.parse_args(argv)
    os.environ.update(HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1")
    results = bl.run_cases([make_case(a.limit)], a.repeats, None, warmup=not a.no_warmup)
    [result] = results
    scores = {which: {json.dumps(r["scores"], sort_keys=True) for r in result[which]["runs"]}
              for which in ("baseline", "candidate")}
    same = len(scores["baseline"] | scores["candidate"]) == 1
    print()
    print(bl.table(results))
    print(f"scores identical on both sides in every measurement: {same}")
    print(json.dumps(result["baseline"]["runs"][-1]["scores"]))
    a.output.write_text(json.dumps({
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "repeats": a.repeats, "limit": a.limit,
        "machine": {**bl.machine(), "lm-eval": _version("lm_eval")}, "same_scores": same,
        "cases": results,
    }, indent=2) + "\n")
    print(f"written {a.output}")
    return 0 if same else 1


def _version(package: str) -> Optional[str]:
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


if __name__ == "__main__":
    sys.exit(main())
