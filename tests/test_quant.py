"""Runtime quantization: mlxhydra.load_model(dir, quant=...) against mlx-lm's quantize_model.

The reference is always mlx-lm itself: ``mlx_lm.utils.load_model`` followed by
``mlx_lm.utils.quantize_model`` (with ``mixed_quant_predicate_builder`` for the
recipes). Logits must be bit-identical, and the config we return must reload
through mlx-lm to the same model.
"""

import copy
import re
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import pytest
from conftest import make_model
from hypothesis import given, settings
from hypothesis import strategies as st
from mlx_lm import utils as mu
from mlx_lm.convert import mixed_quant_predicate_builder

import mlxhydra
from mlxhydra.errors import ConfigError, WeightsError
from mlxhydra.load.loader import build_model
from mlxhydra.load.model_config import load_config
from mlxhydra.load.quant_spec import AFFINE_BITS, AFFINE_GROUP_SIZES, parse_quant
from mlxhydra.load.settings import LoadSettings

TOKENS = mx.array([[1, 5, 9, 200, 3, 17, 42, 8, 0, 255, 11, 12]])


@pytest.fixture(scope="module")
def llama128(tmp_path_factory):
    """A llama whose layer inputs (128, 256) divide by every affine group size."""
    return make_model(tmp_path_factory.mktemp("q") / "llama128", hidden_size=128, intermediate_size=256)


@pytest.fixture(scope="module")
def moe(tmp_path_factory):
    """qwen3_moe: its own quant_predicate keeps mlp.gate at 8 bits, group 64."""
    return make_model(tmp_path_factory.mktemp("q") / "moe", "qwen3_moe")


def mlx_lm_quantized(model_dir, group_size=None, bits=None, mode="affine", predicate=None, recipe=None):
    model, config = mu.load_model(Path(model_dir))
    if recipe is not None:
        predicate = mixed_quant_predicate_builder(recipe, model, group_size or 64)
    return mu.quantize_model(model, config, group_size, bits, mode=mode, quant_predicate=predicate)


def assert_reloads(model, config, out_dir: Path):
    """Save with mlx-lm's savers, load back with mlx-lm: the same logits."""
    out_dir.mkdir()
    mu.save_model(out_dir, model)
    mu.save_config(copy.deepcopy(config), out_dir / "config.json")
    reloaded, _ = mu.load_model(out_dir)
    assert mx.array_equal(reloaded(TOKENS), model(TOKENS)).item()


def check_against_mlx_lm(model_dir, quant, tmp_path, **ref_kwargs):
    ours, config = mlxhydra.load_model(model_dir, quant=quant)
    ref, ref_config = mlx_lm_quantized(model_dir, **ref_kwargs)
    assert config == ref_config
    assert mx.array_equal(ours(TOKENS), ref(TOKENS)).item()
    assert_reloads(ours, config, tmp_path / "reloaded")
    return ours, config


def modules(model):
    return dict(model.named_modules())


def settings_of(module):
    return (module.bits, module.group_size, module.mode)


# --- the settings mlx-lm offers -----------------------------------------------

@pytest.mark.parametrize("group_size", AFFINE_GROUP_SIZES)
@pytest.mark.parametrize("bits", AFFINE_BITS)
def test_affine(llama128, tmp_path, bits, group_size):
    model, config = check_against_mlx_lm(
        llama128, {"bits": bits, "group_size": group_size}, tmp_path, group_size=group_size, bits=bits)
    assert config["quantization"] == {"group_size": group_size, "bits": bits, "mode": "affine"}
    assert settings_of(model.lm_head) == (bits, group_size, "affine")


@pytest.mark.parametrize("mode", ["mxfp4", "nvfp4", "mxfp8"])
@pytest.mark.parametrize("which", ["llama128", "moe"])
def test_float_modes_take_mlx_lm_defaults(request, tmp_path, which, mode):
    model_dir = request.getfixturevalue(which)
    quant = {"bits": None, "group_size": None, "mode": mode}
    model, config = check_against_mlx_lm(model_dir, quant, tmp_path, mode=mode)
    expected = {"mxfp4": (4, 32), "nvfp4": (4, 16), "mxfp8": (8, 32)}[mode]
    assert (config["quantization"]["bits"], config["quantization"]["group_size"]) == expected
    if which == "moe":
        # The architecture's predicate: the router stays affine 8-bit, group 64.
        assert settings_of(model.model.layers[0].mlp.gate) == (8, 64, "affine")
        assert settings_of(model.model.layers[0].mlp.switch_mlp.up_proj) == (*expected, mode)


