"""The experiment tasks (task=generate, perplexity, kl, accuracy, bench, save).

Two models: an mlx-lm-built random llama with the embedded model's character
tokenizer copied in, and the embedded ``tiny`` model itself (when it ships a
tokenizer). Python-level tests compose the config and call the task as run.py
does; the ``slow`` tests run the real command line.
"""

import json
import random
import shutil
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from conftest import EMBEDDED_TINY, make_model, read_run, run_cli, run_dirs

from mlxhydra.compose import compose, to_plain
from mlxhydra.errors import TaskError
from mlxhydra.loading import apply_mlx_lm_adjustments, build_model, load_model
from mlxhydra.quant import parse_quant
from mlxhydra.run import seed_everything
from mlxhydra.tasks import run_task
from mlxhydra.tasks.save import save_task

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
HAS_EMBEDDED_TOKENIZER = (EMBEDDED_TINY / "tokenizer.json").is_file()


def _write_tokenizer(directory: Path) -> None:
    if HAS_EMBEDDED_TOKENIZER:
        for name in TOKENIZER_FILES:
            if (EMBEDDED_TINY / name).is_file():
                shutil.copy(EMBEDDED_TINY / name, directory / name)
    else:
        import tiny_data  # scripts/, on sys.path through conftest

        tiny_data.save_tokenizer(directory)


@pytest.fixture(scope="session")
def tok_model(tmp_path_factory) -> Path:
    """A random mlx-lm llama (vocab 128) with the character tokenizer and data files."""
    d = make_model(tmp_path_factory.mktemp("tok") / "m", vocab_size=128,
                   bos_token_id=1, eos_token_id=2)
    _write_tokenizer(d)
    r = random.Random(0)
    lines = [f"{r.randint(1, 999)}+{r.randint(1, 999)}={r.randint(2, 1998)}" for _ in range(120)]
    (d / "eval.txt").write_text("\n".join(lines) + "\n")
    (d / "accuracy.jsonl").write_text("".join(
        json.dumps({"prompt": ln.split("=")[0] + "=", "answer": "7"}) + "\n" for ln in lines[:6]))
    return d


MODELS = ["tok_model", pytest.param("embedded", marks=pytest.mark.skipif(
    not HAS_EMBEDDED_TOKENIZER, reason="the embedded tiny model has no tokenizer yet"))]


@pytest.fixture(params=MODELS)
def model_dir(request) -> Path:
    return request.getfixturevalue("tok_model") if request.param == "tok_model" else EMBEDDED_TINY


def task(model_dir: Path, run_dir: Path, *overrides: str, model=None):
    """Compose, load and run a task as run.py does; returns (metrics, model)."""
    cfg = compose([f"model={model_dir}", *overrides])
    seed_everything(int(cfg.seed))
    if model is None:
        config = to_plain(cfg.model)
        apply_mlx_lm_adjustments(Path(cfg.model_dir), config)
        model, config, _ = build_model(cfg.model_dir, config, quant=parse_quant(to_plain(cfg.quant)))
    else:
        model, config = model
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_task(cfg, model, config, Path(cfg.model_dir), run_dir), (model, config)


def logits(model, tokens=(1, 5, 20, 21, 22, 11, 20, 30)):
    return np.array(model(mx.array([list(tokens)])).astype(mx.float32))


# ---------------------------------------------------------------------------- kl

def test_kl_against_itself_is_zero_then_cached(model_dir, tmp_path):
    cache = f"task.cache_dir={tmp_path / 'cache'}"
    first, _ = task(model_dir, tmp_path / "a", "task=kl", cache, "task.num_samples=4")
    assert first["kl_mean"] == 0.0 and first["kl_max"] == 0.0 and first["kl_p99"] == 0.0
    assert first["top1_agreement"] == 1.0
    assert first["perplexity_ratio"] == 1.0
    assert first["reference_cached"] is False
    assert first["tokens_evaluated"] == 4 * 127
    second, _ = task(model_dir, tmp_path / "b", "task=kl", cache, "task.num_samples=4")
    assert second["reference_cached"] is True
    assert second["kl_mean"] == 0.0 and second["top1_agreement"] == 1.0
    assert second["cache_path"] == first["cache_path"]


