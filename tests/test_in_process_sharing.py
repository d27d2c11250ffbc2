"""What one process shares between jobs — the tokenizer, a KL reference computed without the
disk cache, each sweep job's composition — and that sharing changes no result.

Each cache is checked both ways: the same inputs hit, and another directory, file or setting
misses (and gives that input's own result)."""

import json
import os
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import run_cli, sweep_job_dirs

import mlxhydra
from mlxhydra.config.model_source import embedded_models_dir
from mlxhydra.load import tokenizer as tokenizers
from mlxhydra.tasks import kl

TINY = embedded_models_dir() / "tiny"


def swap_one_and_two(model_dir: Path) -> None:
    """Rewrite tokenizer.json in place with the ids of "1" and "2" swapped (same size and inode)."""
    path = model_dir / "tokenizer.json"
    data = json.loads(path.read_text())
    vocab = data["model"]["vocab"]
    vocab["1"], vocab["2"] = vocab["2"], vocab["1"]
    before = path.stat()
    with open(path, "r+") as f:
        f.write(json.dumps(data))
        f.truncate()
    # A rewrite within the file system's timestamp granularity would keep the mtime: make it newer.
    os.utime(path, ns=(before.st_atime_ns, max(path.stat().st_mtime_ns, before.st_mtime_ns + 1000)))


@pytest.fixture
def loads(monkeypatch):
    """The model directories mlx-lm's tokenizer loader was called for, in order; no tokenizer
    kept before or after the test."""
    import mlx_lm.utils

    calls = []
    original = mlx_lm.utils.load_tokenizer
    monkeypatch.setattr(mlx_lm.utils, "load_tokenizer",
                        lambda path, *a, **k: calls.append(Path(path).name) or original(path, *a, **k))
    tokenizers.forget_tokenizers()
    yield calls
    tokenizers.forget_tokenizers()


def test_a_tokenizer_is_loaded_once_and_each_caller_has_its_own_state(tmp_path, loads):
    model_dir = shutil.copytree(TINY, tmp_path / "a")
    first = tokenizers.load_tokenizer(model_dir)
    first.add_eos_token("=")
    first.detokenizer.add_token(first.encode("7")[-1])
    second = tokenizers.load_tokenizer(model_dir)
    assert loads == ["a"]
    assert second._tokenizer is first._tokenizer  # the vocabulary is shared
    assert second.eos_token_ids == {2} and first.eos_token_ids == {2, 34}
    assert second.detokenizer.text == "" and second.detokenizer.tokens == []
    assert second.encode("12+3=") == first.encode("12+3=") == [1, 22, 23, 16, 24, 34]


def test_the_tokenizer_kept_is_the_one_of_these_files_and_settings(tmp_path, loads):
    a = shutil.copytree(TINY, tmp_path / "a")
    b = shutil.copytree(TINY, tmp_path / "b")
    swap_one_and_two(b)
    assert tokenizers.load_tokenizer(a).encode("12") == [1, 22, 23]
    assert tokenizers.load_tokenizer(b).encode("12") == [1, 23, 22]  # another directory: its own
    assert loads == ["a", "b"]
    swap_one_and_two(a)  # a file changed in place
    assert tokenizers.load_tokenizer(a).encode("12") == [1, 23, 22]
    assert loads == ["a", "b", "a"]
    # Other settings: another end-of-sequence id from the model config, a chat template.
    assert tokenizers.load_tokenizer(a, {"eos_token_id": 4}).eos_token_ids == {2, 4}
    template = "{% for m in messages %}[{{ m['content'] }}]{% endfor %}"
    chat = tokenizers.load_tokenizer(a, chat_template=template)
    assert chat.apply_chat_template([{"role": "user", "content": "1"}], tokenize=False) == "[1]"
    assert loads == ["a", "b", "a", "a", "a"]
    assert tokenizers.load_tokenizer(a).eos_token_ids == {2}  # and the plain one is still kept
    assert len(loads) == 5


KL_TIMES = ("seconds", "peak_memory_gb", "tokens_per_second")
KL_PLACES = ("report", "cache_path", "reference_cached")  # where files went, whether computed here


def kl_results(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k not in KL_TIMES + KL_PLACES}