def test_moe_affine(moe, tmp_path):
    model, config = check_against_mlx_lm(moe, {"bits": 4}, tmp_path, bits=4)
    assert config["quantization"]["model.layers.1.mlp.gate"] == {"group_size": 64, "bits": 8}


@pytest.mark.parametrize("recipe,group_size", [
    ("mixed_2_6", None), ("mixed_3_4", None), ("mixed_3_6", None), ("mixed_4_6", None),
    ("mixed_3_6", 32),
])
def test_recipes(llama128, tmp_path, recipe, group_size):
    quant = {"recipe": recipe, "group_size": group_size}
    model, config = check_against_mlx_lm(llama128, quant, tmp_path, recipe=recipe, group_size=group_size)
    low, high = (int(b) for b in recipe.split("_")[1:])
    gs = group_size or 64
    assert settings_of(model.lm_head) == (high, gs, "affine")
    assert settings_of(model.model.layers[0].self_attn.q_proj) == (low, gs, "affine")


@pytest.mark.parametrize("name,options", [
    ("qwen3_tied", dict(model_type="qwen3")),
    ("gemma3_text", dict(model_type="gemma3_text")),
    ("float16", dict(model_type="llama", dtype="float16")),
    ("sharded", dict(model_type="llama", shards=2)),
])
def test_other_architectures_and_layouts(tmp_path, name, options):
    model_dir = make_model(tmp_path / name, **options)
    check_against_mlx_lm(model_dir, {"bits": 4, "group_size": 32}, tmp_path, group_size=32, bits=4)


@pytest.fixture(scope="module")
def with_biases(tmp_path_factory):
    """qwen2 (biases on q_proj, k_proj, v_proj) and a llama with a bias on every linear layer."""
    from conftest import BASE

    root = tmp_path_factory.mktemp("bias")
    sizes = {**{k: v for k, v in BASE["llama"].items() if k != "model_type"},
             "hidden_size": 128, "intermediate_size": 256}
    return {"qwen2": make_model(root / "qwen2", "qwen2", **sizes),
            "llama_biases": make_model(root / "llama", **sizes, attention_bias=True, mlp_bias=True),
            "qwen2_q4": make_model(root / "qwen2_q4", "qwen2", **sizes, quantize=4, group_size=32)}


@pytest.mark.parametrize("name, biased", [
    ("qwen2", ["q_proj", "k_proj", "v_proj"]),
    ("llama_biases", ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]),
])
def test_quantized_layers_with_a_bias_equal_mlx_lm(with_biases, tmp_path, name, biased):
    """Runtime quantization keeps each layer's bias from the file: logits bit-identical to
    mlx-lm's load + quantize, and with quant.compute=dequantized within float32 rounding."""
    model_dir = with_biases[name]
    model, _ = check_against_mlx_lm(model_dir, {"bits": 4, "group_size": 32}, tmp_path,
                                    group_size=32, bits=4)
    file = mx.load(str(model_dir / "model.safetensors"))
    layers = {p.split(".")[-1]: m for p, m in model.named_modules()
              if p.startswith("model.layers.1.") and isinstance(m, nn.QuantizedLinear)}
    assert sorted(n for n, m in layers.items() if "bias" in m) == sorted(biased)
    for n in biased:
        where = "self_attn" if n in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp"
        bias = file[f"model.layers.1.{where}.{n}.bias"]
        assert mx.abs(bias).max().item() > 0.01 and mx.array_equal(layers[n].bias, bias).item()
    native = model(TOKENS)
    dequantized, _ = mlxhydra.load_model(model_dir, quant={"bits": 4, "group_size": 32,
                                                         "compute": "dequantized"})
    assert type(dequantized.model.layers[1].self_attn.q_proj).__name__ == "DequantizedLinear"
    assert mx.allclose(dequantized(TOKENS), native, rtol=1e-5, atol=1e-5).item()


