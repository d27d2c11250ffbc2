"""quant.method: mlx-lm's calibrated methods against mlx-lm's own tools, bit for bit.

The reference is mlx-lm itself: its command-line tools (``mlx_lm.awq``,
``mlx_lm.gptq``, ``mlx_lm.dynamic_quant``) run in this process on the same
model, with their calibration text (which they would download) put where
they read it, and ``mlx_lm.dwq``'s functions called as its ``main`` calls
them. The quantized parameters must be bit-identical.
"""

import copy
import importlib
import json
import shutil
import sys
from pathlib import Path

import mlx.core as mx
import mlx.optimizers as optimizers
import numpy as np
import pytest
from conftest import EMBEDDED_TINY, make_model, read_run, run_cli, run_dirs
from mlx.utils import tree_flatten
from mlx_lm import utils as mu

import mlxhydra
from mlxhydra.errors import ConfigError
from mlxhydra.load.calibration import read_calibration, split_rows
from mlxhydra.load.tokenizer import load_tokenizer

TEXT = EMBEDDED_TINY / "eval.txt"
TOKENIZER = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
TOKENS = mx.array([[1, 5, 9, 20, 3, 17, 42, 8, 0, 55, 11, 12]])


def with_tokenizer(directory: Path, model_type: str = "llama", **kwargs) -> Path:
    """A random mlx-lm model with the embedded model's tokenizer (vocab 100 of its 256)."""
    make_model(directory, model_type, **kwargs)
    for name in TOKENIZER:
        shutil.copy(EMBEDDED_TINY / name, directory / name)
    return directory


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return with_tokenizer(tmp_path_factory.mktemp("m") / "llama")


@pytest.fixture(scope="module")
def short_text(tmp_path_factory):
    """The first 1200 characters of the embedded corpus: two rows of 512 tokens."""
    path = tmp_path_factory.mktemp("text") / "calibration.txt"
    path.write_text(TEXT.read_text()[:1200])
    return path


@pytest.fixture
def mlx_lm_home(tmp_path, monkeypatch, short_text):
    """HOME with the calibration text where mlx_lm.quant.utils.load_data reads it (no download)."""
    cache = tmp_path / "home" / ".cache" / "mlx-lm"
    cache.mkdir(parents=True)
    shutil.copy(short_text, cache / "calibration_v5.txt")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return short_text


def calibration(num_samples, sequence_length, seed=123, data=TEXT):
    return {"data": str(data), "num_samples": num_samples, "sequence_length": sequence_length,
            "seed": seed}


def mlx_lm_tool(name, model_dir, out, *args, monkeypatch):
    """Run ``mlx_lm.<name>``'s main() here and load what it saved.

    In ``out``'s parent: mlx_lm.dynamic_quant writes its sensitivities to the working directory.
    """
    monkeypatch.chdir(Path(out).parent)
    monkeypatch.setattr(sys, "argv", [name, "--model", str(model_dir), "--mlx-path", str(out), *args])
    importlib.import_module(f"mlx_lm.quant.{name}").main()
    return mu.load_model(Path(out))


def assert_same_parameters(ours, theirs):
    a, b = dict(tree_flatten(ours.parameters())), dict(tree_flatten(theirs.parameters()))
    assert sorted(a) == sorted(b)
    different = [k for k in a if a[k].dtype != b[k].dtype or not mx.array_equal(a[k], b[k]).item()]
    assert different == []


# --- each method equals mlx-lm's tool -----------------------------------------