def test_kl_grows_as_bits_shrink(model_dir, tmp_path):
    common = ("task=kl", f"task.cache_dir={tmp_path / 'cache'}", "task.num_samples=4",
              "quant.group_size=32")
    kl8, _ = task(model_dir, tmp_path / "8", *common, "quant.bits=8")
    kl2, _ = task(model_dir, tmp_path / "2", *common, "quant.bits=2")
    assert kl8["reference_cached"] is False and kl2["reference_cached"] is True
    assert 0 < kl8["kl_mean"] < kl2["kl_mean"]
    assert kl8["kl_p99"] < kl2["kl_p99"]
    assert kl8["top1_agreement"] > kl2["top1_agreement"]
    assert kl8["reference_perplexity"] == kl2["reference_perplexity"]


def test_kl_reference_is_the_raw_model_and_other_settings_change_the_key(tok_model, tmp_path):
    cache = f"task.cache_dir={tmp_path / 'cache'}"
    patched, _ = task(tok_model, tmp_path / "p", "task=kl", cache, "task.num_samples=2",
                      "model.rope_theta=50.0")
    assert patched["kl_mean"] > 0  # the patched model against the raw one
    raw, _ = task(tok_model, tmp_path / "q", "task=perplexity", "task.num_samples=2")
    ppl, _ = task(tok_model, tmp_path / "r", "task=perplexity", "task.num_samples=2",
                  "model.rope_theta=50.0")
    assert patched["reference_perplexity"] == pytest.approx(raw["perplexity"], rel=1e-5)
    assert patched["perplexity"] == pytest.approx(ppl["perplexity"], rel=1e-5)
    assert patched["perplexity_ratio"] == pytest.approx(ppl["perplexity"] / raw["perplexity"],
                                                        rel=1e-5)
    other, _ = task(tok_model, tmp_path / "o", "task=kl", cache, "task.num_samples=3")
    assert other["reference_cached"] is False
    assert other["cache_path"] != patched["cache_path"]


def test_kl_bad_reference_is_a_clear_error(tok_model, tmp_path):
    with pytest.raises(TaskError, match="task.reference=.*nowhere.*does not exist"):
        task(tok_model, tmp_path, "task=kl", f"task.reference={tmp_path / 'nowhere'}")


# ---------------------------------------------------------------------------- perplexity

def test_perplexity_is_identical_across_runs(model_dir, tmp_path):
    a, m = task(model_dir, tmp_path / "a", "task=perplexity", "task.num_samples=6",
                "task.batch_size=4")
    b, _ = task(model_dir, tmp_path / "b", "task=perplexity", "task.num_samples=6",
                "task.batch_size=4")
    assert a["perplexity"] == b["perplexity"] and a["perplexity_stderr"] == b["perplexity_stderr"]
    assert a["tokens_evaluated"] == 6 * 127 and a["samples"] == 6
    assert 1 < a["perplexity"] and 0 < a["perplexity_stderr"] < a["perplexity"]
    assert a["tokens_per_second"] > 0 and a["peak_memory_gb"] > 0


def test_perplexity_reads_json_lines(tok_model, tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"text": f"{i}+{i}={2 * i}"}) + "\n" for i in range(200)))
    out, _ = task(tok_model, tmp_path / "r", "task=perplexity", f"task.data={data}",
                  "task.sequence_length=32")
    assert out["data"] == str(data) and out["sequence_length"] == 32 and out["samples"] > 10
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "1+1=2"}\n{"txt": "x"}\n')
    with pytest.raises(TaskError, match=r"bad.jsonl line 2: missing field\(s\) text"):
        task(tok_model, tmp_path / "s", "task=perplexity", f"task.data={bad}")


