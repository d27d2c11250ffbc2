"""The experiment tasks (task=generate, perplexity, kl, accuracy, bench, save).

Two models: an mlx-lm-built random llama with the embedded model's character
tokenizer copied in, and the embedded ``tiny`` model itself (when it ships a
tokenizer). Python-level tests compose the config and run the job's own
stages (``mlxhydra.job.pipeline.prepare``, then ``mlxhydra.tasks.run_task``);
the ``slow`` tests run the real command line.
"""

import hashlib
import json
import random
import shutil
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from conftest import EMBEDDED_TINY, make_model, read_run, run_cli, run_dirs
from helpers.table_model import TableModel

from mlxhydra.config.composition import compose
from mlxhydra.errors import ConfigError, TaskError
from mlxhydra.job.pipeline import prepare, seed_everything
from mlxhydra.job.validation import validate
from mlxhydra.load.loader import load_model
from mlxhydra.tasks import TaskInput, run_task

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
    """Compose, validate, load and run a task with the job's own stages.

    ``model``: the (model, report) of an earlier call, reused instead of loading
    again (the settings are still validated and the seeds reset, as a job does).

    Returns:
        (metrics, (model, report)).
    """
    cfg = compose([f"model={model_dir}", *overrides])
    settings = validate(cfg)
    if model is None:
        model = prepare(cfg, settings)
    else:
        seed_everything(settings.seed)
    loaded, report = model
    run_dir.mkdir(parents=True, exist_ok=True)
    metrics = run_task(TaskInput(
        task=settings.task, seed=settings.seed, load=settings.load, model=loaded,
        model_config=report.model_config, model_dir=Path(settings.model_dir), run_dir=run_dir,
    ))
    return metrics, model


def logits(model, tokens=(1, 5, 20, 21, 22, 11, 20, 30)):
    return np.array(model(mx.array([list(tokens)])).astype(mx.float32))


def document_tokens(model_dir: Path, text: str) -> list:
    """One document as mlx-lm's TextDataset makes it: the tokenizer's ids, then eos."""
    from mlx_lm.utils import load_tokenizer

    tokenizer = load_tokenizer(model_dir)
    ids = tokenizer.encode(text)
    return ids if ids[-1] == tokenizer.eos_token_id else ids + [tokenizer.eos_token_id]


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def numpy_perplexity(model, rows: np.ndarray):
    """(perplexity, delta-method stderr) of token rows, computed here in float64."""
    logp = log_softmax(np.array(model(mx.array(rows[:, :-1])).astype(mx.float32)))
    nll = -np.take_along_axis(logp, rows[:, 1:, None], axis=-1)[..., 0].ravel()
    ppl = float(np.exp(nll.mean()))
    return ppl, ppl * float(nll.std(ddof=1)) / np.sqrt(nll.size)


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
    patched, (patched_model, _) = task(tok_model, tmp_path / "p", "task=kl", cache,
                                       "task.num_samples=2", "model.rope_theta=50.0")
    raw, (raw_model, _) = task(tok_model, tmp_path / "q", "task=perplexity", "task.num_samples=2")
    # KL(raw reference || patched model) per token, computed here on the same two rows.
    ids = document_tokens(tok_model, (tok_model / "eval.txt").read_text())
    rows = mx.array(np.array(ids[: 2 * 128]).reshape(2, 128)[:, :-1])
    lp_ref = log_softmax(np.array(raw_model(rows).astype(mx.float32)))
    lp = log_softmax(np.array(patched_model(rows).astype(mx.float32)))
    # (Nearly symmetric for so small a change: the formula's direction is pinned by
    # test_kl_formula_is_reference_to_model_on_asymmetric_distributions.)
    kl = (np.exp(lp_ref) * (lp_ref - lp)).sum(-1).ravel()
    assert patched["kl_mean"] == pytest.approx(kl.mean(), rel=1e-3)
    assert patched["kl_max"] == pytest.approx(kl.max(), rel=1e-3)
    assert patched["top1_agreement"] == np.mean(lp_ref.argmax(-1) == lp.argmax(-1))
    ppl, _ = task(tok_model, tmp_path / "r", "task=perplexity", "task.num_samples=2",
                  "model.rope_theta=50.0")
    assert patched["reference_perplexity"] == pytest.approx(raw["perplexity"], rel=1e-5)
    assert patched["perplexity"] == pytest.approx(ppl["perplexity"], rel=1e-5)
    assert patched["perplexity_ratio"] == pytest.approx(ppl["perplexity"] / raw["perplexity"],
                                                        rel=1e-5)
    other, _ = task(tok_model, tmp_path / "o", "task=kl", cache, "task.num_samples=3")
    assert other["reference_cached"] is False
    assert other["cache_path"] != patched["cache_path"]


