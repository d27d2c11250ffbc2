"""quant.compute: quantized layers that multiply with weights dequantized at use."""

import json
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from conftest import make_model, read_run, run_cli, run_dirs
from mlx.utils import tree_flatten

from mlxhydra.config.composition import compose
from mlxhydra.errors import ConfigError
from mlxhydra.job.pipeline import prepare
from mlxhydra.job.validation import validate
from mlxhydra.load.loader import load_model
from mlxhydra.load.quantized_compute import (
    DequantizedEmbedding,
    DequantizedLinear,
    apply_compute,
    resolve_compute,
    use_dequantized,
    use_native,
)

TOKENS = mx.array([[1, 5, 20, 21, 22, 11, 20, 30, 40, 7]])


def logits(model):
    return np.array(model(TOKENS).astype(mx.float32))


@pytest.fixture(scope="module")
def tied_dir(tmp_path_factory) -> Path:
    """A float32 llama with tied embeddings (the output projection is the embedding's as_linear)."""
    return make_model(tmp_path_factory.mktemp("tied") / "m", tie_word_embeddings=True)


@pytest.mark.parametrize("quant", [{"bits": 2, "group_size": 32}, {"bits": 4, "group_size": 32},
                                   {"bits": 8, "group_size": 32}, {"mode": "mxfp4"},
                                   {"mode": "nvfp4"}, {"mode": "mxfp8"}])
def test_float32_dequantized_equals_native(llama_dir, tied_dir, quant):
    for model_dir in (llama_dir, tied_dir):
        native, _ = load_model(model_dir, quant=quant)
        dequantized, _ = load_model(model_dir, quant={**quant, "compute": "dequantized"})
        np.testing.assert_allclose(logits(dequantized), logits(native), rtol=1e-5, atol=1e-5)


def exact_weights(layer: nn.Module) -> np.ndarray:
    """An affine layer's quantized weights, ``scale * q + bias``, in float64 from the packed bits."""
    packed = np.array(layer.weight)
    per_word = 32 // layer.bits
    shifts = (np.arange(per_word) * layer.bits).astype(np.uint32)
    q = (packed[..., None] >> shifts) & np.uint32((1 << layer.bits) - 1)
    q = q.reshape(packed.shape[0], -1).astype(np.float64)

    def per_weight(a):
        return np.array(a.astype(mx.float32)).astype(np.float64).repeat(layer.group_size, axis=1)

    return per_weight(layer.scales) * q + per_weight(layer.biases)


def rounded(exact: np.ndarray, dtype) -> mx.array:
    return mx.array(exact.astype(np.float32)).astype(dtype)


@pytest.mark.parametrize("dtype", [mx.bfloat16, mx.float16])
def test_dequantized_multiplies_the_quantized_values_rounded_once(dtype):
    """The product is the float product of the quantized weights, each rounded once to the
    model's dtype: closer to the exact product than mlx's quantized kernel, and far from the
    float weights' product."""
    mx.random.seed(0)
    linear = nn.Linear(256, 128, bias=False)
    linear.set_dtype(dtype)
    layer = nn.QuantizedLinear.from_linear(linear, group_size=64, bits=4)
    exact = exact_weights(layer)
    x = mx.random.normal((5, 256)).astype(dtype)
    native = layer(x)
    layer.__class__ = DequantizedLinear
    out = layer(x)
    assert out.dtype == dtype
    assert mx.array_equal(out, x @ rounded(exact, dtype).T).item()
    exact_product = np.array(x.astype(mx.float32)).astype(np.float64) @ exact.T

    def err(y):
        return np.abs(np.array(y.astype(mx.float32)) - exact_product).max()

    assert err(out) < err(native)
    assert err(linear(x)) > 10 * err(out)


@pytest.mark.parametrize("mode", ["mxfp4", "nvfp4", "mxfp8"])
def test_other_modes_multiply_in_the_activations_dtype(mode):
    """As mlx's quantized_matmul: a float16 layer gives float16 (mx.dequantize's default,
    bfloat16, would promote the product and the rest of the model to float32)."""
    mx.random.seed(0)
    linear = nn.Linear(256, 64, bias=False)
    linear.set_dtype(mx.float16)
    layer = nn.QuantizedLinear.from_linear(linear, mode=mode)
    x = mx.random.normal((5, 256)).astype(mx.float16)
    native = layer(x)
    layer.__class__ = DequantizedLinear
    out = layer(x)
    assert out.dtype == native.dtype == mx.float16
    # fp4/fp8 values times their scales are exact in float16.
    w = mx.dequantize(layer.weight, layer.scales, mode=mode, dtype=mx.float32)
    assert mx.array_equal(out, x @ w.astype(mx.float16).T).item()


@pytest.fixture(scope="module")
def float16_dir(tmp_path_factory) -> Path:
    """A float16 llama with tied embeddings, wide enough for rounding to show (hidden 256)."""
    return make_model(tmp_path_factory.mktemp("f16") / "m", dtype="float16", hidden_size=256,
                      intermediate_size=512, tie_word_embeddings=True)


def test_dequantized_model_is_the_float_model_of_its_rounded_weights(float16_dir):
    """Every quantized weight (linear layers, the tied embedding's lookup and output
    projection) rounded once to float16 and loaded into the float model: the same logits,
    bit for bit."""
    dequantized, _ = load_model(float16_dir, quant={"bits": 4, "group_size": 32,
                                                   "compute": "dequantized"})
    float_model, _ = load_model(float16_dir)
    weights = [(f"{name}.weight", rounded(exact_weights(m), mx.float16))
               for name, m in dequantized.named_modules()
               if isinstance(m, (DequantizedLinear, DequantizedEmbedding))]
    assert len(weights) == 15
    float_model.load_weights(weights, strict=False)
    assert np.array_equal(logits(dequantized), logits(float_model))