@pytest.mark.parametrize("override, message", [
    ("task.batch_size=0", "task.batch_size=0: expected a positive integer"),
    ("task.sequence_length=1", "task.sequence_length=1: expected at least 2"),
    ("task.sequence_length=100000", "fewer than task.sequence_length=100000"),
    ("task.num_samples=-2", "task.num_samples=-2: expected a positive integer or -1"),
])
def test_bad_settings_are_named(tok_model, tmp_path, override, message):
    with pytest.raises(TaskError, match=message):
        task(tok_model, tmp_path, "task=perplexity", override)


@pytest.mark.parametrize("name", ["perplexity", "kl", "accuracy"])
def test_empty_data_file_is_named(tok_model, tmp_path, name):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(TaskError, match=f"task.data: {empty} is empty"):
        task(tok_model, tmp_path, f"task={name}", f"task.data={empty}")


def test_tasks_need_a_tokenizer(llama_dir, tmp_path):
    with pytest.raises(TaskError, match=f"{llama_dir}: no tokenizer"):
        task(llama_dir, tmp_path, "task=perplexity")


# ---------------------------------------------------------------------------- generate

def test_same_seed_same_text(model_dir, tmp_path):
    args = ("task=generate", "task.prompt='5'", "task.temperature=1.5", "task.max_tokens=24")
    a, m = task(model_dir, tmp_path / "a", *args)
    b, _ = task(model_dir, tmp_path / "b", *args, model=m)  # same model, random state moved on
    c, _ = task(model_dir, tmp_path / "c", *args, "seed=1", model=m)
    assert a["text"] == b["text"]
    assert a["text"] != c["text"]
    assert a["prompt_tokens"] > 0 and a["generation_tokens"] > 0
    assert a["generation_tps"] > 0 and a["peak_memory_gb"] > 0


def test_generate_chat_messages(tok_model, tmp_path):
    out, _ = task(tok_model, tmp_path, "task=generate", "task.max_tokens=4",
                  "task.messages=[{role: user, content: '12+7='}]")
    plain, _ = task(tok_model, tmp_path, "task=generate", "task.max_tokens=4",
                    "task.prompt='12+7='", "task.chat=false")
    # The tiny chat template is "<s>" + content: the same tokens as the plain prompt.
    assert out["prompt_tokens"] == plain["prompt_tokens"] == 6
    assert out["text"] == plain["text"]


# ---------------------------------------------------------------------------- accuracy, bench

def test_accuracy_counts_exact_matches(model_dir, tmp_path):
    first, m = task(model_dir, tmp_path / "a", "task=accuracy", "task.num_samples=5")
    assert first["total"] == 5 and 0 <= first["correct"] <= 5
    predictions = [json.loads(x) for x in Path(first["predictions"]).read_text().splitlines()]
    assert len(predictions) == 5 and all("\n" not in p["prediction"] for p in predictions)
    # Answers equal to the greedy predictions: every one is right.
    data = tmp_path / "own.jsonl"
    data.write_text("".join(json.dumps({"prompt": p["prompt"], "answer": f" {p['prediction']} "})
                            + "\n" for p in predictions))
    again, _ = task(model_dir, tmp_path / "b", "task=accuracy", f"task.data={data}", model=m)
    assert (again["accuracy"], again["correct"], again["total"]) == (1.0, 5, 5)


def test_bench_reports_mlx_lm_statistics(tok_model, tmp_path):
    out, _ = task(tok_model, tmp_path, "task=bench", "task.prompt_tokens=32",
                  "task.generation_tokens=8", "task.trials=2")
    assert len(out["trials"]) == 2 and all(t["generation_tokens"] == 8 for t in out["trials"])
    assert out["prompt_tps"] > 0 and out["generation_tps"] > 0 and out["peak_memory_gb"] > 0


# ---------------------------------------------------------------------------- save

