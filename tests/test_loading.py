"""Python-API loading: mlxhydra.load_model / build_model against mlx_lm.utils.load_model.

Every model here is a tiny random one built with mlx-lm's own classes and saved
with mlx-lm's own save functions; each load is compared with mlx-lm's load of
the same directory: equal config and bit-identical logits.
"""

import gc
import importlib.util
import json
import shutil
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import pytest
from conftest import make_model
from mlx.utils import tree_flatten
from mlx_lm import utils as mu

import mlxhydra
from mlxhydra.errors import ConfigError, MissingWeightsError, RemoteCodeError, WeightsError
from mlxhydra.load.loader import build_model
from mlxhydra.load.model_config import load_config
from mlxhydra.load.settings import LoadSettings

TOKENS = mx.array([[1, 5, 9, 200, 3, 17, 42, 8, 0, 255, 11, 12]])


def same_as_mlx_lm(model_dir: Path, model_config=None, **kwargs):
    """Load with both; assert equal configs and identical logits; return ours."""
    ours, our_config = mlxhydra.load_model(model_dir, model_config, **kwargs)
    ref, ref_config = mu.load_model(Path(model_dir), model_config=model_config, **kwargs)
    assert our_config == ref_config
    assert type(ours).__qualname__ == type(ref).__qualname__
    assert mx.array_equal(ours(TOKENS), ref(TOKENS)).item()
    return ours, our_config


def write_config(model_dir: Path, config: dict) -> None:
    (model_dir / "config.json").write_text(json.dumps(config))


def read_config(model_dir: Path) -> dict:
    return json.loads((model_dir / "config.json").read_text())


