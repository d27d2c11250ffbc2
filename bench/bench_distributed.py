"""Distributed benchmark: 1 and 2 ranks, mlxhydra against mlx-lm, on the cached 1.1B llama.

    python bench/bench_distributed.py                 # both cases, 3 interleaved repeats
    python bench/bench_distributed.py --repeats 1 --cases ranks2

Cases (measured as in ``bench_load.py``: fresh processes, interleaved, medians, ratios):

- ``ranks1``: one process, ``mlx_lm.utils.load_model`` vs ``python -m mlxhydra model=DIR``.
- ``ranks2``: 2 ranks of the ring backend on 127.0.0.1, tensor parallelism:
  ``mlx.launch -n 2 -- python bench/mlx_lm_sharded_load.py DIR`` (``sharded_load``) vs
  ``python -m mlxhydra launch -n 2 model=DIR`` (which runs mlx.launch itself).

Wall time covers the whole command (both ranks); peak RSS is the largest rank's. Each rank's
mlx peak memory and the bytes of the parameters it holds come from the mlx-lm script's
``BENCH_RESULT`` lines and from run.json's ``distributed.ranks``. mlx-lm's sharded_load also
loads the tokenizer: the embedded model's tokenizer files are copied into the model directory.
Results: a table on stdout and ``bench/results_distributed.json``.
"""

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from bench_load import (
    BENCH,
    LLAMA_1B,
    PY,
    ROOT,
    Case,
    Context,
    Side,
    ensure_model,
    machine,
    mlxhydra_cli,
    mlxhydra_records,
    run_cases,
    table,
)

RESULTS = BENCH / "results_distributed.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def mlx_launch(ctx: Context, ranks: int, *command: str) -> List[str]:
    """mlx.launch on 127.0.0.1; its temporary files (mktemp) go into the measurement's directory."""
    from mlxhydra.distributed.launch import find_mlx_launch, free_ports

    return ["env", f"TMPDIR={ctx.workdir}", find_mlx_launch(), "-n", str(ranks), "--backend",
            "ring", "--starting-port", str(free_ports(ranks)), "--", *command]


def rank_records(ctx: Context) -> Dict[str, Any]:
    """mlxhydra's figures, with each rank's from run.json's ``distributed.ranks``."""
    out = mlxhydra_records(ctx)
    (record,) = [json.loads(p.read_text()) for p in (ctx.workdir / "outputs").rglob("run.json")]
    for r in (record.get("distributed") or {}).get("ranks", []):
        out[f"rank{r['rank']}_mx_peak_bytes"] = r["peak_memory_bytes"]
        out[f"rank{r['rank']}_parameter_bytes"] = r["parameter_bytes"]
    return out


CASES = {
    "ranks1": Case(
        "ranks1", "one process: mlx_lm.utils.load_model vs python -m mlxhydra model=DIR",
        baseline=Side("mlx-lm load_model",
                      lambda ctx: [[PY, str(BENCH / "mlx_lm_load.py"), str(ctx.model_dir)]]),
        candidate=Side("mlxhydra", lambda ctx: [mlxhydra_cli(f"model={ctx.model_dir}")],
                       collect=mlxhydra_records),
    ),
    "ranks2": Case(
        "ranks2", "2 ranks, tensor parallel: mlx-lm sharded_load vs mlxhydra launch -n 2",
        baseline=Side("mlx-lm sharded_load, 2 ranks", lambda ctx: [mlx_launch(
            ctx, 2, PY, str(BENCH / "mlx_lm_sharded_load.py"), str(ctx.model_dir))]),
        candidate=Side("mlxhydra launch -n 2", lambda ctx: [mlxhydra_cli(
            "launch", "-n", "2", f"model={ctx.model_dir}")], collect=rank_records),
    ),
}


def per_rank_table(results: List[Dict[str, Any]]) -> str:
    """Each rank's median mlx peak memory and parameter bytes, both sides."""
    lines = ["| case | side | rank | mx peak GB | parameters held GB |", "|---|---|---:|---:|---:|"]
    for r in results:
        for which in ("baseline", "candidate"):
            side = r[which]
            for rank in range(2):
                peaks = [m.get(f"rank{rank}_mx_peak_bytes") for m in side["runs"]]
                held = [m.get(f"rank{rank}_parameter_bytes") for m in side["runs"]]
                if any(p is None for p in peaks):
                    continue
                lines.append(f"| {r['name']} | {side['label']} | {rank} | "
                             f"{sorted(peaks)[len(peaks) // 2] / 1e9:.2f} | "
                             f"{sorted(held)[len(held) // 2] / 1e9:.2f} |")
    return "\n".join(lines)


def with_tokenizer(model_dir: Path) -> Path:
    """sharded_load loads a tokenizer: give the benchmark model the embedded model's."""
    for name in TOKENIZER_FILES:
        if not (model_dir / name).is_file():
            shutil.copy(ROOT / "mlxhydra" / "models" / "tiny" / name, model_dir / name)
    return model_dir


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3, help="measurements per side (median taken)")
    p.add_argument("--cases", nargs="*", choices=sorted(CASES), default=None)
    p.add_argument("--no-warmup", action="store_true")
    p.add_argument("--output", type=Path, default=RESULTS)
    a = p.parse_args(argv)
    cases = [CASES[n] for n in (a.cases or CASES)]
    model_dir = with_tokenizer(ensure_model())
    load_before = os.getloadavg()
    results = run_cases(cases, a.repeats, model_dir, warmup=not a.no_warmup)
    print(f"\nload average before {load_before[0]:.1f}, after {os.getloadavg()[0]:.1f} "
          f"({os.cpu_count()} CPUs)")
    print(table(results))
    print()
    print(per_rank_table(results))
    a.output.write_text(json.dumps({
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "repeats": a.repeats, "model": LLAMA_1B,
        "machine": {**machine(), "load_average_before": load_before}, "cases": results,
    }, indent=2) + "\n")
    print(f"\nwritten {a.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