def test_kl_formula_is_reference_to_model_on_asymmetric_distributions(tmp_path):
    """compare()/summarize() against numpy: KL(p_ref || p_model) = sum p_ref (log p_ref - log p_model)."""
    from mlxhydra.tasks.kl import compare, summarize, write_reference

    rng = np.random.default_rng(0)
    vocab = 7
    ref_table, model_table = rng.normal(0, 2.5, (vocab, vocab)), rng.normal(0, 2.5, (vocab, vocab))
    tokens = rng.integers(0, vocab, (5, 9))
    write_reference(TableModel(ref_table), mx.array(tokens), 2, "float32", tmp_path / "ref", {})
    got = compare(TableModel(model_table), mx.array(tokens), 2, tmp_path / "ref")

    lp_ref = log_softmax(ref_table)[tokens[:, :-1]]  # [5, 8, vocab]
    lp = log_softmax(model_table)[tokens[:, :-1]]
    forward = (np.exp(lp_ref) * (lp_ref - lp)).sum(-1).ravel()
    reverse = (np.exp(lp) * (lp - lp_ref)).sum(-1).ravel()
    assert np.abs(forward - reverse).max() > 0.1  # asymmetric enough to tell the directions apart
    assert got["kl"] == pytest.approx(forward, rel=1e-4, abs=1e-6)
    targets = tokens[:, 1:, None]
    nll_ref = -np.take_along_axis(lp_ref, targets, -1).ravel()
    nll = -np.take_along_axis(lp, targets, -1).ravel()
    assert got["nll_ref"] == pytest.approx(nll_ref, rel=1e-5)
    assert got["nll"] == pytest.approx(nll, rel=1e-5)
    assert got["dp"] == pytest.approx(np.exp(-nll) - np.exp(-nll_ref), abs=1e-6)
    same = (lp_ref.argmax(-1) == lp.argmax(-1)).ravel()
    assert list(got["same"]) == list(same.astype(float))

    stats = summarize(got)
    n = forward.size
    assert stats["tokens_evaluated"] == n == 40
    assert stats["kl_mean"] == pytest.approx(forward.mean(), rel=1e-5)
    assert stats["kl_mean_stderr"] == pytest.approx(forward.std(ddof=1) / np.sqrt(n), rel=1e-4)
    assert stats["kl_median"] == pytest.approx(np.median(forward), rel=1e-5)
    assert stats["kl_p99"] == pytest.approx(np.percentile(forward, 99), rel=1e-5)
    assert stats["kl_max"] == pytest.approx(forward.max(), rel=1e-5)
    assert stats["top1_agreement"] == same.mean()
    assert stats["delta_p_rms"] == pytest.approx(
        np.sqrt(np.mean((np.exp(-nll) - np.exp(-nll_ref)) ** 2)), rel=1e-4)
    assert stats["perplexity"] == pytest.approx(np.exp(nll.mean()), rel=1e-5)
    assert stats["reference_perplexity"] == pytest.approx(np.exp(nll_ref.mean()), rel=1e-5)
    assert stats["perplexity_ratio"] == pytest.approx(np.exp(nll.mean() - nll_ref.mean()), rel=1e-5)
    assert stats["ln_perplexity_ratio"] == pytest.approx(nll.mean() - nll_ref.mean(), rel=1e-4)


