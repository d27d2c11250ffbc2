"""The study presets: +experiment=quant_study (methods x bits, Pareto front) and quant_search (Optuna)."""

import csv
import json
import random

import pytest
from conftest import run_cli

from mlxhydra.config.resolvers import data_file
from mlxhydra.sweeps.pareto import mark_front
from mlxhydra.sweeps.ranking import mark_ranks
from mlxhydra.sweeps.search_space import RULE_SETS


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def dominated(p, q, lower=True):
    """q dominates p."""
    better = (lambda a, b: a < b) if lower else (lambda a, b: a > b)
    return (q[0] <= p[0] and (q[1] == p[1] or better(q[1], p[1]))) and q != p and (
        q[0] < p[0] or better(q[1], p[1]))


@pytest.mark.parametrize("metric, lower", [("kl_mean", True), ("accuracy", False)])
def test_front_is_the_undominated_points(metric, lower):
    rng = random.Random(3)
    points = [(rng.choice([2.5, 3.5, 4.5, 8.5]), rng.random()) for _ in range(40)] + [(3.5, 0.5)] * 2
    rows = [{"status": "completed", "bits_per_weight": x, "_metrics": {metric: y}} for x, y in points]
    rows.append({"status": "failed", "bits_per_weight": 2.0, "_metrics": {}})
    assert mark_front(rows, metric)
    flags = [r["pareto"] for r in rows[:-1]]
    assert "pareto" not in rows[-1]
    for p, on in zip(points, flags):
        undominated = not any(dominated(p, q, lower) for q in points)
        # of identical undominated points, one is marked
        assert on <= undominated
        assert undominated <= any(f for q, f in zip(points, flags) if q == p)
    assert 0 < sum(flags) < len(points)
    assert not mark_front(rows, "generation_tps")  # not a quality metric


@pytest.mark.parametrize("metric, good, worse", [("kl_mean", 0.1, 0.2), ("accuracy", 0.9, 0.8)])
def test_a_tie_in_quality_at_more_bits_is_off_the_front(metric, good, worse):
    """"No other job has at most its bits per weight and a metric at least as good": the
    point with the same metric at more bits is beaten (by fewer bits), in either order;
    at the same bits, the better metric alone is on the front."""
    from mlxhydra.sweeps.pareto import pareto_front

    maximize = metric == "accuracy"
    assert pareto_front([(4.5, good), (8.5, good)], maximize) == [0]
    assert pareto_front([(8.5, good), (4.5, good)], maximize) == [1]
    assert pareto_front([(4.5, worse), (4.5, good), (8.5, good)], maximize) == [1]
    assert pareto_front([(4.5, good), (4.5, worse), (2.5, worse)], maximize) == [2, 0]
    for order in ([4.5, 8.5, 2.5], [8.5, 2.5, 4.5]):
        value = {4.5: good, 8.5: good, 2.5: worse}
        rows = [{"status": "completed", "bits_per_weight": x, "_metrics": {metric: value[x]}}
                for x in order]
        assert mark_front(rows, metric)
        assert {r["bits_per_weight"]: r["pareto"] for r in rows} == {4.5: True, 8.5: False, 2.5: True}


@pytest.mark.parametrize("metric, values, ranks", [
    ("final_val_loss", [0.5, 0.25, 0.5, 0.75], [2, 1, 2, 4]),  # lower is better; a tie shares
    ("accuracy", [0.5, 0.25, 0.5, 0.75], [2, 4, 2, 1]),  # higher is better
])
def test_completed_jobs_are_ranked_by_the_metric(metric, values, ranks):
    rows = [{"status": "completed", "_metrics": {metric: v}} for v in values]
    rows += [{"status": "failed", "_metrics": {metric: 0.0}},  # a failed job is not ranked
             {"status": "completed", "_metrics": {metric: float("nan")}},
             {"status": "completed", "_metrics": {}}]
    assert mark_ranks(rows, metric)
    assert [r.get("rank") for r in rows] == ranks + [None, None, None]


def test_nothing_is_ranked_by_size_or_with_one_job():
    assert not mark_ranks([{"status": "completed", "bits_per_weight": b, "_metrics": {}}
                           for b in (4.5, 8.5)], "bits_per_weight")
    one = [{"status": "completed", "_metrics": {"kl_mean": 0.1}},
           {"status": "failed", "_metrics": {"kl_mean": 0.2}}]
    assert not mark_ranks(one, "kl_mean") and all("rank" not in r for r in one)


@pytest.mark.slow
def test_quant_study_sweeps_methods_and_marks_the_front(tmp_path):
    r = run_cli("+experiment=quant_study", "quant.method=rtn,gptq", "quant.bits=2,8",
                "quant.calibration.num_samples=8", "task.num_samples=2", cwd=tmp_path, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    sweep = next((tmp_path / "outputs" / "multirun").glob("*/*"))
    rows = read_csv(sweep / "summary.csv")
    assert [(x["quant.method"], x["quant.bits"]) for x in rows] == [
        ("rtn", "2"), ("rtn", "8"), ("gptq", "2"), ("gptq", "8")]
    assert all(x["status"] == "completed" for x in rows)
    points = [(float(x["bits_per_weight"]), float(x["kl_mean"])) for x in rows]
    assert [x["pareto"] == "True" for x in rows] == [
        not any(dominated(p, q) for q in points) for p in points]
    kl = {(x["quant.method"], x["quant.bits"]): float(x["kl_mean"]) for x in rows}
    assert kl["rtn", "2"] > kl["rtn", "8"] and kl["gptq", "2"] > kl["gptq", "8"]
    md = (sweep / "summary.md").read_text()
    assert "| pareto | rank |" in md and " ± " in md and "kl_mean_stderr" not in md
    assert [int(x["rank"]) for x in rows] == [1 + sum(k < p[1] for _, k in points) for p in points]
    assert (sweep / "summary.png").stat().st_size > 0
    job = json.loads(next(sweep.glob("2_*/run.json")).read_text())
    assert job["quantization"]["calibration"]["data"] == data_file("tiny_calibration.txt")
    assert (next(sweep.glob("2_*")) / "kl_report.txt").is_file()


@pytest.mark.slow
def test_quant_search_draws_rules_for_round_to_nearest_only(tmp_path):
    r = run_cli("+experiment=quant_search", "hydra.sweeper.n_trials=4",
                "hydra.sweeper.sampler.n_startup_trials=4", "quant.method=choice(rtn,gptq)",
                "quant.bits=choice(2,4)", "quant.calibration.num_samples=8", "task.num_samples=2",
                "sweep.max_bits_per_weight=5.2", cwd=tmp_path, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    sweep = next((tmp_path / "outputs" / "multirun").glob("*/*"))
    rows = read_csv(sweep / "summary.csv")
    assert len(rows) == 4 and {x["quant.method"] for x in rows} <= {"rtn", "gptq"}
    for x in rows:
        if x["quant.method"] == "rtn":
            assert x["quant.rules"] in RULE_SETS
        else:
            assert x["quant.rules"] == ""
        over = float(x["bits_per_weight"]) > 5.2
        assert float(x["objective"]) == (1e9 if over else pytest.approx(float(x["kl_mean"])))
    best = (sweep / "optimization_results.yaml").read_text()
    assert "best_params" in best and "quant.method" in best