def test_a_pre_quantized_model_with_biases_equals_mlx_lm(with_biases):
    model_dir = with_biases["qwen2_q4"]
    ours, config = mlxhydra.load_model(model_dir)
    ref, ref_config = mu.load_model(Path(model_dir))
    assert config["quantization"] == ref_config["quantization"] == {"group_size": 32, "bits": 4,
                                                                   "mode": "affine"}
    q = ours.model.layers[0].self_attn.q_proj
    assert isinstance(q, nn.QuantizedLinear) and mx.array_equal(
        q.bias, ref.model.layers[0].self_attn.q_proj.bias).item()
    assert mx.array_equal(ours(TOKENS), ref(TOKENS)).item()
    dequantized, _ = mlxhydra.load_model(model_dir, quant={"compute": "dequantized"})
    assert type(dequantized.model.layers[0].self_attn.q_proj).__name__ == "DequantizedLinear"
    assert mx.allclose(dequantized(TOKENS), ref(TOKENS), rtol=1e-5, atol=1e-5).item()


def test_lazy_runtime_quantization(llama128):
    model, _ = mlxhydra.load_model(llama128, quant={"bits": 3}, lazy=True)
    ref, _ = mlx_lm_quantized(llama128, bits=3)
    assert mx.array_equal(model(TOKENS), ref(TOKENS)).item()


def test_runtime_quantization_report(llama128):
    _, config, report = build_model(llama128, load_config(llama128),
                                    LoadSettings.from_groups(quant={"bits": 4}))
    q = report.quantization
    assert (q["source"], q["quantized"], q["quantized_layers"], q["float_layers"]) == ("runtime", 16, 16, 0)
    assert q["layers"]["lm_head"] == {"group_size": 64, "bits": 4, "mode": "affine"}
    assert config["quantization_config"] == config["quantization"]


# --- per-layer rules ------------------------------------------------------------

RULES = [
    {"pattern": r"mlp\.down_proj", "bits": 8, "group_size": 32},
    {"pattern": r"self_attn\.v_proj$", "skip": True},
    {"pattern": r"layers\.0\.", "bits": 2},  # down_proj of layer 0 matched the first rule
    {"pattern": r"^lm_head", "mode": "mxfp4"},
]


def rules_predicate(path, module):
    """RULES written by hand as an mlx-lm quant_predicate."""
    if re.search(r"mlp\.down_proj", path):
        return {"group_size": 32, "bits": 8, "mode": "affine"}
    if re.search(r"self_attn\.v_proj$", path):
        return False
    if re.search(r"layers\.0\.", path):
        return {"group_size": 64, "bits": 2, "mode": "affine"}
    if path.startswith("lm_head"):
        return {"group_size": 32, "bits": 4, "mode": "mxfp4"}
    return True


def test_rules_first_match_wins(llama128, tmp_path):
    quant = {"bits": 4, "group_size": 64, "rules": RULES}
    model, config = mlxhydra.load_model(llama128, quant=quant)
    ref, _ = mlx_lm_quantized(llama128, 64, 4, predicate=rules_predicate)
    assert mx.array_equal(model(TOKENS), ref(TOKENS)).item()
    m = modules(model)
    for i in (0, 1):
        assert settings_of(m[f"model.layers.{i}.mlp.down_proj"]) == (8, 32, "affine")
        assert type(m[f"model.layers.{i}.self_attn.v_proj"]) is nn.Linear
    assert settings_of(m["model.layers.0.self_attn.q_proj"]) == (2, 64, "affine")
    assert settings_of(m["model.layers.1.self_attn.q_proj"]) == (4, 64, "affine")
    assert settings_of(m["lm_head"]) == (4, 32, "mxfp4")
    assert settings_of(m["model.embed_tokens"]) == (4, 64, "affine")
    assert config["quantization"]["model.layers.1.mlp.down_proj"] == {"group_size": 32, "bits": 8, "mode": "affine"}
    assert_reloads(model, config, tmp_path / "reloaded")


