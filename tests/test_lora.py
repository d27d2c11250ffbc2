"""task=lora against mlx_lm.lora: the same losses and adapters; outputs mlx-lm loads; bad input
refused before any weight is read, leaving no adapters behind."""

import json
import random
import shutil
import types
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
import yaml

import mlxhydra
from conftest import EMBEDDED_TINY, make_model
from mlxhydra.errors import ConfigError
from mlxhydra.tasks.lora_settings import resolve
from mlxhydra.tracking.tracked_job import read_tracked_job

pytestmark = pytest.mark.xdist_group("lora")

# A few iterations, every one reported, two evaluations: the whole curve is compared.
SMALL = {"iters": 4, "batch_size": 2, "num_layers": 2, "learning_rate": 1e-3,
         "steps_per_report": 1, "steps_per_eval": 2, "val_batches": 2}


def with_tokenizer(directory: Path) -> Path:
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(EMBEDDED_TINY / name, directory / name)
    return directory


def write_split(path: Path, rows) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A float and a 4-bit llama with the embedded model's tokenizer, and sums to learn."""
    root = tmp_path_factory.mktemp("lora")
    r = random.Random(0)
    data = root / "data"
    data.mkdir()
    for split, n in (("train", 12), ("valid", 6), ("test", 4)):
        rows = []
        for _ in range(n):
            a, b = r.randint(10, 99), r.randint(10, 99)
            rows.append({"prompt": f"{a}+{b}=", "completion": str(a + b)})
        write_split(data / f"{split}.jsonl", rows)
    return {
        "float": with_tokenizer(make_model(root / "float", vocab_size=128)),
        "4bit": with_tokenizer(make_model(root / "q4", vocab_size=128, quantize=4, group_size=32)),
        "data": data,
    }


def overrides(settings):
    return [f"task.{k}={v}" for k, v in settings.items()]


def run_ours(model_dir, data, *extra, settings=SMALL, name="ours"):
    return mlxhydra.run(f"model={model_dir}", "task=lora", f"task.data={data}",
                        f"hydra.run.dir={name}", *overrides(settings), *extra)


def run_mlx_lm(model_dir, data, out, settings):
    """mlx_lm.lora's run() as it trains (its own load, datasets, train_model), reports captured."""
    from mlx_lm import load
    from mlx_lm.lora import CONFIG_DEFAULTS, train_model
    from mlx_lm.tuner.callbacks import TrainingCallback
    from mlx_lm.tuner.datasets import load_dataset

    reports = []

    class Capture(TrainingCallback):
        def on_train_loss_report(self, info):
            reports.append(("train", info["iteration"], info["train_loss"]))

        def on_val_loss_report(self, info):
            reports.append(("val", info["iteration"], info["val_loss"]))

    args = types.SimpleNamespace(**{**CONFIG_DEFAULTS, **settings, "model": str(model_dir),
                                    "data": str(data), "adapter_path": str(out), "train": True})
    np.random.seed(args.seed)
    model, tokenizer = load(str(model_dir))
    train_set, valid_set, _ = load_dataset(args, tokenizer)
    train_model(args, model, train_set, valid_set, Capture())
    return reports


def our_reports(run_dir: Path):
    rows = [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]
    return [("val", r["iteration"], r["val_loss"]) if "val_loss" in r
            else ("train", r["iteration"], r["train_loss"]) for r in rows]


