"""``task=kl``: KL(reference ‖ this model) on the same tokens, with cached reference log-probs.

The metrics are those of llama.cpp's ``perplexity --kl-divergence``
(:mod:`mlxhydra.stats`): both perplexities and their ratio, KL per token (mean and
distribution), Δp of the correct token and top-1 agreement ("same top p"),
each with its standard error. They also go to ``kl_report.txt`` in the run
directory, laid out as llama.cpp prints them.
"""

import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from ..config.checks import SettingsCheck
from ..distributed import ranks
from ..errors import TaskError
from ..file_checks import first_non_directory
from ..load.data_files import file_sha256
from ..load.tokenizer import load_tokenizer
from ..progress import progress
from ..record.atomic import atomic_directory, write_bytes_atomic
from ..stats import report_text, summarize
from .common import Metrics, TaskInput, peak_memory_gb
from .kv_cache import ThroughCache, kv_problems, uses_cache
from .perplexity import eval_data, eval_data_problems
from .reference import (
    build_reference,
    cache_key,
    reference_problems,
    require_same_weights,
    resolve_reference,
)

log = logging.getLogger("mlxhydra")

# The tokenizer's files are checked with the settings, before any weight is read.
USES_TOKENIZER = True
# Runs on a model sharded across the ranks of a distributed run (load.shard).
RUNS_SHARDED = True

CACHE_DTYPES = ("float32", "float16", "bfloat16")
REPORT = "kl_report.txt"


def settings_problems(task: Dict[str, Any]) -> List[str]:
    """Every problem of task=kl's settings."""
    c = SettingsCheck(task)
    c.problems += eval_data_problems(c.task)
    c.problems += kv_problems(c.task)
    c.choice("cache_dtype", CACHE_DTYPES)
    c.boolean("cache")
    cache_dir = task.get("cache_dir")
    if cache_dir is not None and (not isinstance(cache_dir, str) or not cache_dir):
        c.fail("cache_dir", "a directory path or null")
    elif cache_dir is not None:
        blocked = first_non_directory(Path(cache_dir).expanduser())
        if blocked is not None:
            c.problems.append(f"task.cache_dir={cache_dir}: {blocked} is not a directory")
    return c.problems + reference_problems(task.get("reference"))


def log_probs(model, batch):
    """Log-softmax (float32) of the model's next-token logits for ``batch[:, :-1]``."""
    import mlx.core as mx

    logits = model(batch[:, :-1]).astype(mx.float32)
    return logits - mx.logsumexp(logits, axis=-1, keepdims=True)