def test_rules_alone_quantize_only_what_they_match(llama128, tmp_path):
    model, config = mlxhydra.load_model(llama128, quant={"rules": [{"pattern": "down_proj", "bits": 4}]})
    quantized = sorted(p for p, m in model.named_modules() if hasattr(m, "scales"))
    assert quantized == ["model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj"]
    assert_reloads(model, config, tmp_path / "reloaded")


def test_architecture_predicate_applies_where_no_rule_matches(moe, tmp_path):
    quant = {"bits": 4, "rules": [{"pattern": r"layers\.0\.mlp\.gate$", "skip": True},
                                  {"pattern": "q_proj", "bits": 8, "group_size": 32}]}
    model, config = mlxhydra.load_model(moe, quant=quant)
    m = modules(model)
    assert type(m["model.layers.0.mlp.gate"]) is nn.Linear  # the rule beats the predicate
    assert settings_of(m["model.layers.1.mlp.gate"]) == (8, 64, "affine")  # the predicate
    assert settings_of(m["model.layers.1.self_attn.q_proj"]) == (8, 32, "affine")
    assert settings_of(m["model.layers.1.self_attn.k_proj"]) == (4, 64, "affine")
    assert_reloads(model, config, tmp_path / "reloaded")


def test_indivisible_layers_stay_float_and_are_counted(tmp_path):
    # down_proj takes 96 inputs: not a multiple of 64, a multiple of 32.
    model_dir = make_model(tmp_path / "m", intermediate_size=96)
    model, config, report = build_model(model_dir, load_config(model_dir),
                                        LoadSettings.from_groups(quant={"bits": 4}))
    assert report.quantization["float_indivisible"] == 2
    assert report.quantization["quantized"] == 14  # 16 layers with a weight
    assert type(model.model.layers[1].mlp.down_proj) is nn.Linear
    ref, ref_config = mlx_lm_quantized(model_dir, bits=4)
    assert config == ref_config
    assert mx.array_equal(model(TOKENS), ref(TOKENS)).item()
    # A rule with a group size that fits quantizes them.
    quant = {"bits": 4, "rules": [{"pattern": "down_proj", "bits": 4, "group_size": 32}]}
    model, _, report = build_model(model_dir, load_config(model_dir),
                                   LoadSettings.from_groups(quant=quant))
    assert report.quantization["float_indivisible"] == 0
    assert settings_of(model.model.layers[1].mlp.down_proj) == (4, 32, "affine")


# --- invalid settings: refused before any weight is read ------------------------

@pytest.fixture(scope="module")
def corrupt_dir(tmp_path_factory, llama128):
    """A valid config.json next to a weight file that is not safetensors."""
    model_dir = tmp_path_factory.mktemp("corrupt") / "m"
    model_dir.mkdir()
    (model_dir / "config.json").write_text((llama128 / "config.json").read_text())
    (model_dir / "model.safetensors").write_bytes(b"\xff" * 64)
    return model_dir


def test_corrupt_dir_fails_on_weights_when_settings_are_valid(corrupt_dir):
    with pytest.raises(WeightsError, match="model.safetensors: corrupt safetensors header"):
        mlxhydra.load_model(corrupt_dir, quant={"bits": 4})