@pytest.mark.parametrize("base", ["float", "4bit"])
def test_lora_equals_mlx_lm_lora(setup, base, tmp_path, monkeypatch):
    """Same model, data, settings and seed: the same reported losses and bit-identical adapters.
    The float case reads its settings from an mlx_lm.lora YAML config, as mlx_lm.lora does."""
    monkeypatch.chdir(tmp_path)
    settings = {**SMALL, "lora_parameters": {"rank": 4, "scale": 10.0, "dropout": 0.1}}
    if base == "float":
        config = tmp_path / "lora_config.yaml"
        config.write_text(yaml.safe_dump({**settings, "model": "elsewhere", "seed": 0}))
        record = run_ours(setup[base], setup["data"], f"task.config_file={config}", settings={})
    else:
        record = run_ours(setup[base], setup["data"], "task.lora_parameters.rank=4",
                          "task.lora_parameters.scale=10.0", "task.lora_parameters.dropout=0.1")
    theirs = run_mlx_lm(setup[base], setup["data"], tmp_path / "theirs", settings)
    run_dir = Path(record["run_dir"])
    assert our_reports(run_dir) == theirs
    assert [(kind, it) for kind, it, _ in theirs] == [
        ("val", 0), ("train", 1), ("val", 1), ("train", 2), ("train", 3), ("val", 3), ("train", 4)]
    ours_w, theirs_w = mx.load(str(run_dir / "adapters.safetensors")), mx.load(str(tmp_path / "theirs" / "adapters.safetensors"))
    assert sorted(ours_w) == sorted(theirs_w) and len(ours_w) == 2 * 7 * 2  # lora_a, lora_b of 7 linears x 2 layers
    assert all(mx.array_equal(ours_w[k], theirs_w[k]) for k in ours_w)
    assert (run_dir / "adapters.safetensors").read_bytes() == (tmp_path / "theirs" / "adapters.safetensors").read_bytes()
    ours_c = json.loads((run_dir / "adapter_config.json").read_text())
    theirs_c = json.loads((tmp_path / "theirs" / "adapter_config.json").read_text())
    paths = ("adapter_path", "config")
    assert {k: v for k, v in ours_c.items() if k not in paths} == {k: v for k, v in theirs_c.items() if k not in paths}
    assert ours_c["adapter_path"] == str(run_dir)
    m = record["metrics"]
    assert m["final_train_loss"] == theirs[-1][2] and m["final_val_loss"] == [t for t in theirs if t[0] == "val"][-1][2]
    assert m["data_sha256"]["train"].startswith("sha256:") and not (run_dir / "checkpoints").exists()
    if base == "float":
        assert m["config_file"] == str(config) and sorted(m["config_file_keys"]) == sorted(settings)
        assert m["config_file_sha256"].startswith("sha256:")


def logits(model, ids=(1, 5, 9, 12, 40, 3)):
    return model(mx.array([list(ids)]))


