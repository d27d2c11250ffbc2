"""The Python API a notebook uses: ``mlxhydra.load`` against ``mlx_lm.load``, ``mlxhydra.run``.

The models are mlx-lm-built llamas with the embedded tokenizer, also served as
``org/tiny`` from a Hugging Face cache in huggingface_hub's real layout
(tests/helpers/hub_cache.py; offline): commit A (tag v1, seed 0) and commit B
(main, seed 1). ``run`` runs real jobs in this process, one after the other.
"""

import inspect
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from conftest import EMBEDDED_TINY, make_model
from helpers.adapters import make_adapter
from helpers.hub_cache import add_snapshot, commit_hash
from mlx_lm import generate
from mlx_lm import load as mlx_lm_load
from mlx_lm import utils as mu
from mlx_lm.tokenizer_utils import TokenizerWrapper

import mlxhydra
from mlxhydra import api
from mlxhydra.config import hub
from mlxhydra.config.composition import compose
from mlxhydra.errors import ConfigError, HubError, ModelDirNotFound, OverrideSyntaxError
from mlxhydra.job.pipeline import prepare

pytestmark = pytest.mark.xdist_group("api")  # one worker: the models and the cache are built once

REPO = "org/tiny"
COMMIT_A, COMMIT_B = commit_hash("a"), commit_hash("b")
TOKENS = mx.array([[1, 5, 20, 21, 22, 11, 20, 30]])
TEXTS = ["12+7=", "41+28=69", "", " 3 - 1 = 2 "]
LINEAR = {"type": "linear", "factor": 2.0}


def logits(model) -> np.ndarray:
    return np.array(model(TOKENS).astype(mx.float32))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """{"a", "b": model directories with the embedded tokenizer; "cache": the Hub cache; "lora"}."""
    root = tmp_path_factory.mktemp("api")
    found = {}
    for label, seed, commit, refs in (("a", 0, COMMIT_A, ("v1",)), ("b", 1, COMMIT_B, ("main",))):
        found[label] = d = make_model(root / label, vocab_size=128, seed=seed)
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "eval.txt"):
            shutil.copy(EMBEDDED_TINY / name, d / name)
        add_snapshot(root / "cache", REPO, d, commit, refs)
    found["cache"] = root / "cache"
    found["lora"] = make_adapter(found["a"], root / "lora")
    return found