def default_cache_dir() -> Path:
    """``<working directory>/outputs/.cache/kl`` (Hydra's runtime cwd when in a run)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        cwd = HydraConfig.get().runtime.cwd
    except Exception:
        cwd = os.getcwd()
    return Path(cwd) / "outputs" / ".cache" / "kl"


# task.cache=false: the reference log-probabilities of this process's latest KL job, in a
# temporary directory that lives as long as the process, one reference at a time: the jobs of
# a sweep against the same reference (same key) compute it once, and nothing is left on disk.
_scratch: Dict[str, tempfile.TemporaryDirectory] = {}
_scratch_lock = threading.Lock()


def process_scratch(key: str) -> Tuple[Path, bool]:
    """Where this process keeps the uncached reference of ``key``, and whether it is there.

    Another key's reference is deleted first (one at a time).
    """
    with _scratch_lock:
        held = _scratch.get(key)
        if held is not None and is_cached(Path(held.name) / "reference"):
            return Path(held.name) / "reference", True
        for old in _scratch.values():
            old.cleanup()
        _scratch.clear()
        made = tempfile.TemporaryDirectory(prefix="mlxhydra-kl-")
        _scratch[key] = made
        return Path(made.name) / "reference", False


def forget_scratch() -> None:
    """Delete the reference this process keeps for task.cache=false (tests; disk space)."""
    with _scratch_lock:
        for held in _scratch.values():
            held.cleanup()
        _scratch.clear()


def write_reference(model, tokens, batch_size: int, dtype: str, target: Path, meta: Dict) -> None:
    """Compute the reference log-probs batch by batch into ``target`` (written atomically).

    A temporary directory next to ``target`` is renamed into place at the end;
    if another process got there first, its copy is kept.
    """
    import mlx.core as mx

    try:
        with atomic_directory(target) as tmp:
            starts = range(0, tokens.shape[0], batch_size)
            for i, s in enumerate(progress(starts, len(starts), "reference")):
                lp = log_probs(model, tokens[s: s + batch_size]).astype(getattr(mx, dtype))
                mx.save_safetensors(str(tmp / f"logprobs-{i:05d}.safetensors"), {"logprobs": lp})
            (tmp / "meta.json").write_text(json.dumps({**meta, "batches": len(starts)}, indent=2,
                                                      default=str))
    except (FileExistsError, OSError):
        if not is_cached(target):  # another process wrote the same reference first: keep it
            raise


def is_cached(target: Path) -> bool:
    try:
        meta = json.loads((target / "meta.json").read_text())
    except (OSError, ValueError):
        return False
    return all((target / f"logprobs-{i:05d}.safetensors").is_file() for i in range(meta["batches"]))


def compare(model, tokens, batch_size: int, cached: Path) -> Dict[str, Any]:
    """Per-token KL, top-1 agreement and NLLs of the model against cached reference log-probs.

    Raises:
        TaskError: the reference's vocabulary differs from this model's.
    """
    import mlx.core as mx

    parts: Dict[str, list] = {"kl": [], "same": [], "nll_ref": [], "nll": [], "dp": []}
    starts = range(0, tokens.shape[0], batch_size)
    for i, s in enumerate(progress(starts, len(starts), "kl")):
        batch = tokens[s: s + batch_size]
        ref = mx.load(str(cached / f"logprobs-{i:05d}.safetensors"))["logprobs"].astype(mx.float32)
        lp = log_probs(model, batch)
        if ref.shape != lp.shape:
            raise TaskError(f"task.reference: its logits have shape {tuple(ref.shape)}, this "
                            f"model's {tuple(lp.shape)} (different vocabularies?)")
        targets = batch[:, 1:, None]
        ref_t = mx.take_along_axis(ref, targets, axis=-1)[..., 0]
        lp_t = mx.take_along_axis(lp, targets, axis=-1)[..., 0]
        kl = mx.sum(mx.exp(ref) * (ref - lp), axis=-1)
        same = mx.argmax(ref, axis=-1) == mx.argmax(lp, axis=-1)
        dp = mx.exp(lp_t) - mx.exp(ref_t)
        mx.eval(kl, same, ref_t, lp_t, dp)
        for name, value in (("kl", kl), ("same", same), ("nll_ref", -ref_t), ("nll", -lp_t),
                            ("dp", dp)):
            parts[name].append(np.array(value, dtype=np.float64).ravel())
    return {k: np.concatenate(v) for k, v in parts.items()}


def follow_reference(model, ref, tokens, batch_size: int, shard: Optional[str]) -> Metrics:
    """Another rank than 0 of a distributed run: the same (collective) forward passes, nothing kept.

    Rank 0 decides whether the reference must be computed, computes the statistics
    and writes the cache.
    """
    import mlx.core as mx

    starts = range(0, tokens.shape[0], batch_size)
    if not ranks.rank0_decides(False):
        reference = build_reference(ref, shard)
        for s in starts:
            mx.eval(log_probs(reference, tokens[s: s + batch_size]))
        del reference
    for s in starts:
        mx.eval(log_probs(model, tokens[s: s + batch_size]))
    return {}


def execute(job: TaskInput) -> Metrics:
    """KL divergence of this model from a reference on ``task.data``.

    Returns:
        Metrics: see :func:`mlxhydra.stats.summarize`, plus reference, reference_cached,
        cache_path, samples, sequence_length, data, report, seconds, peak_memory_gb.

    Raises:
        TaskError: bad data or reference.
    """
    import mlx.core as mx

    start = time.perf_counter()
    task = job.task
    scored = ThroughCache(job.model, task) if uses_cache(task) else job.model  # its KV settings first
    batch_size = task["batch_size"]
    dtype = task["cache_dtype"]
    tokenizer = load_tokenizer(job.model_dir, job.model_config, trust_remote_code=job.trust_remote_code)
    tokens, path = eval_data(task, tokenizer, job.model_dir)
    ref = resolve_reference(task.get("reference"), job.model_dir, job.load)
    if ref.hub:
        job.hub["task.reference"] = ref.hub
    world = ranks.world()
    if not world.leads:
        return follow_reference(job.model, ref, tokens, batch_size, job.load.get("shard"))
    require_same_weights(ref)
    settings = {k: task.get(k) for k in ("sequence_length", "num_samples", "batch_size")}
    settings["cache_dtype"] = dtype
    if world.distributed:  # sums across ranks round differently from one process
        settings["ranks"] = world.size
        settings["shard"] = job.load.get("shard")
    data_sha = file_sha256(path)
    tokens_sha = "sha256:" + hashlib.sha256(np.array(tokens).tobytes()).hexdigest()
    key = cache_key(ref, tokens_sha, data_sha, settings)
    use_cache = task["cache"]
    if use_cache:
        cache_dir = Path(task.get("cache_dir") or default_cache_dir()).expanduser().absolute()
        target = cache_dir / key[:32]
        here = is_cached(target)
    else:
        target, here = process_scratch(key)
    cached = ranks.rank0_decides(here)
    if not cached:
        if target.exists():  # damaged (files removed by hand): compute it again
            shutil.rmtree(target)
        reference = build_reference(ref, job.load.get("shard"))
        meta = {"key": key, "reference": ref.describe(), "data": str(path), "data_sha256": data_sha,
                "tokens_sha256": tokens_sha, "settings": settings, "shape": list(tokens.shape)}
        write_reference(reference, tokens, batch_size, dtype, target, meta)
        del reference
        mx.clear_cache()
    out = summarize(compare(scored, tokens, batch_size, target))
    report = job.run_dir / REPORT
    text = report_text(out)
    write_bytes_atomic(report, text.encode())
    out.update(
        reference=ref.describe(), reference_cached=cached,
        cache_path=str(target) if use_cache else None, samples=tokens.shape[0],
        sequence_length=tokens.shape[1], data=str(path), data_sha256=data_sha,
        report=str(report), seconds=time.perf_counter() - start, peak_memory_gb=peak_memory_gb(),
    )
    log.info(
        "kl: mean %.6f, p99 %.6f, top-1 agreement %.4f, PPL ratio %.4f on %d tokens "
        "(reference %s%s)\n%s", out["kl_mean"], out["kl_p99"], out["top1_agreement"],
        out["perplexity_ratio"], out["tokens_evaluated"], ref.source,
        ", cached" if cached else "", text,
    )
    return out