BAD = [
    ({"bits": 7}, "quant.bits=7: expected one of 2, 3, 4, 5, 6, 8"),
    ({"bits": 8, "mode": "mxfp4"}, "quant.bits=8: mode mxfp4 takes 4 bits only"),
    ({"bits": 4, "group_size": 48}, "quant.group_size=48: expected one of 32, 64, 128"),
    ({"mode": "nvfp4", "group_size": 32}, "quant.group_size=32: mode nvfp4 takes group size 16 only"),
    ({"mode": "int4"}, "quant.mode='int4': expected one of affine, mxfp4, nvfp4, mxfp8"),
    ({"bits": 4, "rules": [{"pattern": "(", "bits": 8}]}, "quant.rules[0].pattern='(' does not compile"),
    ({"bits": 4, "rules": [{"pattern": "q_proj", "bitz": 8}]}, "quant.rules[0]: unknown keys ['bitz']"),
    ({"rules": [{"pattern": "q", "skip": True, "bits": 4}]}, "quant.rules[0]: skip: true takes no bits"),
    ({"rules": [{"pattern": "q", "bits": 3, "mode": "mxfp8"}]}, "quant.rules[0].bits=3: mode mxfp8 takes 8 bits only"),
    ({"recipe": "mixed_3_6", "mode": "mxfp4"}, "quant.recipe=mixed_3_6: recipes are affine only, not mode mxfp4"),
    ({"recipe": "mixed_3_6", "bits": 4}, "quant.recipe=mixed_3_6: the recipe sets the bits"),
    ({"recipe": "mixed_9_9"}, "quant.recipe='mixed_9_9': expected one of mixed_2_6"),
    ({"bits": 4, "groupsize": 64}, "quant.groupsize: unknown key for quant; valid keys: "),
]


@pytest.mark.parametrize("quant,text", BAD, ids=[t.split(":")[0] + str(i) for i, (_, t) in enumerate(BAD)])
def test_invalid_settings_refused_before_weights(corrupt_dir, quant, text):
    with pytest.raises(ConfigError) as e:
        mlxhydra.load_model(corrupt_dir, quant=quant)
    assert text in str(e.value)
    assert "\n" not in str(e.value)


def test_every_problem_reported_at_once(corrupt_dir):
    with pytest.raises(ConfigError) as e:
        mlxhydra.load_model(corrupt_dir, quant={"bits": 7, "group_size": 48, "rules": [{"pattern": "("}]})
    assert len(e.value.problems) == 3


@settings(max_examples=60, deadline=None)
@given(bits=st.integers(-1, 17), group_size=st.integers(0, 300))
def test_affine_validation_matches_mlx(bits, group_size):
    valid = bits in AFFINE_BITS and group_size in AFFINE_GROUP_SIZES
    if valid:
        spec = parse_quant({"bits": bits, "group_size": group_size})
        assert spec.default == {"group_size": group_size, "bits": bits, "mode": "affine"}
        mx.quantize(mx.zeros((8, 128)), group_size=group_size, bits=bits)  # mlx agrees
    else:
        with pytest.raises(ConfigError):
            parse_quant({"bits": bits, "group_size": group_size})


def test_no_quantization_requested():
    assert parse_quant(None) is None
    assert parse_quant({"bits": None, "group_size": None, "mode": "affine", "recipe": None, "rules": []}) is None
    assert parse_quant({"rules": [{"pattern": "x", "skip": True}]}) is None


# --- pre-quantized models -------------------------------------------------------

@pytest.fixture(scope="module")
def q4_dir(tmp_path_factory):
    return make_model(tmp_path_factory.mktemp("q4") / "m", quantize=4, group_size=64)


@pytest.mark.parametrize("quant,request_text", [
    ({"bits": 8}, "bits=8, group_size=64, mode=affine"),
    ({"bits": 4, "group_size": 32}, "bits=4, group_size=32, mode=affine"),
    ({"mode": "mxfp4"}, "bits=4, group_size=32, mode=mxfp4"),
    ({"recipe": "mixed_3_6"}, "recipe=mixed_3_6, group_size=64"),
    ({"bits": 4, "rules": [{"pattern": "lm_head", "skip": True}]}, "bits=4, group_size=64, mode=affine, 1 per-layer rule(s)"),
])
def test_requantizing_is_refused(q4_dir, quant, request_text):
    with pytest.raises(ConfigError) as e:
        mlxhydra.load_model(q4_dir, quant=quant)
    assert str(e.value) == (
        f"{q4_dir} is already quantized (bits=4, group_size=64, mode=affine); re-quantizing to "
        f"{request_text} is refused: load the float model instead, or use quant=none")


def test_same_settings_as_saved_load(q4_dir):
    model, config = mlxhydra.load_model(q4_dir, quant={"bits": 4, "group_size": 64, "mode": "affine"})
    ref, ref_config = mu.load_model(q4_dir)
    assert config == ref_config
    assert mx.array_equal(model(TOKENS), ref(TOKENS)).item()


