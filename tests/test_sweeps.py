"""Sweeps: per-job records, the summary, failure policy, launchers, search, weights reuse.

Every sweep runs the real ``python -m mlxhydra -m ...`` in a subprocess on
the embedded tiny model (or the random llama fixture).
"""

import csv
import importlib.util
import json
import shutil
from pathlib import Path

import pytest

from conftest import EMBEDDED_TINY, make_model, read_run, run_cli
from helpers.progress_lines import progress_lines
from test_tasks import task

pytestmark = pytest.mark.slow

JOB_FILES = ("run.json", "model_config.json", ".hydra/config.yaml", ".hydra/overrides.yaml")


def sweep_dirs(cwd: Path) -> list:
    return sorted(p for p in (cwd / "outputs" / "multirun").glob("*/*") if p.is_dir())


def job_dirs(sweep: Path) -> list:
    return sorted((p for p in sweep.iterdir() if p.is_dir() and p.name[0].isdigit()),
                  key=lambda p: int(p.name.split("_")[0]))


def read_csv(path: Path) -> list:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def mlx_lm_quantized(model_dir: Path, bits: int, group_size: int):
    """(bits per weight, parameters) of mlx-lm's own quantization of a model directory."""
    from mlx_lm import utils as mu

    model, config = mu.load_model(Path(model_dir))
    model, _ = mu.quantize_model(model, config, group_size, bits)
    return mu.compute_bits_per_weight(model), mu.get_total_parameters(model)


@pytest.fixture(scope="module")
def failed_sweep(tmp_path_factory):
    """One basic-launcher sweep of 4 jobs, two of them invalid (bits=7)."""
    cwd = tmp_path_factory.mktemp("sweep")
    proc = run_cli("-m", "quant.bits=4,7", "quant.group_size=32,64", "task=load", cwd=cwd)
    (sweep,) = sweep_dirs(cwd)
    return proc, sweep


@pytest.mark.xdist_group("failed_sweep")  # on one worker: the fixture is built once
def test_every_job_runs_and_failures_do_not_stop_the_sweep(failed_sweep):
    proc, sweep = failed_sweep
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "2 of 4 jobs failed" in proc.stderr
    jobs = job_dirs(sweep)
    assert [p.name for p in jobs] == [
        "0_quant.bits=4,quant.group_size=32,task=load", "1_quant.bits=4,quant.group_size=64,task=load",
        "2_quant.bits=7,quant.group_size=32,task=load", "3_quant.bits=7,quant.group_size=64,task=load",
    ]
    for d in jobs:  # a bad quant setting fails before model_config.json is written
        for name in JOB_FILES if "bits=4" in d.name else ("run.json", ".hydra/config.yaml"):
            assert (d / name).is_file(), f"{d / name} missing"
    runs = [read_run(d) for d in jobs]
    assert [r["status"] for r in runs] == ["completed", "completed", "failed", "failed"]
    assert [r["job_num"] for r in runs] == [0, 1, 2, 3]
    assert "quant.bits=7" in runs[2]["error"]
    for r, group_size in zip(runs[:2], (32, 64)):
        bpw, parameters = mlx_lm_quantized(EMBEDDED_TINY, 4, group_size)
        assert r["quantization"]["bits_per_weight"] == pytest.approx(bpw, rel=1e-12)
        assert r["parameters"] == parameters
        assert json.loads((Path(r["run_dir"]) / "metrics.json").read_text()) == {}  # task=load
    # sweep.reuse_weights is off by default: each job reads the weight files itself
    assert [r.get("weights_cache") for r in runs[:2]] == [None, None]
    assert runs[0]["weights_fingerprint"] == runs[1]["weights_fingerprint"]