@pytest.mark.parametrize("name, args, quant", [
    ("awq", ["--bits", "3", "--num-samples", "4", "--sequence-length", "48", "--n-grid", "3",
             "--seed", "7"],
     {"method": "awq", "bits": 3, "awq": {"n_grid": 3}, "calibration": calibration(4, 48, 7)}),
    ("gptq", ["--bits", "2", "--group-size", "32", "--num-samples", "9", "--sequence-length", "48"],
     {"method": "gptq", "bits": 2, "group_size": 32, "calibration": calibration(9, 48)}),
    # mlx_lm.dynamic_quant reads every row of 512 tokens: two of the short text.
    ("dynamic_quant", ["--target-bpw", "4.5", "--low-bits", "3", "--high-bits", "5"],
     {"method": "dynamic", "bits": 3, "dynamic": {"target_bpw": 4.5, "high_bits": 5},
      "calibration": {"num_samples": -1, "sequence_length": 512}}),
])
def test_method_equals_mlx_lm_tool(llama, tmp_path, mlx_lm_home, monkeypatch, name, args, quant):
    theirs, their_config = mlx_lm_tool(name, llama, tmp_path / "out", *args, monkeypatch=monkeypatch)
    quant["calibration"]["data"] = str(mlx_lm_home)
    ours, config = mlxhydra.load_model(llama, quant=quant)
    assert_same_parameters(ours, theirs)
    assert config["quantization"] == their_config["quantization"]
    assert mx.array_equal(ours(TOKENS), theirs(TOKENS)).item()


def test_dwq_equals_mlx_lm_functions(llama):
    """mlx_lm.dwq's main, step by step, on the rows mlxhydra draws (its tool reads a HF dataset)."""
    settings = {"method": "dwq", "bits": 2, "group_size": 32, "calibration": calibration(8, 33, 5),
                "dwq": {"learning_rate": 1e-3, "batch_size": 2, "num_valid_samples": 2}}
    ours, config = mlxhydra.load_model(llama, quant=settings)

    np.random.seed(5)
    mx.random.seed(5)
    rows = read_calibration(TEXT, load_tokenizer(llama)).rows(33)
    train, valid = split_rows(rows, 8, 2)
    teacher, their_config = mu.load_model(llama, lazy=True)
    student = copy.deepcopy(teacher)
    _, their_config = mu.quantize_model(student, their_config, group_size=32, bits=2)
    from mlx_lm.quant.dwq import dwq_quantize

    dwq_quantize(student, lambda batch, idx, split: teacher(batch),
                 optimizers.Adam(learning_rate=1e-3, bias_correction=True), train, valid,
                 batch_size=2, max_seq_length=33, seed=5)
    assert_same_parameters(ours, student)
    assert config["quantization"] == their_config["quantization"]
    plain, _ = mlxhydra.load_model(llama, quant={"bits": 2, "group_size": 32})
    scales = [k for k, _ in tree_flatten(plain.parameters()) if k.endswith("scales")]
    trained = dict(tree_flatten(ours.parameters()))
    assert any(not mx.allclose(trained[k], dict(tree_flatten(plain.parameters()))[k]).item()
               for k in scales)  # the scales moved away from round-to-nearest's


@pytest.mark.parametrize("model_type", ["qwen3", "gemma3_text", "qwen3_moe"])
def test_gptq_block_by_block_equals_whole_model(tmp_path, model_type):
    """Tied embeddings (qwen3), per-block masks (gemma3's sliding window), experts and a
    ``layers`` property that returns a copy of the block list (qwen3_moe)."""
    from mlx_lm.quant.gptq import gptq_quantize

    from mlxhydra.load.calibration import choose_rows

    model_dir = with_tokenizer(tmp_path / model_type, model_type)
    ours, config = mlxhydra.load_model(model_dir, quant={
        "method": "gptq", "bits": 4, "group_size": 32, "calibration": calibration(10, 24)})
    mx.random.seed(123)
    model, _ = mu.load_model(model_dir, lazy=True)
    rows = choose_rows(read_calibration(TEXT, load_tokenizer(model_dir)).rows(24), 10)
    model, entry = gptq_quantize(model, rows, 4, 32, 6, 64)
    assert_same_parameters(ours, model)
    assert config["quantization"] == entry


