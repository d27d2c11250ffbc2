"""Composition in-process: model=PATH, presets, patches, overrides, quant presets, search path."""

import json
from pathlib import Path

import pytest
from conftest import EMBEDDED_TINY
from hydra._internal.config_search_path_impl import ConfigSearchPathImpl
from hydra.core.config_search_path import SearchPathQuery
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

import mlxhydra
from mlxhydra.config.composition import to_plain
from mlxhydra.config.model_source import ModelDirSearchPath
from mlxhydra.config.resolvers import safe_name
from mlxhydra.errors import ModelDirError, ModelDirNotFound

ROOT = Path(__file__).resolve().parents[1]
PATCHES = ROOT / "conf" / "patch"

# Values OmegaConf would otherwise interpret or coerce.
ODD_VALUES = {
    "env": "${oc.env:HOME}",
    "one_backslash": "\\${oc.env:HOME}",
    "two_backslashes": "\\\\${x}",
    "three_backslashes": "a\\\\\\${y}z",
    "nested": {"list": [1, None, {"deep": "${c}", "f": 2.0}], "none": None, "empty": {}},
    "big_int": 12345678901234567890,
    "float_that_looks_int": 3.0,
    "flag": False,
    "missing_marker": "???",
}


def canonical(value):
    """JSON text that tells 1 from 1.0 and True from 1 (== does not)."""
    return json.dumps(value, sort_keys=True)


def patch_yaml(name):
    """A shipped patch's body (its defaults list removed)."""
    body = OmegaConf.load(PATCHES / f"{name}.yaml")
    body.pop("defaults", None)
    return OmegaConf.to_container(body)


@pytest.fixture(scope="module")
def odd_dir(llama_dir, tmp_path_factory):
    """A llama whose config.json holds ODD_VALUES, keys in an unsorted order."""
    directory = tmp_path_factory.mktemp("odd") / "odd model"
    directory.mkdir()
    for f in llama_dir.iterdir():
        (directory / f.name).symlink_to(f)
    (directory / "config.json").unlink()
    config = {**ODD_VALUES, **json.loads((llama_dir / "config.json").read_text())}
    (directory / "config.json").write_text(json.dumps(config))
    return directory


def test_model_path_is_the_json_exactly(odd_dir):
    cfg = mlxhydra.compose([f"model='{odd_dir}'"])
    raw = json.loads((odd_dir / "config.json").read_text())
    model = to_plain(cfg.model)
    assert canonical(model) == canonical(raw)
    assert list(model) == list(raw)  # key order kept
    assert model["env"] == "${oc.env:HOME}"
    assert model["three_backslashes"] == "a\\\\\\${y}z"
    assert cfg.model_dir == str(odd_dir)


def test_relative_and_home_paths_become_absolute(llama_dir, monkeypatch):
    monkeypatch.chdir(llama_dir.parent)
    assert mlxhydra.compose(["model=./llama"]).model_dir == str(llama_dir)
    assert mlxhydra.compose(["model=llama/"]).model_dir == str(llama_dir)
    monkeypatch.setenv("HOME", str(llama_dir.parent))
    cfg = mlxhydra.compose(["model='~/llama'"])
    assert cfg.model_dir == str(llama_dir)
    assert to_plain(cfg.model) == json.loads((llama_dir / "config.json").read_text())


def test_default_is_the_embedded_tiny_model():
    cfg = mlxhydra.compose()
    assert cfg.model_dir == str(EMBEDDED_TINY)
    assert to_plain(cfg.model) == json.loads((EMBEDDED_TINY / "config.json").read_text())
    assert OmegaConf.is_struct(cfg)


def test_preset_builds_on_the_embedded_model():
    cfg = mlxhydra.compose(["model=tiny_long"])
    tiny = json.loads((EMBEDDED_TINY / "config.json").read_text())
    expected = {**tiny, "max_position_embeddings": 4 * tiny["max_position_embeddings"],
                "rope_scaling": {"type": "linear", "factor": 4.0}}
    assert to_plain(cfg.model) == expected
    assert cfg.model_dir == str(EMBEDDED_TINY)