def copy_model(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# --- architectures and saved formats -----------------------------------------

MODELS = {
    "llama": dict(model_type="llama"),
    "qwen3": dict(model_type="qwen3"),
    "gemma3_text": dict(model_type="gemma3_text"),
    "qwen3_moe": dict(model_type="qwen3_moe"),  # float32: MoE runs only in float32 on CPU
    "mixtral": dict(model_type="mixtral", vocab_size=256, hidden_size=64, intermediate_size=96,
                    num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                    num_local_experts=3, num_experts_per_tok=2),
    "gemma2": dict(model_type="gemma2", vocab_size=256, hidden_size=64, intermediate_size=128,
                   num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                   rms_norm_eps=1e-6, query_pre_attn_scalar=16.0),
    "affine4": dict(model_type="llama", quantize=4),
    "affine8_gs32": dict(model_type="llama", quantize=8, group_size=32),
    "mxfp4": dict(model_type="llama", quantize=4, mode="mxfp4"),
    "nvfp4": dict(model_type="llama", quantize=4, mode="nvfp4"),
    "mxfp8": dict(model_type="llama", quantize=8, mode="mxfp8"),
    "moe_mxfp4": dict(model_type="qwen3_moe", quantize=4, mode="mxfp4"),
    "sharded": dict(model_type="llama", shards=3),
    "float16": dict(model_type="llama", dtype="float16"),
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_loads_like_mlx_lm(tmp_path, name):
    model_dir = make_model(tmp_path / name, **MODELS[name])
    model, config = same_as_mlx_lm(model_dir)
    if "quantize" in MODELS[name]:
        assert config["quantization"]["bits"] == MODELS[name]["quantize"]
        assert any(hasattr(m, "scales") for _, m in model.named_modules())
    if name == "sharded":
        assert len(list(model_dir.glob("model-0000?-of-00003.safetensors"))) == 3
    if name == "float16":
        assert {v.dtype for _, v in tree_flatten(model.parameters())} == {mx.float16}


def test_build_model_reports_every_shard(tmp_path):
    model_dir = make_model(tmp_path / "m", shards=2)
    _, _, report = build_model(model_dir, load_config(model_dir))
    assert [Path(f).name for f in report.weight_files] == [
        "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    assert report.quantization["source"] == "none"


def test_model_config_is_merged_shallowly_like_mlx_lm(llama_dir):
    plain, _ = mlxhydra.load_model(llama_dir)
    override = {"rope_theta": 500.0, "rope_scaling": {"type": "linear", "factor": 2.0}}
    model, config = same_as_mlx_lm(llama_dir, override)
    assert config["rope_theta"] == 500.0 and config["rope_scaling"]["factor"] == 2.0
    assert config["hidden_size"] == 64  # the rest of config.json is kept
    assert not mx.array_equal(plain(TOKENS), model(TOKENS)).item()


# --- legacy and per-layer quantization entries -------------------------------

def test_legacy_quantization_config_mxfp4(tmp_path):
    model_dir = make_model(tmp_path / "m", quantize=4, mode="mxfp4")
    config = read_config(model_dir)
    del config["quantization"]
    config["quantization_config"] = {"quant_method": "mxfp4"}
    write_config(model_dir, config)
    _, loaded = same_as_mlx_lm(model_dir)
    assert loaded["quantization"] == {"group_size": 32, "bits": 4, "mode": "mxfp4"}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Pre-quantized llamas by mode, saved by mlx-lm."""
    root = tmp_path_factory.mktemp("saved")
    return {
        "nvfp4": make_model(root / "nvfp4", quantize=4, mode="nvfp4"),
        "mxfp8": make_model(root / "mxfp8", quantize=8, mode="mxfp8"),
        "mxfp4": make_model(root / "mxfp4", quantize=4, mode="mxfp4"),
    }


def _legacy_dir(saved, tmp_path, mode, quantization_config=None, files=None, **extra):
    """A copy of a saved model whose config.json has no ``quantization`` key."""
    model_dir = copy_model(saved[mode], tmp_path / "legacy")
    config = read_config(model_dir)
    del config["quantization"], config["quantization_config"]
    if quantization_config is not None:
        config["quantization_config"] = quantization_config
    write_config(model_dir, {**config, **extra})
    for name, text in (files or {}).items():
        (model_dir / name).write_text(text)
    return model_dir


LEGACY = {
    "modelopt": dict(mode="nvfp4", quantization_config={"quant_method": "modelopt", "quant_algo": "NVFP4"}),
    "hf_quant_config.json": dict(mode="nvfp4", files={"hf_quant_config.json": json.dumps(
        {"quant_method": "modelopt", "quantization": {"quant_algo": "NVFP4", "group_size": 16}})}),
    "mxfp8": dict(mode="mxfp8", quantization_config={"quant_method": "mxfp8"}),
    "fp8_ue8m0": dict(mode="mxfp8", quantization_config={
        "quant_method": "fp8", "scale_fmt": "ue8m0", "weight_block_size": [32, 32]}),
    "compressed-tensors": dict(mode="mxfp4", quantization_config={
        "quant_method": "compressed-tensors", "format": "mxfp4-pack-quantized"}),
    "text_config": dict(mode="mxfp4", text_config={"quantization_config": {"quant_method": "mxfp4"}}),
}


@pytest.mark.parametrize("form", sorted(LEGACY))
def test_other_legacy_quantization_forms(saved, tmp_path, form):
    model, config = same_as_mlx_lm(_legacy_dir(saved, tmp_path, **LEGACY[form]))
    mode = LEGACY[form]["mode"]
    assert config["quantization"]["mode"] == mode
    assert model.model.layers[0].mlp.up_proj.mode == mode


def test_quantize_activations_loads_like_mlx_lm(saved, tmp_path):
    # QQLinear only gets its packed shapes in eval mode: the weight check must see them.
    model_dir = copy_model(saved["nvfp4"], tmp_path / "m")
    write_config(model_dir, {**read_config(model_dir), "quantize_activations": True})
    model, config = mlxhydra.load_model(model_dir)
    ref, ref_config = mu.load_model(model_dir)
    assert config == ref_config
    assert type(model.model.layers[0].mlp.up_proj).__name__ == "QQLinear"
    ours, theirs = dict(tree_flatten(model.parameters())), dict(tree_flatten(ref.parameters()))
    assert ours.keys() == theirs.keys()
    assert all(mx.array_equal(ours[k], theirs[k]).item() for k in ours)  # QQ matmul has no CPU kernel


BAD_SAVED = [
    (dict(mode="mxfp4", quantization=4), "model.quantization=4: expected a mapping with integer group_size and bits"),
    (dict(mode="mxfp4", quantization={"mode": "mxfp4"}),
     "model.quantization={'group_size': None, 'bits': None}: expected a mapping"),
    (dict(mode="mxfp4", quantization_config="mxfp4"), "model.quantization_config='mxfp4': expected a mapping with a quant_method"),
    (dict(mode="mxfp4", quantization_config={"quant_method": "compressed-tensors", "format": "float-quantized"}),
     "model.quantization_config: unsupported compressed-tensors format 'float-quantized'"),
    (dict(mode="mxfp4", quantization_config={"quant_method": "awq", "bits": 3}),
     "model.quantization_config (awq): Only bits=3 is supported"),
    (dict(mode="nvfp4", files={"hf_quant_config.json": "{not json"}), "hf_quant_config.json: not readable as JSON"),
]


@pytest.mark.parametrize("edit,text", BAD_SAVED)
def test_bad_saved_quantization_is_a_config_error(saved, tmp_path, edit, text):
    with pytest.raises(ConfigError) as e:
        mlxhydra.load_model(_legacy_dir(saved, tmp_path, **edit))
    assert text in str(e.value)


@pytest.fixture(scope="module")
def per_layer_dir(tmp_path_factory, llama_dir):
    """llama at 4 bits with one layer at 8 bits, saved by mlx-lm with a per-layer entry."""
    model, config = mu.load_model(llama_dir)

    def predicate(path, _):
        if path == "model.layers.0.mlp.down_proj":
            return {"group_size": 32, "bits": 8, "mode": "affine"}
        return True

    model, config = mu.quantize_model(model, config, 64, 4, quant_predicate=predicate)
    out = tmp_path_factory.mktemp("per_layer") / "m"
    out.mkdir()
    mu.save_model(out, model)
    mu.save_config(config, out / "config.json")
    return out


def test_per_layer_quantization_entries(per_layer_dir):
    assert read_config(per_layer_dir)["quantization"]["model.layers.0.mlp.down_proj"]["bits"] == 8
    model, _ = same_as_mlx_lm(per_layer_dir)
    layers = dict(model.named_modules())
    assert (layers["model.layers.0.mlp.down_proj"].bits, layers["model.layers.0.mlp.down_proj"].group_size) == (8, 32)
    assert (layers["model.layers.1.mlp.down_proj"].bits, layers["model.layers.1.mlp.down_proj"].group_size) == (4, 64)


def test_per_layer_settings_inferred_without_entry(tmp_path, per_layer_dir):
    # Without the per-layer entry the 8-bit layer's settings come from its shapes.
    model_dir = copy_model(per_layer_dir, tmp_path / "m")
    config = read_config(model_dir)
    config["quantization"] = {"group_size": 64, "bits": 4}
    config["quantization_config"] = config["quantization"]
    write_config(model_dir, config)
    model, _ = same_as_mlx_lm(model_dir)
    assert dict(model.named_modules())["model.layers.0.mlp.down_proj"].bits == 8


@pytest.fixture(scope="module")
def q4_saved(tmp_path_factory):
    """A llama saved by mlx-lm at 4 bits, group size 64 (every layer)."""
    return make_model(tmp_path_factory.mktemp("q4_saved") / "m", quantize=4)


# A per-layer entry that disagrees with the saved layer (4 bits, group 64):
# entry -> (the shapes in mlx-lm's refusal, the one line of mlxhydra's error).
DOWN = "model.layers.0.mlp.down_proj"
DISAGREEING = {
    "8_bits": ({"group_size": 64, "bits": 8},
               "Expected shape (64, 32) but received shape (64, 16) for parameter "
               f"{DOWN}.weight",
               f"1 wrong shape: {DOWN}.weight (64, 16) vs model (64, 32)"),
    "group_32": ({"group_size": 32, "bits": 4},
                 f"Expected shape (64, 4) but received shape (64, 2) for parameter {DOWN}.",
                 f"2 wrong shape: {DOWN}.biases (64, 2) vs model (64, 4), "
                 f"{DOWN}.scales (64, 2) vs model (64, 4)"),
    "float": (False, "Received 2 parameters not in model",
              f"2 unexpected: {DOWN}.biases, {DOWN}.scales; "
              f"1 wrong shape: {DOWN}.weight (64, 16) vs model (64, 128)"),
}


@pytest.mark.parametrize("case", sorted(DISAGREEING))
def test_per_layer_entry_that_disagrees_with_the_weights_is_refused(q4_saved, tmp_path, case):
    entry, theirs, ours = DISAGREEING[case]
    model_dir = copy_model(q4_saved, tmp_path / "m")
    config = read_config(model_dir)
    config["quantization"][DOWN] = entry
    config["quantization_config"] = config["quantization"]
    write_config(model_dir, config)
    with pytest.raises(ValueError) as refused:  # mlx-lm refuses it...
        mu.load_model(model_dir)
    assert theirs in str(refused.value)
    with pytest.raises(WeightsError) as e:  # ...and so does mlxhydra, in one line
        mlxhydra.load_model(model_dir)
    assert str(e.value) == (f"weights do not fit the model ({model_dir}): {ours}; "
                            "read model.safetensors")


# --- strict loading and broken weight files ----------------------------------

def _edit_weights(src: Path, dst: Path, edit) -> Path:
    model_dir = copy_model(src, dst)
    weights = mx.load(str(model_dir / "model.safetensors"))
    edit(weights)
    mx.save_safetensors(str(model_dir / "model.safetensors"), weights)
    return model_dir


def test_strict_reports_every_mismatch_in_one_error(tmp_path, llama_dir):
    def edit(w):
        for k in [k for k in w if k.startswith("model.layers.1.")]:
            del w[k]  # 9 missing: more than the 5 shown
        w["model.extra.weight"] = mx.zeros((2,))
        w["model.norm.weight"] = mx.zeros((3,))

    model_dir = _edit_weights(llama_dir, tmp_path / "m", edit)
    with pytest.raises(WeightsError) as e:
        mlxhydra.load_model(model_dir)
    msg = str(e.value)
    assert str(model_dir) in msg
    assert "9 missing: model.layers.1.input_layernorm.weight" in msg and "(+4 more)" in msg
    assert "1 unexpected: model.extra.weight" in msg
    assert "1 wrong shape: model.norm.weight (3,) vs model (64,)" in msg
    assert "read model.safetensors" in msg
    assert "\n" not in msg


def test_not_strict_loads_anyway(tmp_path, llama_dir):
    def edit(w):
        del w["model.layers.1.mlp.up_proj.weight"]
        w["model.extra.weight"] = mx.zeros((2,))

    model_dir = _edit_weights(llama_dir, tmp_path / "m", edit)
    model, _, report = build_model(model_dir, load_config(model_dir),
                                   LoadSettings.from_groups({"strict": False}))
    assert report.weight_mismatches[:2] == [
        "1 missing: model.layers.1.mlp.up_proj.weight", "1 unexpected: model.extra.weight"]
    kept = mx.load(str(model_dir / "model.safetensors"))["model.layers.0.mlp.up_proj.weight"]
    assert mx.array_equal(model.model.layers[0].mlp.up_proj.weight, kept).item()
    assert model(TOKENS).shape == (1, TOKENS.shape[1], 256)


def test_not_strict_wrong_shape_is_reported(tmp_path, llama_dir):
    model_dir = _edit_weights(llama_dir, tmp_path / "m", lambda w: w.update({"model.norm.weight": mx.ones((3,))}))
    model, _, report = build_model(model_dir, load_config(model_dir),
                                   LoadSettings.from_groups({"strict": False}))
    assert report.weight_mismatches == [
        "1 wrong shape: model.norm.weight (3,) vs model (64,)", "read model.safetensors"]
    assert model.model.norm.weight.shape == (3,)  # loaded as given, as mlx-lm does


def test_no_weight_files(tmp_path, llama_dir):
    model_dir = tmp_path / "m"
    model_dir.mkdir()
    shutil.copy(llama_dir / "config.json", model_dir)
    with pytest.raises(MissingWeightsError, match=f"{model_dir}: no model\\*.safetensors") as e:
        mlxhydra.load_model(model_dir)
    assert isinstance(e.value, FileNotFoundError)


def test_truncated_weights_name_the_file(tmp_path, llama_dir):
    model_dir = copy_model(llama_dir, tmp_path / "m")
    file = model_dir / "model.safetensors"
    data = file.read_bytes()
    file.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match=f"{file}: truncated"):
        mlxhydra.load_model(model_dir)


def test_garbage_weights_name_the_file(tmp_path, llama_dir):
    model_dir = copy_model(llama_dir, tmp_path / "m")
    file = model_dir / "model.safetensors"
    file.write_bytes(b"\xff" * 64)
    with pytest.raises(WeightsError, match=f"{file}: corrupt safetensors header"):
        mlxhydra.load_model(model_dir)


# --- dtype, lazy --------------------------------------------------------------

def test_build_model_casts_to_float16(llama_dir):
    model, _, _ = build_model(llama_dir, load_config(llama_dir),
                              LoadSettings.from_groups({"dtype": "float16"}))
    assert {v.dtype for _, v in tree_flatten(model.parameters())} == {mx.float16}
    ref, _ = mu.load_model(llama_dir)
    ref.set_dtype(mx.float16)
    assert mx.array_equal(model(TOKENS), ref(TOKENS)).item()


def test_build_model_refuses_unknown_dtype(llama_dir):
    with pytest.raises(ConfigError, match="load.dtype='float8': expected one of float16, bfloat16, float32"):
        build_model(llama_dir, load_config(llama_dir),
                    LoadSettings.from_groups({"dtype": "float8"}))


def test_load_settings_fields_are_the_shipped_load_keys():
    """LoadSettings holds exactly conf/load/default.yaml's keys (plus the quant node): no drift."""
    import dataclasses

    from mlxhydra.config.declared import shipped_defaults

    own = [f.name for f in dataclasses.fields(LoadSettings)]
    assert set(own) - {"quant", "compute"} == set(shipped_defaults("load", "default"))
    assert own[-2:] == ["quant", "compute"]


def test_load_settings_take_their_defaults_from_the_shipped_yaml(monkeypatch):
    from mlxhydra.config import declared

    defaults = LoadSettings.from_groups()
    assert (defaults.strict, defaults.lazy, defaults.dtype, defaults.fingerprint, defaults.shard,
            defaults.quant, defaults.compute) == (True, False, None, "fast", "auto", None, None)
    # The YAML is the one place: a different shipped default changes the settings.
    shipped = declared.shipped_options("load")
    monkeypatch.setitem(shipped, "default", {**shipped["default"], "fingerprint": "full"})
    assert LoadSettings.from_groups().fingerprint == "full"
    assert LoadSettings.from_groups({"fingerprint": "fast"}).fingerprint == "fast"


def test_load_settings_gather_every_problem_of_both_groups():
    with pytest.raises(ConfigError) as raised:
        LoadSettings.from_groups({"dtype": "float8", "strict": "no", "shard": "rows", "colour": 1},
                                 {"bits": 7, "compute": "fast"})
    assert raised.value.problems == [
        "load.colour: unknown key for load; valid keys: adapter_path, args_class, dtype, "
        "fingerprint, fuse, lazy, model_class, shard, strict, trust_remote_code",
        "load.strict='no': expected true or false",
        "load.dtype='float8': expected one of float16, bfloat16, float32 or null",
        "load.shard='rows': expected one of auto, none, tensor, pipeline",
        "quant.compute='fast': expected one of native, dequantized, auto",
        "quant.bits=7: expected one of 2, 3, 4, 5, 6, 8",
    ]


def test_load_settings_are_frozen_and_replaced_by_copy():
    import dataclasses

    settings = LoadSettings.from_groups({"strict": False}, {"bits": 4})
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.strict = True
    draft = settings.replace(quant=None, shard="none")
    assert (settings.quant.describe()["default"]["bits"], settings.shard, draft.quant, draft.shard, draft.strict) == (
        4, "auto", None, "none", False)


def test_lazy_loading(llama_dir):
    same_as_mlx_lm(llama_dir, lazy=True)


def test_lazy_loading_reads_nothing_until_used(llama_dir):
    size = sum(v.nbytes for v in mx.load(str(llama_dir / "model.safetensors")).values())
    held = []
    for lazy in (True, False):
        gc.collect()
        before = mx.get_active_memory()
        held.append(mlxhydra.load_model(llama_dir, lazy=lazy)[0])
        held.append(mx.get_active_memory() - before)
    assert held[1] == 0 and held[3] >= size


# --- remote code and user classes ---------------------------------------------

CUSTOM_MODULE = """
from mlx_lm.models.llama import Model as _Llama, ModelArgs


class Model(_Llama):
    custom = "yes"
"""


@pytest.fixture
def custom_dir(tmp_path, llama_dir):
    model_dir = copy_model(llama_dir, tmp_path / "custom")
    (model_dir / "custom_arch.py").write_text(CUSTOM_MODULE)
    write_config(model_dir, {**read_config(model_dir), "model_file": "custom_arch.py"})
    return model_dir


def test_model_file_needs_trust_remote_code(custom_dir):
    with pytest.raises(RemoteCodeError) as e:
        mlxhydra.load_model(custom_dir)
    assert str(custom_dir / "custom_arch.py") in str(e.value)
    assert "trust_remote_code" in str(e.value)


def test_model_file_with_trust_remote_code(custom_dir):
    model, _ = same_as_mlx_lm(custom_dir, trust_remote_code=True)
    assert model.custom == "yes"


def test_user_classes_by_import_path(tmp_path, monkeypatch, llama_dir):
    (tmp_path / "my_models.py").write_text(CUSTOM_MODULE)
    (tmp_path / "my_bare.py").write_text(
        "from mlx_lm.models import llama\n\n\nclass Bare(llama.Model):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    ref, _ = mu.load_model(llama_dir)
    for path in ("my_models:Model", "my_models.Model"):
        model, _, _ = build_model(llama_dir, load_config(llama_dir),
                                  LoadSettings.from_groups({"model_class": path}))
        assert type(model).__module__ == "my_models" and model.custom == "yes"
        assert mx.array_equal(model(TOKENS), ref(TOKENS)).item()
    # A module without ModelArgs needs args_class.
    with pytest.raises(ConfigError, match="load.model_class=my_bare:Bare: its module has no ModelArgs"):
        build_model(llama_dir, load_config(llama_dir),
                    LoadSettings.from_groups({"model_class": "my_bare:Bare"}))
    model, _, _ = build_model(llama_dir, load_config(llama_dir),
                              LoadSettings.from_groups({"model_class": "my_bare:Bare", "args_class": "mlx_lm.models.llama:ModelArgs"}))
    assert type(model).__name__ == "Bare"
    with pytest.raises(ConfigError, match="cannot import 'my_models:Nope'"):
        build_model(llama_dir, load_config(llama_dir),
                    LoadSettings.from_groups({"model_class": "my_models:Nope"}))


# --- load_config, model_type --------------------------------------------------

def test_load_config_equals_mlx_lm(tmp_path, llama_dir):
    model_dir = copy_model(llama_dir, tmp_path / "m")
    (model_dir / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 7]}))
    config = load_config(model_dir)
    assert config == mu.load_config(model_dir)
    assert config["eos_token_id"] == [2, 7]


def test_load_config_missing_path(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        mlxhydra.load_config(missing)
    with pytest.raises(FileNotFoundError, match=str(missing)):
        mlxhydra.load_model(missing)


def test_unknown_model_type_lists_closest(tmp_path, llama_dir):
    model_dir = copy_model(llama_dir, tmp_path / "m")
    write_config(model_dir, {**read_config(model_dir), "model_type": "lama"})
    with pytest.raises(ConfigError, match=r"model.model_type='lama' is not an architecture mlx-lm supports; closest: .*\bllama\b"):
        mlxhydra.load_model(model_dir)


def test_missing_model_type(tmp_path, llama_dir):
    model_dir = copy_model(llama_dir, tmp_path / "m")
    config = read_config(model_dir)
    del config["model_type"]
    write_config(model_dir, config)
    with pytest.raises(ConfigError, match="model.model_type is missing: expected the name of an mlx-lm architecture"):
        mlxhydra.load_model(model_dir)


def test_strict_error_names_every_shard(tmp_path):
    model_dir = make_model(tmp_path / "m", shards=2)
    config = read_config(model_dir)
    write_config(model_dir, {**config, "intermediate_size": 64})
    with pytest.raises(WeightsError) as e:
        mlxhydra.load_model(model_dir)
    msg = str(e.value)
    assert "6 wrong shape: model.layers.0.mlp.down_proj.weight (64, 128) vs model (64, 64)" in msg
    assert "(+1 more)" in msg
    assert "read model-00001-of-00002.safetensors, model-00002-of-00002.safetensors" in msg


def test_model_file_problems_with_trust(tmp_path, llama_dir):
    model_dir = copy_model(llama_dir, tmp_path / "m")
    write_config(model_dir, {**read_config(model_dir), "model_file": "gone.py"})
    with pytest.raises(ConfigError, match=f"model_file {model_dir / 'gone.py'} does not exist"):
        mlxhydra.load_model(model_dir, trust_remote_code=True)
    (model_dir / "gone.py").write_text("from mlx_lm.models.llama import ModelArgs\n")
    with pytest.raises(ConfigError, match="gone.py defines no Model"):
        mlxhydra.load_model(model_dir, trust_remote_code=True)


def test_load_config_without_config_json(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"{tmp_path} has no config.json"):
        mlxhydra.load_config(tmp_path)


def test_module_that_exits_on_import_is_a_config_error(tmp_path, llama_dir):
    # mlx-lm's olmo module calls sys.exit(1) when ai2-olmo is not installed.
    if importlib.util.find_spec("hf_olmo") is not None:
        pytest.skip("ai2-olmo is installed")
    model_dir = copy_model(llama_dir, tmp_path / "m")
    write_config(model_dir, {**read_config(model_dir), "model_type": "olmo"})
    with pytest.raises(ConfigError, match="model.model_type='olmo': mlx-lm cannot import its module: "
                                         "To run olmo install ai2-olmo"):
        mlxhydra.load_model(model_dir)


def test_supported_model_types_are_the_architectures():
    from mlxhydra.load.architecture import get_classes, supported_model_types

    names = supported_model_types()
    assert {"llama", "mistral", "recurrent_gemma", "solar_open", "qwen3_moe"} <= set(names)
    assert not {"base", "cache", "switch_layers", "rope_utils", "mla"} & set(names)
    for name in names:  # every name offered in the "closest" hint resolves
        if name != "olmo":
            model_cls, args_cls = get_classes({"model_type": name})
            assert issubclass(model_cls, nn.Module) and hasattr(args_cls, "from_dict")


def test_missing_shard_named_by_the_index(tmp_path):
    model_dir = make_model(tmp_path / "m", shards=3)
    (model_dir / "model-00002-of-00003.safetensors").unlink()
    with pytest.raises(WeightsError) as e:
        mlxhydra.load_model(model_dir)
    assert str(e.value).endswith(
        "; read model-00001-of-00003.safetensors, model-00003-of-00003.safetensors; "
        "model.safetensors.index.json lists 1 missing file(s): model-00002-of-00003.safetensors "
        "(an incomplete copy or download?)")


def test_stale_index_does_not_stop_a_load(tmp_path, llama_dir):
    model_dir = copy_model(llama_dir, tmp_path / "m")
    index = json.loads((model_dir / "model.safetensors.index.json").read_text())
    index["weight_map"] = {k: "model-00001-of-00009.safetensors" for k in index["weight_map"]}
    (model_dir / "model.safetensors.index.json").write_text(json.dumps(index))
    same_as_mlx_lm(model_dir)


@pytest.mark.parametrize("key,value,text", [
    ("vocab_size", 0, "AssertionError at llama.py:"),
    ("vocab_size", -1, "assert self.vocab_size > 0 (suspect values: vocab_size=-1)"),
    ("hidden_size", 0, "ZeroDivisionError: division by zero at embedding.py"),
    ("rope_scaling", {"type": "yarn"}, "KeyError: 'factor' at rope_utils.py"),
])
def test_values_that_cannot_build_the_model(tmp_path, llama_dir, key, value, text):
    model_dir = copy_model(llama_dir, tmp_path / "m")
    write_config(model_dir, {**read_config(model_dir), key: value})
    with pytest.raises(ConfigError) as e:
        mlxhydra.load_model(model_dir)
    assert str(e.value).startswith("mlx_lm.models.llama.Model cannot be built from the model config: ")
    assert text in str(e.value)


@pytest.mark.slow
def test_random_models_command_line(tmp_path):
    """tests/helpers/random_models.py as bench/bench_load.py runs it: a model mlx-lm loads."""
    import subprocess
    import sys

    from conftest import ROOT

    out = tmp_path / "m"
    result = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "helpers" / "random_models.py"), str(out),
         "--shards", "2", "--quantize", "4", "--set", "rope_theta=500.0", "num_hidden_layers=1"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    config = read_config(out)
    assert (config["rope_theta"], config["num_hidden_layers"]) == (500.0, 1)
    assert config["quantization"] == {"group_size": 64, "bits": 4, "mode": "affine"}
    assert sorted(p.name for p in out.glob("*.safetensors")) == [
        "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    same_as_mlx_lm(out)