def test_kl_bad_reference_is_a_clear_error(tok_model, tmp_path):
    with pytest.raises(ConfigError, match="task.reference=.*nowhere.*does not exist"):
        task(tok_model, tmp_path, "task=kl", f"task.reference={tmp_path / 'nowhere'}")


# ---------------------------------------------------------------------------- perplexity

def test_perplexity_is_identical_across_runs(model_dir, tmp_path):
    a, m = task(model_dir, tmp_path / "a", "task=perplexity", "task.num_samples=6",
                "task.batch_size=4")
    b, _ = task(model_dir, tmp_path / "b", "task=perplexity", "task.num_samples=6",
                "task.batch_size=4")
    assert a["perplexity"] == b["perplexity"] and a["perplexity_stderr"] == b["perplexity_stderr"]
    assert a["tokens_evaluated"] == 6 * 127 and a["samples"] == 6
    assert a["sequence_length"] == 128 and a["data"] == str(model_dir / "eval.txt")
    # The whole file is one document: its first 6 rows of 128 tokens, scored here.
    ids = document_tokens(model_dir, (model_dir / "eval.txt").read_text())
    rows = np.array(ids[: 6 * 128]).reshape(6, 128)
    ppl, stderr = numpy_perplexity(m[0], rows)
    assert a["perplexity"] == pytest.approx(ppl, rel=1e-4)
    assert a["perplexity_stderr"] == pytest.approx(stderr, rel=1e-3)
    assert a["tokens_per_second"] == pytest.approx(a["tokens_evaluated"] / a["seconds"])
    assert a["data_sha256"] == "sha256:" + hashlib.sha256((model_dir / "eval.txt").read_bytes()).hexdigest()


def test_perplexity_reads_json_lines(tok_model, tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"text": f"{i}+{i}={2 * i}"}) + "\n" for i in range(200)))
    out, _ = task(tok_model, tmp_path / "r", "task=perplexity", f"task.data={data}",
                  "task.sequence_length=32")
    tokens = sum(len(document_tokens(tok_model, f"{i}+{i}={2 * i}")) for i in range(200))
    assert out["data"] == str(data) and out["sequence_length"] == 32
    assert out["samples"] == tokens // 32 and out["tokens_evaluated"] == (tokens // 32) * 31
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "1+1=2"}\n{"txt": "x"}\n')
    with pytest.raises(TaskError, match=r"bad.jsonl line 2: missing field\(s\) text"):
        task(tok_model, tmp_path / "s", "task=perplexity", f"task.data={bad}")


@pytest.mark.parametrize("override, error, message", [
    # Settings: refused by validate, before any weight is read.
    ("task.batch_size=0", ConfigError, "task.batch_size=0: expected a positive integer"),
    ("task.sequence_length=1", ConfigError, "task.sequence_length=1: expected at least 2"),
    ("task.num_samples=-2", ConfigError, "task.num_samples=-2: expected a positive integer or -1"),
    # Found only while reading the data.
    ("task.sequence_length=100000", TaskError, "fewer than task.sequence_length=100000"),
])
def test_bad_settings_are_named(tok_model, tmp_path, override, error, message):
    with pytest.raises(error, match=message) as e:
        task(tok_model, tmp_path, "task=perplexity", override)
    assert type(e.value) is error


def test_every_bad_setting_is_refused_at_once_before_loading(tok_model, tmp_path, monkeypatch):
    import mlxhydra.load.loader as loader

    def no_loading(*args, **kwargs):
        raise AssertionError("weights read for a config that cannot run")

    monkeypatch.setattr(loader, "build_model", no_loading)
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(ConfigError) as e:
        task(tok_model, tmp_path, "task=kl", "task.batch_size=0", f"task.data={empty}",
             f"task.reference={tmp_path / 'nowhere'}", "quant.bits=7")
    assert e.value.problems == [
        "quant.bits=7: expected one of 2, 3, 4, 5, 6, 8",
        "task.batch_size=0: expected a positive integer",
        f"task.data: {empty} is empty",
        f"task.reference={tmp_path / 'nowhere'}: {tmp_path / 'nowhere'} does not exist "
        "(expected a model or run directory)",
    ]