def test_user_preset_in_a_config_dir_names_a_directory(llama_dir, tmp_path, monkeypatch):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "mine.yaml").write_text(
        f"defaults:\n  - /model/{llama_dir}\n  - _self_\nrope_theta: 1.5\n"
    )
    monkeypatch.chdir(tmp_path)
    cfg = mlxhydra.compose(["model=mine", f"hydra.searchpath=[file://{tmp_path}]"])
    assert cfg.model_dir == str(llama_dir)
    assert cfg.model.rope_theta == 1.5
    assert cfg.model.hidden_size == 64


@pytest.mark.parametrize("option", ["model=/no/such/dir", "model=./no_such_dir"])
def test_missing_directory_names_the_path(option, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelDirNotFound, match="does not exist") as e:
        mlxhydra.compose([option])
    shown = option.split("=", 1)[1]
    assert str(e.value).startswith(f"model={shown}: ")
    assert str((tmp_path / shown).resolve()) in str(e.value)


def test_file_and_directory_without_config_json_are_refused(llama_dir, tmp_path):
    with pytest.raises(ModelDirError, match="is not a directory"):
        mlxhydra.compose([f"model={llama_dir}/config.json"])
    with pytest.raises(ModelDirNotFound, match=f"{tmp_path} has no config.json"):
        mlxhydra.compose([f"model={tmp_path}"])


def test_patch_without_brackets_and_patch_order(llama_dir):
    base = json.loads((llama_dir / "config.json").read_text())
    long = patch_yaml("long_context")
    llama3 = patch_yaml("llama3_rope")
    cfg = mlxhydra.compose([f"model={llama_dir}", "patch=long_context"])
    assert to_plain(cfg.model) == {**base, **long}
    # later patches win, and each replaces rope_scaling rather than merging into it
    cfg = mlxhydra.compose([f"model={llama_dir}", "patch=[long_context,llama3_rope]"])
    assert to_plain(cfg.model) == {**base, **long, **llama3}
    cfg = mlxhydra.compose([f"model={llama_dir}", "patch=[llama3_rope,long_context]"])
    assert to_plain(cfg.model) == {**base, **llama3, **long}
    # the command line wins over patches
    cfg = mlxhydra.compose([f"model={llama_dir}", "patch=[long_context,llama3_rope]",
                            "model.rope_theta=1234.0", "model.rope_scaling.factor=2.0"])
    assert cfg.model.rope_theta == 1234.0
    assert to_plain(cfg.model.rope_scaling) == {**llama3["rope_scaling"], "factor": 2.0}


def test_patch_replaces_rope_scaling_of_config_json(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(
        {"model_type": "llama", "rope_scaling": {"rope_type": "llama3", "factor": 8.0}}))
    cfg = mlxhydra.compose([f"model={tmp_path}", "patch=long_context"])
    assert to_plain(cfg.model.rope_scaling) == {"type": "linear", "factor": 4.0}
    cfg = mlxhydra.compose([f"model={tmp_path}", "patch=no_rope_scaling"])
    assert cfg.model.rope_scaling is None


def test_user_patch_through_searchpath_keeps_model_paths(llama_dir, tmp_path):
    (tmp_path / "patch").mkdir()
    (tmp_path / "patch" / "mine.yaml").write_text(
        "# @package model\nrope_theta: 123.0\nrope_scaling:\n  factor: 2.0\n")
    cfg = mlxhydra.compose([f"model={llama_dir}", "patch=[llama3_rope,mine]",
                            f"hydra.searchpath=[file://{tmp_path}]"])
    assert cfg.model_dir == str(llama_dir)  # mlxmodel:// is still on the search path
    assert cfg.model.rope_theta == 123.0
    assert cfg.model.rope_scaling.factor == 2.0  # a user patch may merge into a key
    assert cfg.model.rope_scaling.rope_type == "llama3"


def test_struct_refuses_unknown_key_unless_plus(llama_dir):
    with pytest.raises(ConfigCompositionException, match=r"\+model.foo=1"):
        mlxhydra.compose([f"model={llama_dir}", "model.foo=1"])
    cfg = mlxhydra.compose([f"model={llama_dir}", "+model.foo=1", "model.rope_theta=500000"])
    assert cfg.model.foo == 1
    assert cfg.model.rope_theta == 500000 and isinstance(cfg.model.rope_theta, int)


