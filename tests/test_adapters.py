"""LoRA/DoRA adapters (``load.adapter_path``, ``load.fuse``) against ``mlx_lm.load(adapter_path=...)``.

The adapters are made with mlx-lm's tuner (tests/helpers/adapters.py) with
random non-zero weights, so that they change the logits.
"""

import json
import os
import shutil
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from conftest import EMBEDDED_TINY, make_model
from helpers.adapters import make_adapter

from mlxhydra.config.composition import compose
from mlxhydra.errors import ConfigError, WeightsError
from mlxhydra.job.pipeline import prepare
from mlxhydra.job.validation import validate
from mlxhydra.record.run_dir import RunDir
from mlxhydra.record.schema import RecordWriter
from mlxhydra.tasks import TaskInput, run_task

TOKENS = [[1, 5, 20, 21, 22, 11, 20, 30, 40, 41]]


def logits(model):
    return np.array(model(mx.array(TOKENS)).astype(mx.float32))


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A float llama (vocab 128) with the embedded tokenizer and eval data, and its 4-bit twin."""
    root = tmp_path_factory.mktemp("adapters")
    d = make_model(root / "base", vocab_size=128, seed=3)
    make_model(root / "base_q4", vocab_size=128, seed=3, quantize=4, group_size=64)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "eval.txt",
                 "accuracy.jsonl"):
        shutil.copy(EMBEDDED_TINY / name, d / name)
        shutil.copy(EMBEDDED_TINY / name, root / "base_q4" / name)
    return d


@pytest.fixture(scope="module")
def lora(base) -> Path:
    return make_adapter(base, base.parent / "lora", "lora")


def load_ours(model_dir: Path, *overrides: str):
    cfg = compose([f"model={model_dir}", *overrides])
    return prepare(cfg, validate(cfg))


@pytest.mark.parametrize("kind", ["lora", "dora"])
def test_adapter_logits_equal_mlx_lm_load(base, lora, kind):
    from mlx_lm import load as mlx_lm_load

    adapter = lora if kind == "lora" else make_adapter(base, base.parent / "dora", "dora")
    theirs, _ = mlx_lm_load(str(base), adapter_path=str(adapter))
    ours, report = load_ours(base, f"load.adapter_path={adapter}")
    assert np.array_equal(logits(ours), logits(theirs))
    plain, _ = load_ours(base)
    assert not np.allclose(logits(ours), logits(plain), atol=1e-3)  # the adapter does something
    assert report.adapter["config"]["fine_tune_type"] == kind and report.adapter["parameters"] > 0


def test_adapter_on_runtime_4bit_equals_mlx_lm_on_the_4bit_model(base, lora):
    from mlx_lm import load as mlx_lm_load

    theirs, _ = mlx_lm_load(str(base.parent / "base_q4"), adapter_path=str(lora))
    ours, report = load_ours(base, "quant=4bit", f"load.adapter_path={lora}")
    assert report.quantization["source"] == "runtime"
    assert np.array_equal(logits(ours), logits(theirs))


def test_fused_equals_unfused_and_saves_a_model_mlx_lm_loads(base, lora, tmp_path):
    from mlx_lm import load as mlx_lm_load

    unfused, _ = load_ours(base, f"load.adapter_path={lora}")
    cfg = compose([f"model={base}", f"load.adapter_path={lora}", "load.fuse=true", "task=save",
                   f"task.path={tmp_path / 'fused'}"])
    settings = validate(cfg)
    record = RecordWriter(tmp_path / "run.json")
    fused, report = prepare(cfg, settings, RunDir(tmp_path), record)
    np.testing.assert_allclose(logits(fused), logits(unfused), rtol=1e-4, atol=1e-4)
    metrics = run_task(TaskInput(task=settings.task, seed=0, load=settings.load, model=fused,
                                 model_config=report.model_config, model_dir=base, run_dir=tmp_path))
    saved, _ = mlx_lm_load(metrics["path"])
    assert np.array_equal(logits(saved), logits(fused))
    keys = mx.load(str(tmp_path / "fused" / "model.safetensors"))
    assert not any("lora" in k for k in keys)
    adapter = json.loads((tmp_path / "run.json").read_text())["adapter"]
    assert adapter["config"] == json.loads((lora / "adapter_config.json").read_text())
    assert adapter["fused"] is True and adapter["parameters"] == 0 and adapter["path"] == str(lora)
    import hashlib
    digest = hashlib.sha256((lora / "adapters.safetensors").read_bytes()).hexdigest()
    assert adapter["fingerprint"] == f"full:sha256:{digest}"


@pytest.mark.parametrize("quantized", ["pre-quantized", "runtime"])
def test_fusing_into_a_4bit_base_keeps_it_4bit_as_mlx_lm_fuse_does(base, lora, quantized):
    """mlx_lm.fuse's step on mlx_lm.load(base_q4, adapter_path): each adapted layer fused and
    quantized again with its own settings. Ours equals it bit for bit (measured: no tolerance
    needed), pre-quantized base or quantized while read."""
    import mlx.nn as nn
    from mlx.utils import tree_unflatten
    from mlx_lm import load as mlx_lm_load

    theirs, _ = mlx_lm_load(str(base.parent / "base_q4"), adapter_path=str(lora))
    unfused = logits(theirs)
    fused = [(n, m.fuse(dequantize=False)) for n, m in theirs.named_modules() if hasattr(m, "fuse")]
    theirs.update_modules(tree_unflatten(fused))
    model_dir, quant = (base.parent / "base_q4", ()) if quantized == "pre-quantized" else (base, ("quant=4bit",))
    ours, report = load_ours(model_dir, *quant, f"load.adapter_path={lora}", "load.fuse=true")
    assert report.adapter["fused"] is True and report.adapter["parameters"] == 0
    adapted = {n for n, _ in fused}  # the 7 linear layers of each of the 2 blocks
    assert len(adapted) == 14
    layers = dict(ours.named_modules())
    for name in adapted:
        assert type(layers[name]) is nn.QuantizedLinear, (name, type(layers[name]))
        assert (layers[name].bits, layers[name].group_size) == (4, 64)
    assert np.array_equal(logits(ours), logits(theirs))
    assert not np.allclose(logits(ours), unfused, atol=1e-3)  # the fused weights were quantized again


def test_kl_of_an_adapter_is_against_the_base_model(base, lora, tmp_path):
    common = ("task=kl", "task.num_samples=2", "task.sequence_length=32",
              f"task.cache_dir={tmp_path / 'kl'}")
    out = {}
    for name, extra in (("base", ()), ("lora", (f"load.adapter_path={lora}",))):
        cfg = compose([f"model={base}", *common, *extra])
        settings = validate(cfg)
        model, report = prepare(cfg, settings)
        out[name] = run_task(TaskInput(task=settings.task, seed=0, load=settings.load, model=model,
                                       model_config=report.model_config, model_dir=base,
                                       run_dir=tmp_path))
    assert out["base"]["kl_mean"] == 0.0 and out["lora"]["kl_mean"] > 0.0
    assert out["lora"]["reference_cached"] is True  # the same reference: the base model


def test_bad_adapter_settings_are_refused_before_loading(base, lora, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "adapter_config.json").write_text("{not json")
    cfg = compose([f"model={base}", f"load.adapter_path={broken}", "task=save"])
    with pytest.raises(ConfigError) as e:
        validate(cfg)
    assert (f"load.adapter_path={broken}: {broken / 'adapter_config.json'}: invalid JSON at line 1 "
            "column 2: Expecting property name enclosed in double quotes") in str(e.value)
    assert "task=save with load.adapter_path needs load.fuse=true" in str(e.value)
    (broken / "adapter_config.json").unlink()
    os.mkfifo(broken / "adapter_config.json")  # never opened: reading it would block for ever
    with pytest.raises(ConfigError) as e:
        validate(compose([f"model={base}", f"load.adapter_path={broken}"]))
    assert str(e.value).endswith(
        f"load.adapter_path={broken}: {broken / 'adapter_config.json'} is a FIFO (named pipe), not a regular file "
        "(expected a JSON file)")
    with pytest.raises(ConfigError, match="load.fuse=true needs load.adapter_path"):
        validate(compose([f"model={base}", "load.fuse=true"]))
    other = make_model(tmp_path / "wide", vocab_size=128, hidden_size=96, num_attention_heads=4,
                       num_key_value_heads=2)
    with pytest.raises(WeightsError, match=f"load.adapter_path={lora}: the adapters do not fit"):
        load_ours(other, f"load.adapter_path={lora}")



DELETE = object()  # a key left out of adapter_config.json


def with_config(lora: Path, directory: Path, **changes) -> Path:
    """A copy of ``lora`` whose adapter_config.json has ``changes`` (``a__b``: key b of a)."""
    shutil.copytree(lora, directory)
    config = json.loads((lora / "adapter_config.json").read_text())
    for key, value in changes.items():
        parent, _, leaf = key.rpartition("__")
        node = config[parent] if parent else config
        if value is DELETE:
            del node[leaf]
        else:
            node[leaf] = value
    (directory / "adapter_config.json").write_text(json.dumps(config))
    return directory


def adapter_validation_problems(base: Path, adapter: Path) -> list:
    with pytest.raises(ConfigError) as e:
        validate(compose([f"model={base}", f"load.adapter_path={adapter}"]))
    return e.value.problems


@pytest.mark.parametrize("changes, says", [
    ({"num_layers": "2"}, "has num_layers='2', expected an integer from -1 (all layers) to 2147483647"),
    ({"num_layers": True}, "has num_layers=True, expected an integer from -1 (all layers) to 2147483647"),
    ({"num_layers": -2}, "has num_layers=-2, expected an integer from -1 (all layers) to 2147483647"),
    ({"lora_parameters": None}, "has lora_parameters=None, expected a mapping with rank, scale and dropout"),
    ({"lora_parameters__rank": 2**40},
     "has lora_parameters.rank=1099511627776, expected an integer from 1 to 2147483647"),
    ({"lora_parameters__rank": 0}, "has lora_parameters.rank=0, expected an integer from 1 to 2147483647"),
    ({"lora_parameters__scale": "10"}, "has lora_parameters.scale='10', expected a finite number"),
    ({"lora_parameters__dropout": 1.0},
     "has lora_parameters.dropout=1.0, expected a number from 0 to below 1"),
    ({"lora_parameters__keys": "self_attn.q_proj"}, "has lora_parameters.keys='self_attn.q_proj', "
                                                    "expected a list of module paths (self_attn.q_proj...) or null"),
    ({"lora_parameters__scale": DELETE}, "lacks lora_parameters.scale (written by mlx_lm.lora)"),
    ({"fine_tune_type": "qlora"}, "has fine_tune_type='qlora', expected one of lora, dora, full"),
    ({"use_dora": "yes"}, "has use_dora='yes', expected true or false"),
    ({"use_dora": True}, "has use_dora=true with fine_tune_type='lora': mlx-lm reads only "
                         "fine_tune_type (set fine_tune_type to dora)"),
])
def test_adapter_config_values_of_the_wrong_type_or_range_are_named(base, lora, tmp_path, changes, says):
    adapter = with_config(lora, tmp_path / "bad", **changes)
    assert adapter_validation_problems(base, adapter) == [
        f"load.adapter_path={adapter}: adapter_config.json {says}"]


def test_an_empty_adapter_config_lacks_what_mlx_lm_reads(base, lora, tmp_path):
    adapter = tmp_path / "empty"
    shutil.copytree(lora, adapter)
    (adapter / "adapter_config.json").write_text("{}")  # fine_tune_type defaults to lora
    assert adapter_validation_problems(base, adapter) == [
        f"load.adapter_path={adapter}: adapter_config.json lacks num_layers (written by mlx_lm.lora)",
        f"load.adapter_path={adapter}: adapter_config.json lacks lora_parameters (written by mlx_lm.lora)"]


def test_unusual_but_valid_adapter_configs_load_as_mlx_lm_loads_them(base, tmp_path):
    """Every layer (num_layers=-1), rank 1, dropout just below 1, scale 0 and a full fine-tune
    whose lora_parameters is null, as mlx_lm.lora writes it."""
    from mlx_lm import load as mlx_lm_load

    adapter = make_adapter(base, tmp_path / "all", "lora", num_layers=-1, rank=1)
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["lora_parameters"].update(dropout=0.999, scale=0)
    config["use_dora"] = False
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    theirs, _ = mlx_lm_load(str(base), adapter_path=str(adapter))
    ours, report = load_ours(base, f"load.adapter_path={adapter}")
    assert np.array_equal(logits(ours), logits(theirs)) and report.adapter["parameters"] > 0
    full = tmp_path / "full"
    full.mkdir()
    mx.save_safetensors(str(full / "adapters.safetensors"), {"model.norm.weight": mx.full((64,), 2.0)})
    (full / "adapter_config.json").write_text(json.dumps(
        {"fine_tune_type": "full", "num_layers": 2, "lora_parameters": None}))
    ours, _ = load_ours(base, f"load.adapter_path={full}")
    assert np.array_equal(np.array(ours.model.norm.weight), np.full((64,), 2.0, np.float32))


@pytest.mark.parametrize("dtype", [mx.int32, mx.uint8, mx.bool_])
def test_integer_or_boolean_adapter_data_is_refused_as_for_base_weights(base, lora, tmp_path, dtype):
    adapter = tmp_path / "ints"
    shutil.copytree(lora, adapter)
    weights = mx.load(str(lora / "adapters.safetensors"))
    names = sorted(weights)
    weights[names[0]] = weights[names[0]].astype(dtype)
    mx.save_safetensors(str(adapter / "adapters.safetensors"), weights)
    header = {mx.int32: "I32", mx.uint8: "U8", mx.bool_: "BOOL"}[dtype]
    assert adapter_validation_problems(base, adapter) == [
        f"load.adapter_path={adapter}: {adapter / 'adapters.safetensors'} holds integer or boolean "
        f"data, which no adapter parameter takes (they are floating point): 1 wrong dtype: "
        f"{names[0]} {header}"]