@pytest.mark.parametrize("name", ["perplexity", "kl", "accuracy"])
def test_empty_data_file_is_named(tok_model, tmp_path, name):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(ConfigError, match=f"task.data: {empty} is empty"):
        task(tok_model, tmp_path, f"task={name}", f"task.data={empty}")


@pytest.mark.parametrize("name", ["perplexity", "kl", "accuracy"])
def test_data_file_that_is_not_utf8_is_named_before_loading(tok_model, tmp_path, name):
    bad = tmp_path / "data.jsonl"
    bad.write_bytes(b'{"prompt": "1+1=", "answer": "2"}\n{"text": "caf\xe9"}\n')  # Latin-1 'e'
    with pytest.raises(ConfigError) as e:
        validate(compose([f"model={tok_model}", f"task={name}", f"task.data={bad}"]))
    assert e.value.problems == [f"task.data={bad}: {bad} is not UTF-8 text (byte 0xe9 at offset 47, line 2)"]


def test_default_data_file_that_is_not_utf8_is_named_by_the_shared_reader(tok_model, tmp_path):
    model_dir = tmp_path / "m"
    shutil.copytree(tok_model, model_dir)
    (model_dir / "eval.txt").write_bytes(b"\xff" + (tok_model / "eval.txt").read_bytes())
    with pytest.raises(TaskError) as e:
        task(model_dir, tmp_path / "run", "task=perplexity")
    assert str(e.value) == f"task.data: {model_dir / 'eval.txt'} is not UTF-8 text (byte 0xff at offset 0, line 1)"


def test_utf8_check_reads_in_chunks_and_finds_the_first_bad_byte(tmp_path):
    from mlxhydra.file_checks import utf8_problem
    from mlxhydra.load.data_files import read_text

    f = tmp_path / "t.txt"
    text = "é\n€\n😀 ok\n".encode()  # 2-, 3- and 4-byte characters
    f.write_bytes(text)
    for size in range(1, len(text) + 1):  # every chunk boundary, inside each character too
        assert utf8_problem(f, chunk_size=size) is None
    f.write_bytes(text + b"\xf0\x9f")  # a character cut short at the end
    for size in (1, 3, 1 << 24):
        assert utf8_problem(f, chunk_size=size) == "is not UTF-8 text (byte 0xf0 at offset 15, line 4)"
    with pytest.raises(TaskError) as e:  # the shared reader says the same
        read_text(f, "task.data")
    assert str(e.value) == f"task.data: {f} is not UTF-8 text (byte 0xf0 at offset 15, line 4)"
    f.write_bytes(b"ab\n\xe2\x82cd")  # a bad continuation inside the file
    for size in (1, 4, 1 << 24):
        assert utf8_problem(f, chunk_size=size) == "is not UTF-8 text (byte 0xe2 at offset 3, line 2)"


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
    assert a["prompt_tokens"] == 2  # the chat template's "<s>", then "5"
    if a["finish_reason"] == "length":
        assert a["generation_tokens"] == 24
    else:  # stopped at eos: every token but the eos is text
        assert a["finish_reason"] == "stop" and 1 <= a["generation_tokens"] < 24
    assert a["generation_tps"] > 0 and a["peak_memory_gb"] > 0  # measurements


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
    predictions = [json.loads(x) for x in Path(first["predictions"]).read_text().splitlines()]
    rows = [json.loads(x) for x in (model_dir / "accuracy.jsonl").read_text().splitlines()][:5]
    assert [(p["prompt"], p["answer"]) for p in predictions] == [(r["prompt"], r["answer"]) for r in rows]
    assert len(predictions) == 5 and all("\n" not in p["prediction"] for p in predictions)
    right = [p["prediction"].strip() == str(p["answer"]).strip() for p in predictions]
    assert [p["correct"] for p in predictions] == right
    assert (first["correct"], first["total"], first["accuracy"]) == (sum(right), 5, sum(right) / 5)
    # Answers equal to the greedy predictions: every one is right.
    data = tmp_path / "own.jsonl"
    data.write_text("".join(json.dumps({"prompt": p["prompt"], "answer": f" {p['prediction']} "})
                            + "\n" for p in predictions))
    again, _ = task(model_dir, tmp_path / "b", "task=accuracy", f"task.data={data}", model=m)
    assert (again["accuracy"], again["correct"], again["total"]) == (1.0, 5, 5)
    assert first["accuracy_ci95_low"] <= first["accuracy"] <= first["accuracy_ci95_high"]
    # Wilson's interval for 5 of 5 (published value): not empty, and not past 1
    assert again["accuracy_ci95_low"] == pytest.approx(0.5655, abs=1e-4)
    assert again["accuracy_ci95_high"] == 1.0