@pytest.mark.parametrize("preset, expected", [
    ("4bit", {"bits": 4, "group_size": 64, "mode": "affine", "recipe": None}),
    ("mxfp4", {"bits": 4, "group_size": 32, "mode": "mxfp4", "recipe": None}),
    ("mixed_3_6", {"bits": None, "group_size": 64, "mode": "affine", "recipe": "mixed_3_6"}),
])
def test_quant_presets(preset, expected):
    quant = to_plain(mlxhydra.compose([f"quant={preset}"]).quant)
    assert {k: quant[k] for k in expected} == expected
    assert quant["rules"] == []


def test_quant_rules_from_the_override_grammar():
    cfg = mlxhydra.compose(["quant=4bit", "quant.rules=[{pattern: lm_head, skip: true}]"])
    assert to_plain(cfg.quant.rules) == [{"pattern": "lm_head", "skip": True}]
    cfg = mlxhydra.compose(["quant=4bit",
                            "quant.rules=[{pattern: 'layers\\.0\\.', bits: 8}, {pattern: lm_head, skip: true}]"])
    assert to_plain(cfg.quant.rules) == [{"pattern": "layers\\.0\\.", "bits": 8},
                                         {"pattern": "lm_head", "skip": True}]


def test_compose_is_the_function_after_the_pipeline_is_imported():
    import importlib.util

    import mlxhydra.config.composition
    import mlxhydra.job.pipeline  # noqa: F401  (imports every stage)

    assert importlib.util.find_spec("mlxhydra.compose") is None  # no submodule to shadow it
    assert mlxhydra.compose is mlxhydra.config.composition.compose
    assert mlxhydra.compose(["seed=3"]).seed == 3


def test_return_hydra_config_keeps_the_run_dir_pattern():
    import re

    from mlxhydra.config.resolvers import run_token

    cfg = mlxhydra.compose(return_hydra_config=True)
    assert OmegaConf.to_container(cfg.hydra.run, resolve=False)["dir"] == \
        "outputs/runs/${now:%Y-%m-%d}/${now:%H-%M-%S}_${mlxhydra_token:}"
    assert re.fullmatch(r"outputs/runs/\d{4}-\d\d-\d\d/\d\d-\d\d-\d\d_" + run_token(), cfg.hydra.run.dir)


def test_search_path_plugin_only_touches_mlxhydra():
    ours = ConfigSearchPathImpl()
    ours.append("hydra", "pkg://hydra.conf")
    ours.append("main", "pkg://mlxhydra.conf")
    ours.append("command-line", "file:///somewhere")
    ModelDirSearchPath().manipulate_search_path(ours)
    ModelDirSearchPath().manipulate_search_path(ours)  # idempotent
    assert [e.path for e in ours.get_path()] == [
        "pkg://hydra.conf", "pkg://mlxhydra.conf", "mlxmodel://", "file:///somewhere"]
    other = ConfigSearchPathImpl()
    other.append("main", "pkg://someone_else.conf")
    ModelDirSearchPath().manipulate_search_path(other)
    assert [e.path for e in other.get_path()] == ["pkg://someone_else.conf"]
    assert other.find_first_match(SearchPathQuery(path="mlxmodel://")) == -1


@pytest.mark.parametrize("text, expected", [
    ("model=./a", "model=._a"),
    ("model=/abs/path/llama,quant=4bit", "model=_abs_path_llama,quant=4bit"),
    ("model='./my models/llamä ü'", "model=_._my_models_llamä_ü"),
    ("", "default"),
    ("../..", "default"),
])
def test_safe_name(text, expected):
    assert safe_name(text) == expected
    assert "/" not in safe_name(text)


def test_safe_name_is_cut():
    assert len(safe_name("x" * 500)) == 120


def test_a_forked_process_names_its_own_run_directory():
    """The run token is made per process: a child forked after the parent made its token (a
    launcher's forked worker, the tests' fork server) makes another, and keeps it."""
    import os

    from mlxhydra.config.resolvers import run_token

    parent = run_token()
    assert run_token() == parent  # every resolution in one process: the same folder
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its token, twice, then the exit status says whether they agree
        os.close(read)
        mine = run_token()
        os.write(write, f"{mine} {run_token()}".encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as f:
        first, again = f.read().split()
    os.waitpid(pid, 0)
    assert first == again and first != parent and first.startswith(f"{pid:x}")
    assert run_token() == parent