def test_rules_that_match_nothing_are_reported(llama128, caplog):
    quant = {"bits": 4, "rules": [{"pattern": r"mlp\.gate$", "bits": 8}, {"pattern": "q_prj", "skip": True},
                                  {"pattern": "q_proj", "skip": True}]}
    _, _, report = build_model(llama128, load_config(llama128),
                               LoadSettings.from_groups(quant=quant))
    assert report.quantization["unmatched_rules"] == [r"mlp\.gate$", "q_prj"]
    assert "quant.rules patterns that match no quantizable layer: mlp\\.gate$, q_prj" in caplog.text
    assert report.quantization["float_by_rule_or_predicate"] == 2  # the two q_proj


PRESETS = {
    "none": None,
    "4bit": {"group_size": 64, "bits": 4, "mode": "affine"},
    "8bit": {"group_size": 64, "bits": 8, "mode": "affine"},
    "mxfp4": {"group_size": 32, "bits": 4, "mode": "mxfp4"},
    "nvfp4": {"group_size": 16, "bits": 4, "mode": "nvfp4"},
    "mxfp8": {"group_size": 32, "bits": 8, "mode": "mxfp8"},
    **{r: {"group_size": 64, "bits": 4, "mode": "affine", "recipe": r} for r in
       ("mixed_2_6", "mixed_3_4", "mixed_3_6", "mixed_4_6")},
}


def test_shipped_quant_presets_parse():
    from mlxhydra.config.composition import compose
    from mlxhydra.job.validation import validate

    shipped = sorted(p.stem for p in (Path(__file__).parents[1] / "conf" / "quant").glob("*.yaml"))
    assert shipped == sorted(PRESETS)
    for name, expected in PRESETS.items():
        spec = validate(compose([f"quant={name}"])).quant  # as a job reads it
        if expected is None:
            assert spec is None
        else:
            expected = dict(expected)
            assert (spec.recipe, spec.default, spec.rules) == (expected.pop("recipe", None), expected, [])


def test_recipe_on_a_model_without_down_proj(tmp_path):
    model_dir = make_model(tmp_path / "gpt2", "gpt2", n_ctx=64, n_embd=64, n_head=4, n_layer=2,
                           n_positions=64, layer_norm_epsilon=1e-5, vocab_size=256)
    with pytest.raises(ConfigError, match="quant.recipe=mixed_3_6: Model does not have expected keys for mixed quant"):
        mlxhydra.load_model(model_dir, quant={"recipe": "mixed_3_6"})


def test_quant_node_from_omegaconf(llama128):
    from omegaconf import OmegaConf

    node = OmegaConf.create({"bits": 4, "group_size": 64, "mode": "affine", "recipe": None,
                             "rules": [{"pattern": "lm_head", "bits": 8}]})
    model, _ = mlxhydra.load_model(llama128, quant=node)
    assert settings_of(model.lm_head) == (8, 64, "affine")
    assert settings_of(model.model.embed_tokens) == (4, 64, "affine")


def test_rule_inherits_unset_values_from_the_top_level_settings():
    from mlxhydra.load.quant_spec import parse_quant

    spec = parse_quant({"bits": 4, "group_size": 32, "rules": [
        {"pattern": "lm_head", "bits": 8},
        {"pattern": "embed", "mode": "mxfp4"},
    ]})
    assert spec.rules[0].params == {"group_size": 32, "bits": 8, "mode": "affine"}
    assert spec.rules[1].params == {"group_size": 32, "bits": 4, "mode": "mxfp4"}


def test_a_group_size_alone_is_refused_unless_rules_use_it():
    from mlxhydra.errors import ConfigError
    from mlxhydra.load.quant_spec import parse_quant

    with pytest.raises(ConfigError, match=r"quant.group_size=64 without quant.bits"):
        parse_quant({"group_size": 64})
    spec = parse_quant({"group_size": 32, "rules": [{"pattern": "mlp", "bits": 4}]})
    assert spec.default is None
    assert spec.rules[0].params == {"group_size": 32, "bits": 4, "mode": "affine"}
