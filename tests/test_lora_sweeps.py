"""task=lora swept: a grid ranked by final validation loss, and the Optuna preset
(+experiment=lora_search) minimising it, on the embedded model and its fine-tuning set."""

import csv

import pytest
from conftest import run_cli

from mlxhydra.config.resolvers import data_file

pytestmark = pytest.mark.slow

# A few steps on the embedded model: enough for losses that differ between settings.
QUICK = ["task.iters=3", "task.batch_size=2", "task.steps_per_report=1", "task.steps_per_eval=3",
         "task.val_batches=1", "task.save_every=100"]


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def ranks_of(losses):
    return [1 + sum(other < loss for other in losses) for loss in losses]


def test_a_grid_over_learning_rate_and_rank_is_ranked_by_validation_loss(tmp_path):
    r = run_cli("-m", "task=lora", f"task.data={data_file('tiny_finetune')}", "task.num_layers=2",
                "task.learning_rate=1e-4,1e-2", "task.lora_parameters.rank=2,4", *QUICK,
                cwd=tmp_path, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    sweep = next((tmp_path / "outputs" / "multirun").glob("*/*"))
    rows = read_csv(sweep / "summary.csv")
    assert [(x["task.learning_rate"], x["task.lora_parameters.rank"]) for x in rows] == [
        ("0.0001", "2"), ("0.0001", "4"), ("0.01", "2"), ("0.01", "4")]
    losses = [float(x["final_val_loss"]) for x in rows]
    assert len(set(losses)) == 4  # the settings change the result
    assert [int(x["rank"]) for x in rows] == ranks_of(losses)
    md = (sweep / "summary.md").read_text()
    assert "| rank |" in md and "final_val_loss" in md and "final_train_loss" in md


def test_the_search_preset_minimises_validation_loss(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    r = run_cli("+experiment=lora_search", f"task.data={data_file('tiny_finetune')}",
                "hydra.sweeper.n_trials=3", "hydra.sweeper.sampler.n_startup_trials=3",
                # the embedded model has 2 layers: 4 is refused before loading and scores the penalty
                "task.num_layers=choice(2,4)", *QUICK, cwd=tmp_path, timeout=600)
    sweep = next((tmp_path / "outputs" / "multirun").glob("*/*"))
    rows = read_csv(sweep / "summary.csv")
    assert len(rows) == 3, r.stderr[-3000:]
    assert r.returncode == (0 if all(x["status"] == "completed" for x in rows) else 1)
    for x in rows:
        assert x["task.num_layers"] in ("2", "4")
        assert x["task.lora_parameters.rank"] in ("4", "8", "16")
        assert 1e-5 <= float(x["task.learning_rate"]) <= 1e-3
        if x["task.num_layers"] == "2":
            assert x["status"] == "completed" and float(x["objective"]) == float(x["final_val_loss"])
        else:
            assert x["status"] == "failed" and float(x["objective"]) == 1e9
            assert "task.num_layers=4: the model has 2 layers" in x["error"]