@pytest.mark.parametrize("quant", ["quant=none", "quant=4bit", "quant=mixed_3_6"])
def test_save_then_load_gives_identical_logits(tok_model, tmp_path, quant):
    from mlx_lm import load as mlx_lm_load

    target = tmp_path / "saved"
    out, (model, config) = task(tok_model, tmp_path / "run", "task=save", quant,
                                f"task.path={target}", "model.rope_theta=20000.0")
    assert out["path"] == str(target)
    saved = json.loads((target / "config.json").read_text())
    assert saved["rope_theta"] == 20000.0
    assert saved.get("quantization") == config.get("quantization")
    assert (quant == "quant=none") == ("quantization" not in saved)
    for name in TOKENIZER_FILES + ("eval.txt", "accuracy.jsonl"):
        assert (target / name).read_bytes() == (tok_model / name).read_bytes()
    expected = logits(model)
    theirs, _ = mlx_lm_load(str(target))
    ours, _ = load_model(target)
    assert np.array_equal(logits(theirs), expected)
    assert np.array_equal(logits(ours), expected)
    with pytest.raises(TaskError, match="already exists; refusing to overwrite"):
        task(tok_model, tmp_path / "run2", "task=save", f"task.path={target}")
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_save_leaves_nothing_behind_on_error(tok_model, tmp_path):
    cfg = compose([f"model={tok_model}", "task=save", f"task.path={tmp_path / 'out' / 'm'}"])
    model, config = load_model(tok_model)
    config["not_json"] = object()  # save_config cannot write it
    with pytest.raises(TypeError):
        save_task(cfg, model, config, tok_model, tmp_path)
    assert list((tmp_path / "out").iterdir()) == []


# ---------------------------------------------------------------------------- command line

@pytest.mark.slow
def test_cli_missing_data_file_fails_cleanly(tok_model, tmp_path):
    result = run_cli(f"model={tok_model}", "task=perplexity", "task.data=missing.txt", cwd=tmp_path)
    assert result.returncode == 1
    missing = tmp_path / "missing.txt"
    assert f"task.data=missing.txt: {missing} does not exist" in result.stderr
    assert "Traceback" not in result.stderr
    [run_dir] = run_dirs(tmp_path)
    record = read_run(run_dir)
    assert record["status"] == "failed" and str(missing) in record["error"]
    assert record["error_type"] == "TaskError"


@pytest.mark.slow
def test_cli_kl_sweep_computes_the_reference_once(tok_model, tmp_path):
    result = run_cli("-m", f"model={tok_model}", "task=kl", "task.num_samples=2",
                     "quant=none,8bit,4bit", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    runs = [read_run(d) for d in run_dirs(tmp_path)]
    runs.sort(key=lambda r: r["job_num"])
    assert [r["metrics"]["reference_cached"] for r in runs] == [False, True, True]
    assert [r["status"] for r in runs] == ["completed"] * 3
    kl = [r["metrics"]["kl_mean"] for r in runs]
    assert kl[0] == 0.0 < kl[1] < kl[2]
    assert (tmp_path / "outputs" / ".cache" / "kl").is_dir()


@pytest.mark.slow
def test_cli_save_then_reference_and_model_option(tok_model, tmp_path):
    saved = tmp_path / "q4"
    result = run_cli(f"model={tok_model}", "quant=4bit", "task=save", f"task.path={saved}",
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    [save_run] = run_dirs(tmp_path)
    assert read_run(save_run)["metrics"]["path"] == str(saved)
    # The saved directory is a model option; KL against the run that saved it is zero.
    result = run_cli(f"model={saved}", "task=kl", f"task.reference={save_run}",
                     "task.num_samples=2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    record = read_run(run_dirs(tmp_path)[-1])
    assert record["metrics"]["kl_mean"] == 0.0 and record["metrics"]["top1_agreement"] == 1.0
    assert record["metrics"]["reference"]["kind"] == "run"
    again = run_cli(f"model={tok_model}", "task=save", f"task.path={saved}", cwd=tmp_path)
    assert again.returncode == 1 and "refusing to overwrite" in again.stderr