def log_probs(model, tokens):
    out = model(tokens).astype(mx.float32)
    return out - mx.logsumexp(out, axis=-1, keepdims=True)


def mean_kl(p, q) -> float:
    return (mx.exp(p) * (p - q)).sum(-1).mean().item()


@pytest.mark.slow
@pytest.mark.parametrize("bits", [2, 4])
def test_kl_native_dequantized_is_within_1pct_of_the_quantization_kl(float16_dir, bits):
    """KL(native ‖ dequantized) against KL(float ‖ dequantized), float16 (slow: mlx's native
    CPU kernel). At 8 bits the native kernel's own rounding is a larger share."""
    tokens = mx.array(np.random.default_rng(0).integers(0, 256, (2, 32)))
    quant = {"bits": bits, "group_size": 64}
    float_lp = log_probs(load_model(float16_dir)[0], tokens)
    native = log_probs(load_model(float16_dir, quant=quant)[0], tokens)
    dequantized = log_probs(load_model(float16_dir, quant={**quant, "compute": "dequantized"})[0],
                            tokens)
    assert mean_kl(native, dequantized) <= 0.01 * mean_kl(float_lp, dequantized)


def test_the_model_stays_quantized(tied_dir):
    model, _ = load_model(tied_dir, quant={"bits": 4, "group_size": 32})
    before = dict(tree_flatten(model.parameters()))
    assert use_dequantized(model) == 2 * 7 + 1  # 7 linear layers per block, the tied embedding
    after = dict(tree_flatten(model.parameters()))
    assert after.keys() == before.keys() and all(after[k] is before[k] for k in before)
    assert isinstance(model.model.embed_tokens, DequantizedEmbedding)
    assert all(isinstance(m, nn.QuantizedLinear) for _, m in model.named_modules()
               if isinstance(m, DequantizedLinear))
    assert before["model.layers.0.mlp.up_proj.weight"].dtype == mx.uint32
    assert use_native(model) == 15
    assert {type(m) for _, m in model.named_modules()} >= {nn.QuantizedLinear, nn.QuantizedEmbedding}


def test_auto_dequantizes_quality_tasks_on_cpu_only():
    assert mx.default_device().type == mx.DeviceType.cpu  # the test machines have no GPU
    for task in ("perplexity", "kl", "accuracy", "lm_eval"):
        assert resolve_compute("auto", task) == "dequantized"
    for task in ("bench", "generate", "load", "save"):
        assert resolve_compute("auto", task) == "native"
    assert resolve_compute("native", "kl") == "native"
    assert resolve_compute(None, "kl") == "native"
    assert resolve_compute("dequantized", "bench") == "dequantized"


def test_float_model_computes_natively(llama_dir):
    model, _ = load_model(llama_dir)
    assert apply_compute(model, "dequantized", "kl") == {"compute": "native", "dequantized_layers": 0}


def test_prequantized_directory_is_dequantized_for_quality_tasks(tmp_path):
    model_dir = make_model(tmp_path / "q4", quantize=4, group_size=32)
    for task, expected in (("perplexity", "dequantized"), ("generate", "native")):
        cfg = compose([f"model={model_dir}", f"task={task}"])
        model, report = prepare(cfg, validate(cfg))
        assert report.quantization["source"] == "pre-quantized"
        assert report.quantization["compute"] == expected
        assert report.quantization["dequantized_layers"] == (16 if expected == "dequantized" else 0)


def test_bad_compute_value_fails_validation(llama_dir):
    cfg = compose([f"model={llama_dir}", "quant.bits=4", "quant.compute=fast"])
    with pytest.raises(ConfigError, match=r"quant.compute='fast': expected one of native, "
                                          r"dequantized, auto"):
        validate(cfg)
    with pytest.raises(ConfigError, match="quant.compute=1"):
        load_model(llama_dir, quant={"bits": 4, "compute": 1})


@pytest.mark.slow
def test_cli_records_the_compute_used(tmp_path):
    """auto is dequantized for perplexity and native for bench; both give nearly the same
    perplexity (in the 64-token rows the embedded model was trained on; bfloat16 native
    kernels round more, see docs/quantization.md)."""
    proc = run_cli("-m", "quant.bits=4", "quant.compute=auto,native", "task=perplexity",
                   "task.num_samples=8", "task.sequence_length=64", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = run_cli("quant.bits=4", "task=bench", "task.prompt_tokens=16",
                   "task.generation_tokens=4", "task.trials=1", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = run_cli("quant.bits=4", "quant.compute=fast", cwd=tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "quant.compute='fast': expected one of native, dequantized, auto" in proc.stderr
    runs = [read_run(d) for d in run_dirs(tmp_path)]
    auto, native, bench, bad = sorted(runs, key=lambda r: (r["started"], r.get("job_num") or 0))
    assert [r["quantization"]["compute"] for r in (auto, native, bench)] == [
        "dequantized", "native", "native"]
    assert auto["quantization"]["dequantized_layers"] == 16
    assert bench["quantization"]["dequantized_layers"] == 0
    assert auto["metrics"]["perplexity"] == pytest.approx(native["metrics"]["perplexity"], rel=1e-2)
    assert bad["status"] == "failed" and "quant.compute='fast'" in bad["error"]
    assert json.loads((Path(bad["run_dir"]) / "run.json").read_text())["status"] == "failed"