@pytest.mark.slow
def test_gptq_on_a_bfloat16_model_sums_its_hessians_in_float32():
    """hessian_dtype=model is mlx-lm's GPTQ bit for bit; float32 (the default) loses far less."""
    from mlx_lm.quant.gptq import gptq_quantize

    from mlxhydra.load.calibration import choose_rows

    quant = {"method": "gptq", "bits": 4, "calibration": calibration(4, 32)}
    as_mlx_lm, config = mlxhydra.load_model(EMBEDDED_TINY, quant={**quant,
                                                                  "gptq": {"hessian_dtype": "model"}})
    mx.random.seed(123)
    model, _ = mu.load_model(EMBEDDED_TINY, lazy=True)
    assert model.parameters()["model"]["norm"]["weight"].dtype == mx.bfloat16
    tokens = read_calibration(TEXT, load_tokenizer(EMBEDDED_TINY)).rows(32)
    model, entry = gptq_quantize(model, choose_rows(tokens, 4), 4, 64, 6, 64)
    assert_same_parameters(as_mlx_lm, model)
    assert config["quantization"] == entry

    ours, _ = mlxhydra.load_model(EMBEDDED_TINY, quant=quant)
    reference, _ = mlxhydra.load_model(EMBEDDED_TINY)
    rows = mx.array(tokens[-8:])
    assert kl_to_float(ours, reference, rows) < kl_to_float(as_mlx_lm, reference, rows) / 10


# --- relations -----------------------------------------------------------------

def kl_to_float(model, reference, rows):
    def log_softmax(x):
        x = x.astype(mx.float32)
        return x - mx.logsumexp(x, axis=-1, keepdims=True)

    lp, ref = log_softmax(model(rows)), log_softmax(reference(rows))
    return mx.mean(mx.sum(mx.exp(ref) * (ref - lp), axis=-1)).item()


@pytest.mark.slow
@pytest.mark.parametrize("method, extra", [
    ("rtn", {}), ("awq", {"awq": {"n_grid": 3}}), ("gptq", {}),
    ("dwq", {"dwq": {"learning_rate": 1e-4, "batch_size": 2, "num_valid_samples": 2}}),
    ("dynamic", {}),
])
def test_kl_falls_as_bits_rise_for_every_method(method, extra):
    reference, _ = mlxhydra.load_model(EMBEDDED_TINY)
    rows = mx.array(read_calibration(TEXT, load_tokenizer(EMBEDDED_TINY)).rows(64)[-8:])
    kl = {}
    for bits in (2, 4, 8):
        quant = {"method": method, "bits": bits, **extra}
        if method == "awq":  # the embedding and lm_head too (mlx-lm's default keeps them at 4 bits)
            quant["awq"] = {**extra["awq"], "embed_bits": bits}
        if method != "rtn":
            quant["calibration"] = calibration(4, 32)
        model, _ = mlxhydra.load_model(EMBEDDED_TINY, quant=quant)
        kl[bits] = kl_to_float(model, reference, rows)
    assert kl[2] > kl[4] > kl[8] > 0


# --- records, saving, reuse -----------------------------------------------------