@pytest.fixture
def offline(models, monkeypatch, tmp_path):
    """huggingface_hub offline on the fixture cache; the working directory is tmp_path."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(models["cache"]))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub, "_resolved", {})
    monkeypatch.chdir(tmp_path)
    return models


def assert_same_tokenizer(ours, theirs):
    assert type(ours) is TokenizerWrapper and type(theirs) is TokenizerWrapper
    assert ours.eos_token_ids == theirs.eos_token_ids and ours.eos_token_ids
    for text in TEXTS:
        ids = theirs.encode(text)
        assert ours.encode(text) == ids
        assert ours.decode(ids) == theirs.decode(ids)


@pytest.mark.parametrize("ours, revision, theirs, label", [
    ("local", None, {}, "a"),
    (REPO, None, {}, "b"),
    (REPO, "v1", {"revision": "v1"}, "a"),
    (f"{REPO}@{COMMIT_A}", None, {"revision": COMMIT_A}, "a"),  # mlxhydra's own spelling of a revision
])
def test_load_equals_mlx_lm_load(offline, ours, revision, theirs, label):
    path = str(offline["a"]) if ours == "local" else ours
    model, tokenizer, config = mlxhydra.load(path, return_config=True, revision=revision)
    their_model, their_tokenizer, their_config = mlx_lm_load(
        str(offline["a"]) if ours == "local" else REPO, return_config=True, **theirs)
    assert np.array_equal(logits(model), logits(their_model))
    assert config == their_config
    assert_same_tokenizer(tokenizer, their_tokenizer)
    other = mu.load_model(offline["b" if label == "a" else "a"])[0]  # the other commit differs
    assert not np.allclose(logits(model), logits(other))


def test_adapter_path_equals_mlx_lm(offline):
    lora = offline["lora"]
    model, _ = mlxhydra.load(REPO, adapter_path=lora, revision="v1")
    theirs, _ = mlx_lm_load(REPO, revision="v1", adapter_path=str(lora))
    assert np.array_equal(logits(model), logits(theirs))
    plain, _ = mlx_lm_load(REPO, revision="v1")
    assert not np.allclose(logits(model), logits(plain), atol=1e-3)  # the adapter does something


def test_quant_override_equals_the_command_and_mlx_lm_quantize(offline):
    model, _, config = mlxhydra.load(offline["a"], "quant.bits=4", return_config=True)
    command, _ = prepare(compose([f"model={offline['a']}", "quant.bits=4"]))
    their_model, their_config = mu.quantize_model(*mu.load_model(offline["a"]), 64, 4)
    assert np.array_equal(logits(model), logits(command))
    assert np.array_equal(logits(model), logits(their_model))
    assert config["quantization"] == their_config["quantization"] == {
        "group_size": 64, "bits": 4, "mode": "affine"}


def test_model_config_is_merged_shallow_on_top_of_patches_as_in_mlx_lm(offline):
    # patch=llama3_rope sets rope_theta and a 5-key llama3 rope_scaling; model_config replaces
    # the whole rope_scaling, as mlx-lm's dict.update does.
    model, _, config = mlxhydra.load(offline["a"], "patch=llama3_rope", model_config={"rope_scaling": LINEAR},
                                     return_config=True)
    theirs, _, their_config = mlx_lm_load(
        str(offline["a"]), model_config={"rope_theta": 500000.0, "rope_scaling": LINEAR}, return_config=True)
    assert config["rope_scaling"] == LINEAR and config["rope_theta"] == 500000.0
    assert config == their_config
    assert np.array_equal(logits(model), logits(theirs))


def test_load_model_takes_hub_ids(offline):
    model, config = mlxhydra.load_model(f"{REPO}@v1")
    theirs, _, their_config = mlx_lm_load(REPO, revision="v1", return_config=True)
    assert np.array_equal(logits(model), logits(theirs)) and config == their_config
    main, _ = mlxhydra.load_model(REPO)
    assert np.array_equal(logits(main), logits(mu.load_model(offline["b"])[0]))


def missing_id_message(cwd: Path, cache: Path) -> str:
    return (f"model=org/missing: no local directory {cwd / 'org/missing'}, and org/missing is not in the "
            f"Hugging Face cache {cache} (offline: HF_HUB_OFFLINE is set); download it with "
            "`hf download org/missing` or unset HF_HUB_OFFLINE")


@pytest.mark.parametrize("args, kwargs, error, message", [
    (("{a}", "quant.bits=7"), {}, ConfigError, "quant.bits=7: expected one of 2, 3, 4, 5, 6, 8"),
    (("{a}", "quant.nope=3"), {}, ConfigError,
     "Could not override 'quant.nope'. To append to your config use +quant.nope=3 Key 'nope' is not in struct"),
    (("{a}", "quant.bits=[4"), {}, OverrideSyntaxError,
     "override 'quant.bits=[4' is not valid Hydra override syntax: no viable alternative at input '[4' "
     "(quote values with special characters: key='value'; see https://hydra.cc/docs/advanced/override_grammar/basic/)"),
    (("m2",), {}, ConfigError,  # neither a path here, nor a Hub id, nor a preset
     "In 'config': Could not find 'model/m2' Available options in 'model': tiny tiny_long"),
    (("{a}", "model=tiny"), {}, ConfigError, "model=tiny: the model is mlxhydra.load()'s first argument"),
    (("{a}", "-m"), {}, ConfigError, "-m: mlxhydra.load() takes overrides, not the command's options "
                                     "(for a sweep, --help or --cfg run the mlxhydra command)"),
    (("org/tiny@v1",), {"revision": "main"}, ConfigError, "revision='main': org/tiny@v1 names its revision already"),
    (("./m2",), {"revision": "main"}, ConfigError,
     "revision='main': ./m2 is neither a local path nor a Hugging Face id 'org/name'"),
    (("{a}",), {"model_config": {"rope_theta": "high"}}, ConfigError, "model.rope_theta='high': expected float, got str"),
    (("{a}",), {"model_config": [("rope_theta", 1.0)]}, ConfigError,
     "model_config=[('rope_theta', 1.0)]: expected a dict of model config keys"),
    (("{a}",), {"adapter_path": "nope"}, ConfigError,
     "load.adapter_path=nope: {cwd}/nope does not exist (expected an mlx-lm adapter directory with "
     "adapter_config.json and adapters.safetensors)"),
    (("{a}", {"eos_token": "x"}), {}, TypeError,
     "mlxhydra.load: overrides are strings such as 'quant.bits=4', got {{'eos_token': 'x'}} "
     "(tokenizer_config= and model_config= are keywords)"),
])
def test_bad_input_is_one_line_naming_it(offline, tmp_path, args, kwargs, error, message):
    args = tuple(a.format(a=offline["a"]) if isinstance(a, str) else a for a in args)
    with pytest.raises(error) as raised:
        mlxhydra.load(*args, **kwargs)
    assert type(raised.value) is error and str(raised.value) == message.format(cwd=tmp_path)
    if error is not TypeError:  # shown as the command shows it: the line, not the trace through Hydra
        assert raised.value.__cause__ is None and raised.value.__suppress_context__
        assert len(raised.traceback) <= 3  # the test, the package's call, the API's raise


def test_an_unknown_hub_id_offline_is_the_commands_error(offline, tmp_path):
    expected = missing_id_message(tmp_path, offline["cache"])
    for load in (mlxhydra.load, mlxhydra.load_model):
        with pytest.raises(HubError) as raised:
            load("org/missing")
        assert str(raised.value) == expected
    with pytest.raises(HubError) as raised:
        compose(["model=org/missing"])  # the command's composition
    assert str(raised.value) == expected


def test_mlxhydra_load_is_both_the_function_and_the_package(tmp_path):
    import mlxhydra.load.loader as loader
    from mlxhydra import load as imported

    assert mlxhydra.load is sys.modules["mlxhydra.load"] is imported and mlxhydra.load.loader is loader
    assert callable(mlxhydra.load) and mlxhydra.run is api.run
    assert inspect.signature(mlxhydra.load) == inspect.signature(api.load)
    assert list(inspect.signature(mlx_lm_load).parameters)[1:] == [
        p for p in inspect.signature(api.load).parameters if p != "overrides"][1:]
    # import mlxhydra stays light: none of the API's dependencies, none of its own modules
    out = subprocess.run([sys.executable, "-c", "import sys, mlxhydra; print(sorted(m for m in sys.modules "
                          "if m.startswith('mlxhydra.') or m.split('.')[0] in "
                          "('mlx', 'mlx_lm', 'hydra', 'omegaconf', 'transformers')))"],
                         capture_output=True, text=True, cwd=tmp_path, check=True)
    assert out.stdout.strip() == "[]"


def process_state():
    root = logging.getLogger()
    return {
        "cwd": os.getcwd(), "argv": list(sys.argv), "root": (root.level, list(root.handlers)),
        "mlxhydra": (logging.getLogger("mlxhydra").level, list(logging.getLogger("mlxhydra").handlers)),
        "signals": [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)],
        "env": {k: os.environ.get(k) for k in ("HYDRA_FULL_ERROR", "MLXHYDRA_DEFER_MODEL_ERRORS")},
        "raiseExceptions": logging.raiseExceptions,
    }


def test_run_twice_in_one_process_returns_the_records_and_leaves_the_process_as_it_was(offline, tmp_path):
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    user_handler = logging.StreamHandler()  # a notebook's own logging stays as it is
    logging.getLogger().addHandler(user_handler)
    try:
        before = process_state()
        # A model quantized here (this thread) and then in the job's thread: MLX streams are per thread.
        model, tokenizer = mlxhydra.load(offline["a"], "quant.bits=4")
        expected_text = generate(model, tokenizer, "12+7=", max_tokens=5)
        same_dir = "hydra.run.dir=outputs/api_${mlxhydra_token:}"  # apart only by the per-run token
        first = mlxhydra.run(f"model={offline['a']}", same_dir)
        second = mlxhydra.run(f"model={offline['a']}", "quant.bits=4", same_dir, "task=generate",
                              "task.prompt='12+7='", "task.max_tokens=5")
        assert process_state() == before
        assert not GlobalHydra.instance().is_initialized() and HydraConfig.instance().cfg is None
    finally:
        logging.getLogger().removeHandler(user_handler)
    for record in (first, second):
        run_dir = Path(record["run_dir"])
        assert run_dir.parent == tmp_path / "outputs" and run_dir.name.startswith("api_")
        assert record == json.loads((run_dir / "run.json").read_text())
        assert record["status"] == "completed" and "error" not in record
        assert record["metrics"] == json.loads((run_dir / "metrics.json").read_text())
        assert record["cwd"] == str(tmp_path)
        assert "loaded llama" in (run_dir / "mlxhydra.log").read_text()
    assert first["run_dir"] != second["run_dir"]
    assert first["metrics"] == {} and first["quantization"]["source"] == "none"
    assert first["command"] == f"mlxhydra.run('model={offline['a']}', '{same_dir}')"
    assert first["overrides"] == [f"model={offline['a']}"]  # the task overrides, as the command records them
    assert second["quantization"]["bits_per_weight"] == pytest.approx(5.0955, abs=1e-4)
    assert second["metrics"]["text"] == expected_text and second["metrics"]["generation_tokens"] == 5
    assert (tmp_path / "outputs" / "latest").resolve() == Path(second["run_dir"])


def test_a_failed_run_raises_its_error_after_recording_it(offline, tmp_path):
    before = process_state()
    with pytest.raises(ConfigError) as failed:
        mlxhydra.run(f"model={offline['a']}", "quant.bits=7")  # fails in the job: validation
    assert str(failed.value) == "quant.bits=7: expected one of 2, 3, 4, 5, 6, 8"
    record = failed.value.record
    assert record == json.loads((failed.value.run_dir / "run.json").read_text())
    assert (record["status"], record["error"], record["error_type"]) == ("failed", str(failed.value), "ConfigError")
    assert "stage" not in record and record["run_dir"] == str(failed.value.run_dir)
    assert failed.value.__notes__ == [f"recorded in {failed.value.run_dir / 'run.json'}"]

    with pytest.raises(ModelDirNotFound) as early:
        mlxhydra.run("model=./nope")  # fails while Hydra composes
    assert str(early.value) == (f"model=./nope: {tmp_path / 'nope'} does not exist "
                                "(expected a model directory holding config.json)")
    assert (early.value.record["status"], early.value.record["stage"]) == ("failed", "compose")
    assert early.value.record["command"] == "mlxhydra.run('model=./nope')"
    assert process_state() == before
    import hydra

    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "app.yaml").write_text("lr: 0.1\n")
    with hydra.initialize_config_dir(config_dir=str(tmp_path / "mine"), version_base="1.3"):
        assert mlxhydra.run(f"model={offline['a']}")["status"] == "completed"  # the next one runs
        assert hydra.compose("app").lr == 0.1  # and the notebook's own Hydra still answers


@pytest.mark.parametrize("overrides, message", [
    (("-m", "quant.bits=2,4"), "-m: mlxhydra.run() takes overrides, not the command's options"),
    (("hydra.mode=MULTIRUN",), "hydra.mode=MULTIRUN: mlxhydra.run() runs one job (for a sweep run "
                               "the mlxhydra command with -m)"),
])
def test_run_refuses_a_sweep_before_writing_anything(tmp_path, monkeypatch, overrides, message):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as refused:
        mlxhydra.run(*overrides)
    assert str(refused.value).startswith(message)
    assert list(tmp_path.iterdir()) == []
