"""Property-based tests: random config.json contents and random overrides, in-process.

Two properties:

1. Composing a model directory with no overrides gives back config.json
   exactly: ``to_plain(cfg.model) == json.load(config.json)`` for any JSON
   object (strings with ``${``, backslashes, unicode, large ints, floats...).
2. Random config.json values (the required llama keys valid some of the time)
   plus random override strings, fed through composition and the job's own
   validate and load stages (``mlxhydra.job.pipeline.prepare``), end in success or
   in one of the project's own clear errors (MlxhydraError, ModelDirError) or
   Hydra's / OmegaConf's override and composition errors. Anything else (a
   KeyError or TypeError from deep inside) fails the test.
"""

import json
import re
from pathlib import Path

import pytest
from conftest import make_model
from hydra.errors import HydraException
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from omegaconf.errors import OmegaConfBaseException

import mlxhydra
from mlxhydra.config.composition import to_plain
from mlxhydra.errors import MlxhydraError, ModelDirError
from mlxhydra.job.pipeline import prepare

CLEAR_ERRORS = (MlxhydraError, ModelDirError, HydraException, OmegaConfBaseException)
SETTINGS = settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# Strings built from the pieces that interpolation, escaping and encoding trip on.
TRICKY_PIECES = st.sampled_from(
    ["${", "}", "\\", "\\\\", "$", "{", ":", ".", "oc.env:HOME", "oc.decode:", "model_dir",
     "'", '"', "ü", "日本", "🙂", "\x00", "\n", " ", "a", "1", "[", "]", "="]
)
TRICKY_TEXT = st.one_of(
    st.text(max_size=12),
    st.lists(TRICKY_PIECES, max_size=8).map("".join),
    st.sampled_from(["${oc.env:HOME}", "${oc.decode:'{a: 1}'}", "\\${x}", "${model_dir}",
                     "${now:%Y}", "???", "${", "\\"]),
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([1e-5, 1e-6, -0.0, 1e300, 5e-324]),
    TRICKY_TEXT,
)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(TRICKY_TEXT, inner, max_size=4),
    ),
    max_leaves=12,
)
JSON_OBJECTS = st.dictionaries(TRICKY_TEXT, JSON_VALUES, max_size=6)


def write_config(directory: Path, config: dict) -> None:
    (directory / "config.json").write_text(json.dumps(config, ensure_ascii=False), encoding="utf-8")


def same_json(a, b) -> bool:
    """Equal values of equal JSON types (1 and 1.0 differ), compared through JSON text."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    """A directory whose config.json each example rewrites (no weights needed to compose)."""
    return tmp_path_factory.mktemp("props") / "model"


@pytest.mark.slow
@SETTINGS
@given(config=JSON_OBJECTS)
def test_compose_without_overrides_returns_config_json_exactly(scratch, config):
    scratch.mkdir(exist_ok=True)
    write_config(scratch, config)
    cfg = mlxhydra.compose([f"model={scratch}"])
    plain = to_plain(cfg.model)
    expected = json.loads((scratch / "config.json").read_text(encoding="utf-8"))
    assert same_json(plain, expected), (plain, expected)
    assert cfg.model_dir == str(scratch)


# --- random configs and overrides through the loading path -------------------

REQUIRED = ("model_type", "hidden_size", "num_hidden_layers", "intermediate_size",
            "num_attention_heads", "vocab_size", "rms_norm_eps", "num_key_value_heads")
# Bad values for the required keys. Sizes stay small or absurd: mlx-lm builds one
# Python object per layer, so num_hidden_layers=2**31 would run for hours
# (2**40 fails at once with a MemoryError, reported as a ConfigError).
SMALL_JSON_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-5, 300), st.floats(-1e3, 1e3), TRICKY_TEXT),
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(TRICKY_TEXT, inner, max_size=3)),
    max_leaves=6,
)
JUNK = st.one_of(
    st.sampled_from([0, -1, 3, 7, 1000, 2**40, 1.5, 1e-5, "abc", "", None, [], {}, [64], True,
                     "${oc.env:HOME}", "lama", "llama4"]),
    SMALL_JSON_VALUES,
)
OVERRIDE_VALUES = st.one_of(
    st.sampled_from(["abc", "1e-5", "[1,2]", "{a: 1}", "null", "${oc.env:HOME}",
                     "${oc.env:MLXHYDRA_NOT_SET}", "'${model_dir}'", "\\${x}", "ü", "", "0",
                     "-1", "64", "true", "2", "4", "8", "48", "mxfp4", "nvfp4", "'('",
                     "${oc.decode:'1'}", "[{pattern: '(', bits: 4}]", "[{pattern: mlp, bits: 8}]",
                     "99999999999999999999999"]),
    # Not a mid-sized integer: model.num_hidden_layers=9999999 would build ten million layers.
    st.text(max_size=8).filter(lambda t: not re.fullmatch(r"\s*[+-]?[\d_]{5,}\s*", t)),
)
OVERRIDE_KEYS = st.sampled_from(
    [f"model.{k}" for k in REQUIRED]
    + ["+model.extra", "model.nope", "quant.bits", "quant.group_size", "quant.mode",
       "quant.recipe", "quant.rules", "load.strict", "load.dtype", "load.trust_remote_code",
       "~model.hidden_size", "~model.model_type", "seed", "model"]
)
OVERRIDES = st.one_of(
    st.tuples(OVERRIDE_KEYS, OVERRIDE_VALUES).map(lambda kv: f"{kv[0]}={kv[1]}"),
    st.sampled_from(["~model.vocab_size", "~model.model_type", "quant=4bit", "quant=mxfp4",
                     "quant=mixed_3_6", "patch=llama3_rope", "quant.bits=4"]),
    st.text(max_size=10),
)


@pytest.fixture(scope="module")
def base_llama(tmp_path_factory) -> Path:
    return make_model(tmp_path_factory.mktemp("props_llama") / "llama")


@pytest.fixture(scope="module")
def work_llama(tmp_path_factory, base_llama) -> Path:
    """A copy of the llama whose config.json each example rewrites."""
    directory = tmp_path_factory.mktemp("props_work") / "llama"
    directory.mkdir()
    for f in base_llama.iterdir():
        (directory / f.name).write_bytes(f.read_bytes())
    return directory


@pytest.mark.slow
@SETTINGS
@given(
    replaced=st.dictionaries(st.sampled_from(REQUIRED), JUNK, max_size=3),
    extra=st.dictionaries(TRICKY_TEXT, JSON_VALUES, max_size=3),
    overrides=st.lists(OVERRIDES, max_size=3),
)
def test_random_config_and_overrides_fail_only_with_clear_errors(
    base_llama, work_llama, replaced, extra, overrides
):
    config = json.loads((base_llama / "config.json").read_text())
    assume(not (set(extra) & set(config)))
    write_config(work_llama, {**config, **extra, **replaced})
    try:
        cfg = mlxhydra.compose([f"model={work_llama}", *overrides])
        prepare(cfg)  # validate, then load, as a job does (no run directory)
    except MlxhydraError as e:
        # The project's own errors: a message that says something, on one line.
        assert str(e).strip() and "\n" not in str(e), repr(str(e))
    except CLEAR_ERRORS:
        pass