def test_kl_without_the_disk_cache_computes_the_reference_once_per_process(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    built = []
    original = kl.build_reference
    monkeypatch.setattr(kl, "build_reference", lambda *a, **k: built.append(1) or original(*a, **k))
    kl.forget_scratch()
    run = lambda *overrides: mlxhydra.run("task=kl", "task.cache=false", *overrides)  # noqa: E731
    try:
        four, two = run("quant.bits=4"), run("quant.bits=2")
        assert [r["metrics"]["reference_cached"] for r in (four, two)] == [False, True]
        assert len(built) == 1
        kept = list(kl._scratch.values())[0].name
        other = run("quant.bits=2", "task.sequence_length=64")  # another key: computed, the old one deleted
        assert other["metrics"]["reference_cached"] is False and len(built) == 2
        assert not Path(kept).exists()
        kl.forget_scratch()
        fresh = run("quant.bits=2")  # the same job with nothing kept: the same results
        assert fresh["metrics"]["reference_cached"] is False and len(built) == 3
        assert kl_results(fresh["metrics"]) == kl_results(two["metrics"])
        assert kl_results(other["metrics"]) != kl_results(two["metrics"])
    finally:
        kl.forget_scratch()
    assert not (tmp_path / "outputs" / ".cache").exists()  # nothing cached on disk


COUNTING = '''
import json
from hydra._internal.config_loader_impl import ConfigLoaderImpl

from mlxhydra.cli import main

composed = []
original = ConfigLoaderImpl.load_sweep_config


def counting(self, master_config, sweep_overrides):
    composed.append(list(sweep_overrides))
    return original(self, master_config, sweep_overrides)


ConfigLoaderImpl.load_sweep_config = counting
try:
    main()
finally:
    with open("composed.json", "w") as f:
        json.dump(composed, f)
'''


@pytest.mark.slow
def test_a_sweep_composes_each_job_once(tmp_path):
    """Hydra's launcher composes each job again after the sweeper's check; the check's config serves."""
    (tmp_path / "count_compositions.py").write_text(COUNTING)
    proc = run_cli("-m", "seed=1,2,3", "quant.bits=4,8", cwd=tmp_path, module="count_compositions")
    assert proc.returncode == 0, proc.stderr
    composed = json.loads((tmp_path / "composed.json").read_text())
    assert sorted(map(tuple, composed)) == sorted((f"seed={s}", f"quant.bits={b}")
                                                  for s in (1, 2, 3) for b in (4, 8))
    jobs = sweep_job_dirs(next((tmp_path / "outputs" / "multirun").glob("*/*")))
    seeds = [yaml.safe_load((j / ".hydra" / "config.yaml").read_text())["seed"] for j in jobs]
    assert seeds == [1, 1, 2, 2, 3, 3]


@pytest.mark.slow
def test_the_jobs_of_a_sweep_equal_separate_runs(tmp_path):
    """A KL sweep over bit widths (one process: one composition per job, one tokenizer, one
    reference) gives each job the config and metrics of the same job run alone."""
    sweep_cwd, alone_cwd = tmp_path / "sweep", tmp_path / "alone"
    sweep_cwd.mkdir(), alone_cwd.mkdir()
    proc = run_cli("-m", "task=kl", "quant.bits=2,4,8", cwd=sweep_cwd)
    assert proc.returncode == 0, proc.stderr
    jobs = sweep_job_dirs(next((sweep_cwd / "outputs" / "multirun").glob("*/*")))
    assert [json.loads((j / "run.json").read_text())["metrics"]["reference_cached"] for j in jobs] == [
        False, True, True]
    for job, bits in zip(jobs, (2, 4, 8)):
        proc = run_cli("task=kl", f"quant.bits={bits}", f"hydra.run.dir=alone_{bits}", cwd=alone_cwd)
        assert proc.returncode == 0, proc.stderr
        alone = alone_cwd / f"alone_{bits}"
        assert (job / ".hydra" / "config.yaml").read_text() == (alone / ".hydra" / "config.yaml").read_text()
        ours, theirs = (json.loads((d / "metrics.json").read_text()) for d in (job, alone))
        assert kl_results(ours) == kl_results(theirs)
        assert ours["kl_mean"] > 0


def test_the_summary_imports_are_warmed_only_where_the_summary_is_written(monkeypatch):
    """The process that started the multirun imports matplotlib while the jobs run (once);
    a launcher's worker process (nothing in policy._active) does not."""
    from mlxhydra.sweeps import plots, policy

    monkeypatch.setattr(plots, "_warming", [])
    monkeypatch.setattr(policy, "_active", {})
    summary = policy.SweepSummary()
    summary.on_job_start(config=None)
    assert plots._warming == []
    policy._active["sweep_dir"] = Path("sweep")
    policy.SweepSummary(enabled=False).on_job_start(config=None)
    assert plots._warming == []
    summary.on_job_start(config=None)
    summary.on_job_start(config=None)
    assert len(plots._warming) == 1 and plots._warming[0].name == "mlxhydra-summary-imports"
    plots._warming[0].join(timeout=120)
    import sys

    assert "matplotlib.figure" in sys.modules and "matplotlib.backends.backend_agg" in sys.modules