@pytest.mark.xdist_group("failed_sweep")
def test_summary_has_one_row_per_job(failed_sweep):
    _, sweep = failed_sweep
    rows = read_csv(sweep / "summary.csv")
    assert [r["job"] for r in rows] == ["0", "1", "2", "3"]
    assert [(r["quant.bits"], r["quant.group_size"]) for r in rows] == [
        ("4", "32"), ("4", "64"), ("7", "32"), ("7", "64")]
    assert [r["status"] for r in rows] == ["completed", "completed", "failed", "failed"]
    for col in ("bits_per_weight", "parameters", "peak_memory_mb", "load_s", "weights_cache", "error"):
        assert col in rows[0]
    assert float(rows[0]["bits_per_weight"]) > float(rows[1]["bits_per_weight"])  # group 32 costs more
    assert rows[2]["bits_per_weight"] == "" and "quant.bits=7" in rows[2]["error"]
    md = (sweep / "summary.md").read_text()
    assert "4 jobs: 2 completed, 2 failed" in md
    assert md.count("\n| ") == 5  # header + 4 rows
    png = (sweep / "summary.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    assert not list(sweep.glob(".summary*"))  # no temporary files left


@pytest.mark.xdist_group("failed_sweep")
def test_summarize_rebuilds_the_summary(failed_sweep, tmp_path):
    _, sweep = failed_sweep
    copy = tmp_path / "copy"
    shutil.copytree(sweep, copy)
    expected = (copy / "summary.csv").read_text()
    for name in ("summary.csv", "summary.md", "summary.png"):
        (copy / name).unlink()
    proc = run_cli("summarize", str(copy), cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr  # some jobs failed
    assert "4 jobs: 2 completed, 2 failed" in proc.stdout
    assert (copy / "summary.csv").read_text() == expected
    assert (copy / "summary.png").is_file() and (copy / "summary.md").is_file()


@pytest.mark.xdist_group("failed_sweep")
def test_summarize_a_partial_sweep(failed_sweep, tmp_path):
    """Still running (run.json says running) and not started (no directory) jobs."""
    _, sweep = failed_sweep
    part = tmp_path / "partial"
    shutil.copytree(sweep, part)
    jobs = job_dirs(part)
    run = json.loads((jobs[1] / "run.json").read_text())
    (jobs[1] / "run.json").write_text(json.dumps({**run, "status": "running", "ended": None}))
    shutil.rmtree(jobs[3])
    proc = run_cli("summarize", str(part), cwd=tmp_path)
    assert proc.returncode == 1
    rows = read_csv(part / "summary.csv")
    assert [(r["job"], r["status"]) for r in rows] == [
        ("0", "completed"), ("1", "running"), ("2", "failed"), ("3", "missing")]
    assert (rows[3]["quant.bits"], rows[3]["quant.group_size"]) == ("7", "64")  # from multirun.yaml

    bad = run_cli("summarize", str(tmp_path / "nope"), cwd=tmp_path)
    assert bad.returncode == 2 and "no such sweep directory" in bad.stderr


def test_fail_fast_stops_at_the_first_failure(tmp_path):
    proc = run_cli("-m", "quant.bits=7,4", "sweep.fail_fast=true", cwd=tmp_path)
    assert proc.returncode == 1
    assert "sweep stopped: job 0 failed" in proc.stderr
    (sweep,) = sweep_dirs(tmp_path)
    jobs = job_dirs(sweep)
    assert len(jobs) == 1 and read_run(jobs[0])["status"] == "failed"
    rows = read_csv(sweep / "summary.csv")
    assert [(r["quant.bits"], r["status"]) for r in rows] == [("7", "failed"), ("4", "missing")]


def test_single_run_failure_is_unchanged(tmp_path):
    proc = run_cli("quant.bits=7", cwd=tmp_path)
    assert proc.returncode == 1
    assert "quant.bits=7: expected one of 2, 3, 4, 5, 6, 8" in proc.stderr
    assert not (tmp_path / "outputs" / "multirun").exists()
    (run,) = (tmp_path / "outputs" / "runs").glob("*/*/run.json")
    assert json.loads(run.read_text())["status"] == "failed"


def test_joblib_launcher_two_workers(tmp_path):
    proc = run_cli("-m", "hydra/launcher=parallel", "hydra.launcher.n_jobs=2",
                   "quant.bits=2,4", "quant.group_size=32,64", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (sweep,) = sweep_dirs(tmp_path)  # every worker writes into the parent's sweep dir
    jobs = job_dirs(sweep)
    assert len(jobs) == 4
    expected = {(bits, gs): mlx_lm_quantized(EMBEDDED_TINY, bits, gs)[0]
                for bits in (2, 4) for gs in (32, 64)}
    seen = set()
    for d in jobs:
        for name in JOB_FILES + ("metrics.json",):
            assert (d / name).is_file(), f"{d / name} missing"
        run = read_run(d)
        quant = {k: v for k, v in (o.split("=") for o in run["overrides"] if o.startswith("quant."))}
        key = (int(quant["quant.bits"]), int(quant["quant.group_size"]))
        seen.add(key)
        assert run["status"] == "completed"
        assert run["quantization"]["bits_per_weight"] == pytest.approx(expected[key], rel=1e-12)
        assert run.get("weights_cache") is None  # no reuse by default
    assert seen == set(expected)
    rows = read_csv(sweep / "summary.csv")
    assert len(rows) == 4 and {r["status"] for r in rows} == {"completed"}
    # Each worker prints its job's line; k counts the jobs of every worker ended by then.
    lines = sorted(progress_lines(proc.stdout))
    assert [(ln.k, ln.n, ln.verb, ln.eta is None) for ln in lines] == [
        (1, 4, "completed in", False), (2, 4, "completed in", False),
        (3, 4, "completed in", False), (4, 4, "completed in", True)]
    assert sorted(ln.overrides for ln in lines) == sorted(
        f"quant.bits={b} quant.group_size={g}" for b in (2, 4) for g in (32, 64))


def test_optuna_search_returns_the_objective(tmp_path):
    proc = run_cli("-m", "hydra/sweeper=quant_search", "hydra.sweeper.n_trials=4",
                   "hydra.sweeper.sampler.n_startup_trials=2", "task=load",
                   "sweep.objective=bits_per_weight", "sweep.max_bits_per_weight=5", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (sweep,) = sweep_dirs(tmp_path)
    runs = [read_run(d) for d in job_dirs(sweep)]
    assert len(runs) == 4
    for r in runs:
        bpw = r["quantization"]["bits_per_weight"]
        assert r["objective"] == (bpw if bpw <= 5 else 1e9)
    import yaml

    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert best["best_value"] == min(r["objective"] for r in runs)
    rows = read_csv(sweep / "summary.csv")
    assert "objective" in rows[0] and "quant.bits" in rows[0]
    # N is the search's n_trials.
    assert [(ln.k, ln.n) for ln in progress_lines(proc.stdout)] == [(1, 4), (2, 4), (3, 4), (4, 4)]


@pytest.mark.skipif(importlib.util.find_spec("hydra_plugins.hydra_ray_launcher") is None,
                    reason="hydra-ray-launcher not installed (pip install 'mlxhydra[ray]')")
def test_ray_launcher_local(tmp_path):
    proc = run_cli("-m", "hydra/launcher=ray_local", "quant.bits=2,4", cwd=tmp_path, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (sweep,) = sweep_dirs(tmp_path)
    assert [read_run(d)["status"] for d in job_dirs(sweep)] == ["completed", "completed"]
    assert len(read_csv(sweep / "summary.csv")) == 2


def test_weights_cache_copies_and_does_not_change(llama_dir):
    """Cached float weights: shallow copies per job, identical models, never mutated."""
    import mlx.core as mx
    from mlx.utils import tree_flatten

    from mlxhydra.load import weights_cache as cache
    from mlxhydra.load.loader import build_model
    from mlxhydra.load.model_config import load_config
    from mlxhydra.load.settings import LoadSettings

    cache.clear()
    opened = []

    def opener():
        opened.append(1)
        return {"a": mx.array([1.0]), "b": mx.array([2.0])}

    w1, s1 = cache.open_weights("k", opener)
    w1.pop("a")
    w2, s2 = cache.open_weights("k", opener)
    assert (s1, s2, len(opened)) == ("miss", "hit", 1) and set(w2) == {"a", "b"}
    assert cache.open_weights(None, opener)[1] is None and len(opened) == 2
    cache.clear()

    def params(key, bits):
        model, _, report = build_model(llama_dir, load_config(llama_dir),
                                       LoadSettings.from_groups(quant={"bits": bits, "group_size": 32}), weights_key=key)
        return dict(tree_flatten(model.parameters())), report.weights_cache

    plain4, none = params(None, 4)
    assert none is None and cache.cached_keys() == []
    first, miss = params("fp", 4)
    _, hit8 = params("fp", 8)
    again, hit4 = params("fp", 4)
    assert (miss, hit8, hit4) == ("miss", "hit", "hit")
    for k, v in plain4.items():
        assert mx.array_equal(v, first[k]) and mx.array_equal(v, again[k]), k
    cache.clear()


@pytest.mark.skipif(importlib.util.find_spec("hydra_plugins.hydra_submitit_launcher") is None,
                    reason="hydra-submitit-launcher not installed (pip install 'mlxhydra[slurm]')")
def test_slurm_preset_composes(tmp_path):
    import yaml

    proc = run_cli("hydra/launcher=slurm", "hydra.launcher.partition=gpu", "--cfg", "hydra",
                   "--package", "hydra.launcher", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    launcher = yaml.safe_load(proc.stdout)  # "# @package hydra.launcher" then the node
    assert launcher["_target_"].endswith("SlurmLauncher")
    assert launcher["partition"] == "gpu" and launcher["timeout_min"] == 60


def test_weights_cache_gives_each_key_its_own_weights():
    """A second key never gets the first key's weights, and only one entry is kept."""
    import mlx.core as mx

    from mlxhydra.load import weights_cache as cache

    cache.clear()
    opened = []

    def opener(value):
        def read():
            opened.append(value)
            return {"w": mx.array([value])}
        return read

    try:
        a, status_a = cache.open_weights("fingerprint-a", opener(1.0))
        b, status_b = cache.open_weights("fingerprint-b", opener(2.0))
        assert (status_a, status_b) == ("miss", "miss") and opened == [1.0, 2.0]
        assert (a["w"].item(), b["w"].item()) == (1.0, 2.0)
        assert cache.cached_keys() == ["fingerprint-b"]  # a's entry was dropped
        b2, status = cache.open_weights("fingerprint-b", opener(9.0))
        assert (status, b2["w"].item(), opened) == ("hit", 2.0, [1.0, 2.0])
        a2, status = cache.open_weights("fingerprint-a", opener(1.0))
        assert (status, a2["w"].item(), opened) == ("miss", 1.0, [1.0, 2.0, 1.0])
    finally:
        cache.clear()


def test_sweep_over_two_model_directories_gives_each_job_its_own_weights(tmp_path):
    """-m model=./a,./b,./a,./a with sweep.reuse_weights=true (same shapes, other weights):
    each job saves the weights of its own model, exactly as a single run of that model does;
    the cache never serves a's for b, and serves a's to the a that follows an a."""
    from mlxhydra.load.weight_files import combined_fingerprint, describe_files, find_weight_files

    for name, seed in (("a", 1), ("b", 2)):
        make_model(tmp_path / name, seed=seed)
    proc = run_cli("-m", "model=./a,./b,./a,./a", "task=save", "sweep.reuse_weights=true",
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (sweep,) = sweep_dirs(tmp_path)
    jobs = [read_run(d) for d in job_dirs(sweep)]
    assert [r["status"] for r in jobs] == ["completed"] * 4
    assert [r["model_dir"] for r in jobs] == [str(tmp_path / n) for n in ("a", "b", "a", "a")]
    assert [r["weights_cache"] for r in jobs] == ["miss", "miss", "miss", "hit"]  # one model kept

    single = {}
    for name in ("a", "b"):  # a single run of each, with the job's own stages in this process
        metrics, _ = task(tmp_path / name, tmp_path / "single" / name, "task=save")
        single[name] = metrics["weights_fingerprint"]
        # mlx-lm saves what it read: the saved weights are the source's bytes.
        source = combined_fingerprint(describe_files(find_weight_files(tmp_path / name), "full"))
        assert single[name] == source
    assert single["a"] != single["b"]
    saved = [r["metrics"]["weights_fingerprint"] for r in jobs]
    assert saved == [single["a"], single["b"], single["a"], single["a"]]