def test_wilson_interval_published_values():
    from mlxhydra.tasks.accuracy import wilson_interval

    for (correct, total), expected in (((5, 10), (0.2366, 0.7634)), ((0, 10), (0.0, 0.2775))):
        assert wilson_interval(correct, total) == pytest.approx(expected, abs=1e-4)


def test_bench_reports_mlx_lm_statistics(tok_model, tmp_path):
    out, _ = task(tok_model, tmp_path, "task=bench", "task.prompt_tokens=32",
                  "task.generation_tokens=8", "task.trials=2")
    assert len(out["trials"]) == 2 and all(t["generation_tokens"] == 8 for t in out["trials"])
    assert (out["prompt_tokens"], out["generation_tokens"]) == (32, 8)
    for key, trial_key in (("prompt_tps", "prompt_tps"), ("generation_tps", "generation_tps"),
                           ("peak_memory_gb", "peak_memory")):
        values = [t[trial_key] for t in out["trials"]]
        assert all(v > 0 for v in values)  # measurements
        assert out[key] == pytest.approx(sum(values) / 2)  # their mean


# ---------------------------------------------------------------------------- save

@pytest.mark.parametrize("quant", ["quant=none", "quant=4bit", "quant=mixed_3_6"])
def test_save_then_load_gives_identical_logits(tok_model, tmp_path, quant):
    from mlx_lm import load as mlx_lm_load

    target = tmp_path / "saved"
    out, (model, report) = task(tok_model, tmp_path / "run", "task=save", quant,
                                f"task.path={target}", "model.rope_theta=20000.0")
    config = report.model_config
    assert out["path"] == str(target)
    saved = json.loads((target / "config.json").read_text())
    assert saved["rope_theta"] == 20000.0
    assert saved.get("quantization") == config.get("quantization")
    assert (quant == "quant=none") == ("quantization" not in saved)
    for name in ("eval.txt", "accuracy.jsonl"):  # the tokenizer is saved: tests/test_save_card.py
        assert (target / name).read_bytes() == (tok_model / name).read_bytes()
    expected = logits(model)
    theirs, _ = mlx_lm_load(str(target))
    ours, _ = load_model(target)
    assert np.array_equal(logits(theirs), expected)
    assert np.array_equal(logits(ours), expected)
    with pytest.raises(ConfigError, match="already exists; refusing to overwrite"):
        task(tok_model, tmp_path / "run2", "task=save", f"task.path={target}")
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_save_leaves_nothing_behind_on_error(tok_model, tmp_path):
    _, (model, report) = task(tok_model, tmp_path / "load", "task=load")
    report.model_config["not_json"] = object()  # save_config cannot write it
    with pytest.raises(TypeError):
        task(tok_model, tmp_path, "task=save", f"task.path={tmp_path / 'out' / 'm'}",
             model=(model, report))
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
    assert record["error_type"] == "ConfigError"
    assert "weight_files" not in record  # refused before any weight was read


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
    # One reference, computed by the first job and read by the others.
    [cached] = (tmp_path / "outputs" / ".cache" / "kl").iterdir()
    assert [r["metrics"]["cache_path"] for r in runs] == [str(cached)] * 3


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