@pytest.mark.parametrize("kind", ["dora", "full"])
def test_dora_and_full_outputs_load_in_mlx_lm_and_mlxhydra(setup, kind, tmp_path, monkeypatch):
    from mlx_lm import load

    monkeypatch.chdir(tmp_path)
    extra = ["task.fuse=true"] if kind == "dora" else []
    record = run_ours(setup["float"], setup["data"], f"task.fine_tune_type={kind}", "task.test=true",
                      *extra, settings={**SMALL, "iters": 2, "steps_per_eval": 2})
    run_dir = Path(record["run_dir"])
    theirs, _ = load(str(setup["float"]), adapter_path=str(run_dir))
    ours, _ = mlxhydra.load(str(setup["float"]), adapter_path=str(run_dir))
    base, _ = load(str(setup["float"]))
    assert mx.array_equal(logits(ours), logits(theirs))
    assert not mx.array_equal(logits(base), logits(theirs))  # training changed something
    assert json.loads((run_dir / "adapter_config.json").read_text())["fine_tune_type"] == kind
    m = record["metrics"]
    assert m["test_perplexity"] == pytest.approx(np.exp(m["test_loss"]))
    assert (run_dir / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if kind == "dora":
        fused, _ = load(m["fused_model"])
        assert mx.allclose(logits(fused), logits(theirs), atol=1e-4)
    steps = read_tracked_job(run_dir)
    assert steps.steps["train_loss"] == [json.loads(line)["train_loss"] for line in
                                         (run_dir / "train_log.jsonl").read_text().splitlines()
                                         if "train_loss" in json.loads(line)]
    assert steps.step_numbers["train_loss"] == [1, 2] and steps.step_numbers["val_loss"] == [0, 1]


def assert_refused_before_weights(excinfo, expected):
    error = excinfo.value
    assert isinstance(error, ConfigError) and error.problems == expected
    record = error.record
    assert record["status"] == "failed" and record["error_type"] == "ConfigError"
    assert "weight_files" not in record and "quantization" not in record
    assert sorted(p.name for p in error.run_dir.iterdir()) == [".hydra", "mlxhydra.log", "run.json"]


def test_bad_settings_are_each_one_line_before_any_weight(setup, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "nodata").mkdir()
    write_split(tmp_path / "nodata" / "train.jsonl", [{"text": "a"}])
    with pytest.raises(ConfigError) as e:
        run_ours(setup["float"], tmp_path / "nodata", "task.fine_tune_type=qlora",
                 "task.lora_parameters.dropout=1.0", "task.optimizer=rmsprop", "task.iters=0",
                 "task.lr_schedule={name:no_such,arguments:[1]}", settings={})
    valid = tmp_path / "nodata" / "valid.jsonl"
    assert_refused_before_weights(e, [
        "task.fine_tune_type='qlora': expected one of lora, dora, full",
        "task.iters=0: expected a positive integer",
        "task.optimizer='rmsprop': expected one of adam, adamw, muon, sgd, adafactor",
        "task.lr_schedule={'name': 'no_such', 'arguments': [1]}: mlx-lm cannot build it: "
        "module 'mlx.optimizers.schedulers' has no attribute 'no_such'",
        f"task.data={tmp_path / 'nodata'}: {valid} does not exist",
    ])


def test_bad_data_rows_are_each_one_line_naming_file_and_line(setup, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "bad"
    data.mkdir()
    train = data / "train.jsonl"
    train.write_text('{"prompt": "1+2=", "completion": "3"}\n{"prompt": "1+2=", \n\n'
                     '{"prompt": "1+2=", "completion": "' + "9" * 40 + '"}\n{"prompt": "4+4="}\n')
    (data / "valid.jsonl").write_text("")
    (data / "test.jsonl").write_text('{"question": "1+1"}\n')
    with pytest.raises(ConfigError) as e:
        run_ours(setup["float"], data, "task.test=true", "task.num_layers=3",
                 settings={"max_seq_length": 32})
    assert_refused_before_weights(e, [
        "task.num_layers=3: the model has 2 layers (expected at most that, or -1 for all)",
        f"task.data: {train} line 2: invalid JSON: Expecting property name enclosed in double quotes",
        f"task.data: {train} line 3: a blank line (mlx-lm reads each line as JSON)",
        f"task.data: {train} line 4: 45 tokens, more than task.max_seq_length=32 (mlx-lm would truncate it)",
        f"task.data: {train} line 5: has no 'completion' (the file's format is completions, from line 1)",
        f"task.data: {data / 'valid.jsonl'} is empty (expected JSON lines in mlx-lm's formats)",
        f"task.data: {data / 'test.jsonl'} line 1: unknown format: expected 'text', 'prompt' and "
        "'completion', or 'messages' (mlx-lm's text, completions and chat formats); found 'question'",
    ])


def test_config_file_keys_under_the_command_line(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("learning_rate: 1e-3\niters: 50\nlora_parameters: {rank: 4, scale: 10.0, dropout: 0.0}\n"
                      "model: somewhere\nseed: 7\n")
    task = {"name": "lora", "config_file": str(config), "iters": 3, "learning_rate": 1e-5,
            "lora_parameters": {"rank": 2, "scale": 20.0, "dropout": 0.0, "keys": None}}
    r = resolve(task, cli={("iters",), ("lora_parameters", "rank")})
    assert r.settings["iters"] == 3 and r.settings["learning_rate"] == 1e-3  # a float, as mlx-lm reads 1e-3
    assert r.settings["lora_parameters"] == {"rank": 2, "scale": 10.0, "dropout": 0.0}
    assert r.from_file == ["learning_rate", "lora_parameters"]
    assert sorted(r.not_used) == ["model", "seed"]
    config.write_text("iters: 5\nlearnin_rate: 1.0\nresume_adapter_file: a.safetensors\n")
    with pytest.raises(ConfigError) as e:
        resolve(task, cli=set())
    assert [p.split(": ")[1] for p in e.value.problems] == ["learnin_rate", "resume_adapter_file"]


def test_adapter_path_names_a_training_run_as_the_subcommands_do(setup, tmp_path, monkeypatch):
    """``load.adapter_path=latest`` (or a unique prefix of the run's name) is the run that
    trained, resolved before the new run points ``latest`` at itself; the record holds its path."""
    monkeypatch.chdir(tmp_path)
    trained = Path(run_ours(setup["float"], setup["data"], settings={**SMALL, "iters": 2},
                            name="outputs/runs/trained-lora")["run_dir"]).resolve()
    for reference in ("latest", "trained-l"):
        record = mlxhydra.run(f"model={setup['float']}", "task=load", f"load.adapter_path={reference}")
        assert record["adapter"]["path"] == str(trained)
        assert f"load.adapter_path={trained}" in record["overrides"]
    with pytest.raises(ConfigError) as e:
        mlxhydra.run(f"model={setup['float']}", "task=load", "load.adapter_path=nothing-like-it")
    assert e.value.problems[0].startswith(f"load.adapter_path=nothing-like-it: {tmp_path / 'nothing-like-it'} "
                                          "does not exist")