@pytest.mark.slow
def test_save_records_calibration_and_mlx_lm_loads_it(tmp_path):
    out = tmp_path / "awq3"
    r = run_cli("quant.method=awq", "quant.bits=3", "quant.awq.n_grid=4",
                "quant.calibration.num_samples=4", "quant.calibration.sequence_length=64",
                "task=save", f"task.path={out}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    record = read_run(run_dirs(tmp_path)[-1])
    q = record["quantization"]
    assert q["method"] == "awq" and q["method_settings"] == {"embed_bits": 4, "embed_group_size": 32,
                                                             "n_grid": 4}
    cal = q["calibration"]
    assert cal["data"] == str(TEXT) and cal["samples"] == 4 and cal["sequence_length"] == 64
    assert cal["seed"] == 123 and cal["data_sha256"].startswith("sha256:")
    assert cal["rows_sha256"].startswith("sha256:")
    saved, config = mu.load_model(out)
    ours, _ = mlxhydra.load_model(EMBEDDED_TINY, quant={
        "method": "awq", "bits": 3, "awq": {"n_grid": 4},
        "calibration": {"num_samples": 4, "sequence_length": 64}})
    assert_same_parameters(ours, saved)
    assert config["quantization"]["model.layers.0.mlp.down_proj"] == {"group_size": 64, "bits": 3}


@pytest.mark.slow
def test_the_recorded_calibration_fingerprints_are_of_the_file_and_the_rows(tmp_path, llama):
    """run.json's data_sha256 is the calibration file's SHA-256 (and follows a change of the
    file); rows_sha256 is that of the rows mlx-lm's GPTQ would draw with the same seed."""
    import hashlib

    from mlxhydra.load.calibration import choose_rows

    text = tmp_path / "calibration.txt"
    text.write_text(TEXT.read_text()[:3000])
    recorded = {}
    for attempt in ("first", "changed"):
        if attempt == "changed":
            text.write_text(text.read_text()[:2999] + "9")  # one character, same length
        r = run_cli(f"model={llama}", "quant.method=gptq", "quant.bits=4", "quant.group_size=32",
                    f"quant.calibration.data={text}", "quant.calibration.num_samples=4",
                    "quant.calibration.sequence_length=32", "task=load", cwd=tmp_path)
        assert r.returncode == 0, r.stderr[-2000:]
        recorded[attempt] = read_run(run_dirs(tmp_path)[-1])["quantization"]["calibration"]
        assert recorded[attempt]["data_sha256"] == "sha256:" + hashlib.sha256(text.read_bytes()).hexdigest()
        mx.random.seed(123)
        mu.load_model(llama, lazy=True)  # draws from mlx's generator as the loaded model does
        rows = choose_rows(read_calibration(text, load_tokenizer(llama)).rows(32), 4)
        assert recorded[attempt]["rows_sha256"] == "sha256:" + hashlib.sha256(
            np.asarray(rows, dtype=np.int32).tobytes()).hexdigest()
    assert recorded["first"]["data_sha256"] != recorded["changed"]["data_sha256"]
    assert recorded["first"]["data_tokens"] == recorded["changed"]["data_tokens"]


def test_dynamic_reuses_its_sensitivities(tmp_path):
    """A run writes sensitivities.json; a later run reads it and skips the sensitivity pass."""
    from mlxhydra.load.learned_quant import SENSITIVITIES, prepare_method
    from mlxhydra.load.loader import build_model
    from mlxhydra.load.model_config import load_config
    from mlxhydra.load.quant_spec import parse_quant
    from mlxhydra.load.settings import LoadSettings

    spec = parse_quant({"method": "dynamic", "bits": 3, "calibration": calibration(6, 64)})
    run = prepare_method(spec, EMBEDDED_TINY, load_config(EMBEDDED_TINY), output_dir=tmp_path)
    first, _, report = build_model(EMBEDDED_TINY, load_config(EMBEDDED_TINY),
                                   LoadSettings.from_groups(quant=spec), method_run=run)
    written = tmp_path / SENSITIVITIES
    assert report.quantization["calibration"]["sensitivities"] == str(written)
    values = dict(json.loads(written.read_text()))
    assert len(values) == 16 and "lm_head" in values
    again, _ = mlxhydra.load_model(EMBEDDED_TINY, quant={
        "method": "dynamic", "bits": 3, "dynamic": {"sensitivities": str(written)}})
    assert_same_parameters(again, first)
    high = report.quantization["calibration"]["high_layers"]
    assert 0 < high < 16 and sum(v["bits"] == 4 for v in report.quantization["layers"].values()) == high


# --- bad settings: one line each, before any weight is read --------------------

@pytest.mark.parametrize("quant, message", [
    ({"method": "gptq", "bits": 3}, "quant.bits=3: mlx-lm's GPTQ packs 2, 4 or 8 bits only"),
    ({"method": "sgd"}, "quant.method='sgd': expected one of rtn, awq, gptq, dwq, dynamic"),
    ({"method": "awq", "mode": "mxfp4"}, "awq quantizes in affine mode only"),
    ({"method": "awq", "bits": 4, "rules": [{"pattern": "lm_head", "bits": 8}]},
     "quant.rules applies to quant.method=rtn only"),
    ({"method": "dynamic", "bits": 8, "group_size": 32}, "no finer default for its sensitive layers"),
    ({"method": "dynamic", "bits": 4, "dynamic": {"high_bits": 3}},
     "the sensitive layers must get more bits"),
    ({"method": "dwq", "dwq": {"steps": 10}, "calibration": {"num_samples": 8}},
     "quant.dwq.steps and quant.calibration.num_samples both set"),
    ({"method": "awq", "awq": {"n_grid": 0}}, "quant.awq.n_grid=0: expected a positive integer"),
    ({"method": "gptq", "gptq": {"damp": 0.1}}, "quant.gptq: unknown keys ['damp']"),
    ({"method": "gptq", "gptq": {"hessian_dtype": "float16"}},
     "quant.gptq.hessian_dtype='float16': expected one of float32, model"),
    ({"method": "dwq", "calibration": {"data": "/nowhere.txt"}},
     "quant.calibration.data=/nowhere.txt: /nowhere.txt does not exist"),
    ({"method": "dwq", "calibration": {"seed": -1}}, "quant.calibration.seed=-1"),
])
def test_bad_method_settings(quant, message):
    from mlxhydra.load.quant_spec import parse_quant

    with pytest.raises(ConfigError) as e:
        parse_quant(quant)
    assert any(message in p for p in e.value.problems), e.value.problems


def test_a_sensitivities_file_that_is_not_pairs_is_refused_before_loading(tmp_path):
    from mlxhydra.load.quant_spec import parse_quant

    bad = tmp_path / "sensitivities.json"
    bad.write_text("[0.5, 0.25]")  # numbers, not [layer, sensitivity] pairs
    with pytest.raises(ConfigError) as e:
        parse_quant({"method": "dynamic", "bits": 3, "dynamic": {"sensitivities": str(bad)}})
    assert e.value.problems == [
        f"quant.dynamic.sensitivities={bad}: not a JSON list of [layer, sensitivity] pairs "
        "(cannot convert dictionary update sequence element #0 to a sequence)"]


@pytest.mark.slow
def test_unsupported_architecture_fails_before_reading_weights(tmp_path):
    model_dir = with_tokenizer(tmp_path / "moe", "qwen3_moe")
    (model_dir / "model.safetensors").write_bytes(b"not read")
    r = run_cli(f"model={model_dir}", "quant.method=awq", cwd=tmp_path)
    assert r.returncode == 1
    assert "quant.method=awq: mlx-lm's AWQ supports model types" in r.stderr
    assert "'qwen3_moe'" in r.stderr and "Traceback" not in r.stderr
    record = read_run(run_dirs(tmp_path)[-1])
    assert record["status"] == "failed" and "AWQ supports" in record["error"]


@pytest.mark.slow
def test_kl_against_a_past_calibrated_run_of_the_same_settings_is_zero(tmp_path):
    """The reference is rebuilt from the past run's record: the same calibration file, same model."""
    settings = ("quant.method=gptq", "quant.bits=2", "quant.calibration.num_samples=4",
                "quant.calibration.sequence_length=64",
                "quant.calibration.data=${mlxhydra_data:tiny_calibration.txt}")
    r = run_cli(*settings, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    past = run_dirs(tmp_path)[-1]
    r = run_cli(*settings, "task=kl", f"task.reference={past}", "task.num_samples=2", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    metrics = read_run(run_dirs(tmp_path)[-1])["metrics"]
    assert metrics["reference"]["kind"] == "run"
    assert metrics["kl_mean"] == 0.0 and metrics["top1_agreement"] == 1.0


def test_a_kernel_the_back_end_lacks_is_one_line(tmp_path):
    """bfloat16 experts on the CPU back end: mlx has no such kernel there."""
    import mlx.core as mx

    if mx.default_device() != mx.cpu:
        pytest.skip("the CPU back end's limit")
    model_dir = with_tokenizer(tmp_path / "moe", "qwen3_moe", dtype="bfloat16")
    with pytest.raises(ConfigError) as e:
        mlxhydra.load_model(model_dir, quant={"method": "dynamic", "bits": 4, "group_size": 32,
                                              "calibration": calibration(2, 32)})
    assert str(e.value).startswith("quant.method=dynamic cannot run on this back end")
    assert "load.dtype=float32" in str(e.value) and "\n" not in str(e.value)


def test_calibrated_methods_are_refused_across_ranks(monkeypatch):
    """Before any weight is read: a method needs the whole model in one process."""
    from mlxhydra import compose
    from mlxhydra.distributed import ranks
    from mlxhydra.job.validation import validate

    validate(compose(["quant.method=gptq", "quant.bits=4"]))  # one process: fine
    monkeypatch.setattr(ranks, "_world", ranks.World(rank=0, size=2, backend="ring"))
    with pytest.raises(ConfigError, match=r"quant.method=gptq: calibrated quantization runs in one "
                                          r"process; quantize there \(task=save\)"):
        validate(compose(["quant.method=gptq", "quant.bits=4"]))


def latin1_file(path: Path) -> Path:
    """Text that is not UTF-8: 'é' as the single Latin-1 byte 0xe9 on its second line."""
    path.write_bytes(b"12+34=046\n56+78=13\xe94\n")
    return path


@pytest.mark.parametrize("method", ["awq", "gptq", "dwq", "dynamic"])
def test_calibration_text_that_is_not_utf8_is_named_before_loading(llama, tmp_path, method):
    from mlxhydra.config.composition import compose
    from mlxhydra.job.validation import validate

    bad = latin1_file(tmp_path / "calib.txt")
    with pytest.raises(ConfigError) as e:
        validate(compose([f"model={llama}", f"quant.method={method}", "quant.bits=4",
                          f"quant.calibration.data={bad}"]))
    assert e.value.problems == [
        f"quant.calibration.data={bad}: {bad} is not UTF-8 text (byte 0xe9 at offset 18, line 2)"]


def test_default_calibration_text_that_is_not_utf8_is_named_before_the_weights(tmp_path, monkeypatch):
    """No quant.calibration.data: the model directory's eval.txt, read by the shared reader."""
    from mlxhydra.config.composition import compose
    from mlxhydra.errors import TaskError
    from mlxhydra.job.pipeline import prepare
    from mlxhydra.load import loader

    model_dir = with_tokenizer(tmp_path / "m")
    latin1_file(model_dir / "eval.txt")
    monkeypatch.setattr(loader, "build_model", lambda *a, **k: pytest.fail("weights read"))
    with pytest.raises(TaskError) as e:
        prepare(compose([f"model={model_dir}", "quant.method=gptq", "quant.bits=4"]))
    assert str(e.value) == (f"quant.calibration.data: {model_dir / 'eval.txt'} is not UTF-8 text "
                            "(byte 0xe9 at offset 18, line 2)")
    # The task's data is the calibration text of text tasks: its key is named.
    (model_dir / "eval.txt").write_text("12+34=046\n")
    bad = latin1_file(tmp_path / "data.txt")
    with pytest.raises(ConfigError) as e:
        prepare(compose([f"model={model_dir}", "quant.method=gptq", "quant.bits=4",
                         "task=perplexity", f"task.data={bad}"]))
    assert e.value.problems == [f"task.data={bad}: {bad} is not UTF-8 text (byte 0xe9 at offset 18, line 2)"]
    from mlxhydra.load.calibration import read_calibration  # the reader names the key it is given
    with pytest.raises(TaskError) as e:
        read_calibration(bad, load_tokenizer(model_dir), "task.data")
    assert str(e.value) == f"task.data: {bad} is not UTF-8 text (byte 0xe9 at offset 18, line 2)"
