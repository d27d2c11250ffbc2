"""Bad input through the real command: one clear error, non-zero exit, an honest run.json.

Every bad model directory is built once (session fixture) and every command of
the table runs once, a few at a time, in its own working directory; each case
then checks its own result:

- exit status 1 and no Python traceback on stderr (HYDRA_FULL_ERROR=1 gives one);
- the message names the file, key or value and what was expected;
- exactly one run directory, whose run.json says ``failed`` with that message,
  also for failures during Hydra's composition (before the job starts).
"""

import json
import os
import shlex
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import pytest

from conftest import make_model, read_run, run_cli, run_dirs
from helpers.privileges import privileges_dropped

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("bad_input")]  # one worker: fixtures built once

NON_ASCII_NAME = "mödèl dír ü 日本"
PARALLEL = 4


@dataclass
class Case:
    """One command of the table and what its error must say."""

    id: str
    args: Callable[[Dict[str, Path]], List[str]]  # models → command-line arguments
    says: Callable[[Dict[str, Path]], List[str]]  # models → texts the message must hold
    one_line: bool = True  # False for Hydra's own multi-line messages
    stage: Optional[str] = None  # "compose": failed before the job started
    env: Dict[str, str] = field(default_factory=dict)
    never: List[str] = field(default_factory=list)  # texts the message must not hold


def model(name: str, *more: str):
    return lambda m: [f"model={m[name]}", *more]


CASES = [
    Case("missing_path", model("missing"),
         lambda m: [str(m["missing"]), "does not exist", "expected a model directory"],
         stage="compose"),
    Case("file_not_dir", model("a_file"),
         lambda m: [str(m["a_file"]), "is not a directory"], stage="compose"),
    Case("no_config_json", model("no_config"),
         lambda m: [str(m["no_config"]), "has no config.json"], stage="compose"),
    Case("invalid_json", model("bad_json"),
         lambda m: [f"{m['bad_json']}/config.json", "invalid JSON at line 3 column 21"],
         stage="compose"),
    Case("json_not_object", model("not_object"),
         lambda m: [f"{m['not_object']}/config.json", "expected a JSON object", "found list"],
         stage="compose"),
    Case("empty_config", model("empty"),
         lambda m: [f"{m['empty']}/config.json is empty", "expected a JSON object"],
         stage="compose"),
    Case("model_type_missing", model("no_type"),
         lambda m: ["model.model_type is missing", "expected the name of an mlx-lm architecture"]),
    Case("model_type_unknown", model("unknown_type"),
         lambda m: ["model.model_type='lama'", "closest: llama"]),
    Case("no_weights", model("no_weights"),
         lambda m: [str(m["no_weights"]), "no model*.safetensors weight files"]),
    Case("truncated_safetensors", model("truncated"),
         lambda m: [f"{m['truncated']}/model.safetensors", "truncated"]),
    Case("corrupt_header_length", model("corrupt_length"),
         lambda m: [f"{m['corrupt_length']}/model.safetensors", "corrupt safetensors header"]),
    Case("corrupt_header_json", model("corrupt_json"),
         lambda m: [f"{m['corrupt_json']}/model.safetensors", "corrupt safetensors header"]),
    Case("wrong_shape", model("wrong_shape"),
         lambda m: ["weights do not fit the model", "6 wrong shape",
                    "model.layers.0.mlp.down_proj.weight (64, 96) vs model (64, 128)"]),
    Case("missing_weights_strict", model("missing_weights"),
         lambda m: ["weights do not fit the model", "9 missing",
                    "model.layers.1.mlp.down_proj.weight"]),
    Case("extra_weights_strict", model("extra_weights"),
         lambda m: ["weights do not fit the model", "9 unexpected",
                    "model.layers.2.mlp.down_proj.weight"]),
    Case("override_unknown_key", model("good", "model.no_such_key=1"),
         lambda m: ["Could not override 'model.no_such_key'", "Key 'no_such_key' is not in struct"],
         one_line=False, stage="compose"),
    Case("bad_override_syntax", model("good", "model.hidden_size=[1,"),
         lambda m: ["override 'model.hidden_size=[1,' is not valid Hydra override syntax",
                    "no viable alternative at input '[1,'"], stage="compose"),
    Case("wrong_type", model("good", "model.hidden_size=abc"),
         lambda m: ["model.hidden_size='abc': expected int, got str"]),
    Case("quant_bits_7", model("good", "quant.bits=7"),
         lambda m: ["quant.bits=7: expected one of 2, 3, 4, 5, 6, 8"]),
    Case("quant_mxfp4_8_bits", model("good", "quant.mode=mxfp4", "quant.bits=8"),
         lambda m: ["quant.bits=8: mode mxfp4 takes 4 bits only"]),
    Case("quant_group_size_48", model("good", "quant.group_size=48"),
         lambda m: ["quant.group_size=48: expected one of 32, 64, 128"]),
    Case("quant_rule_bad_regex", model("good", 'quant.rules=[{pattern: "(", bits: 4}]'),
         lambda m: ["quant.rules[0].pattern='(' does not compile"]),
    Case("model_file_untrusted", model("remote"),
         lambda m: [f"{m['remote']}/config.json sets model_file='evil.py'",
                    f"{m['remote']}/evil.py is refused", "load.trust_remote_code=true"]),
    Case("model_file_flag_as_string", model("remote", "load.trust_remote_code=no"),
         lambda m: ["load.trust_remote_code='no': expected true or false"]),
    Case("unresolvable_interpolation", model("good", "model.hidden_size=${oc.env:MLXHYDRA_UNSET}"),
         lambda m: ["model.hidden_size:", "Environment variable 'MLXHYDRA_UNSET' not found"]),
    Case("model_file_trusted", model("remote_trusted", "load.trust_remote_code=true"),
         lambda m: [f"{m['remote_trusted']}/evil.py defines no Model or ModelArgs"]),
    # ??? typed on the command line is OmegaConf's missing value, never the string '???'
    # (a config.json string "???" stays the string: see test_compose.py and test_cli.py).
    Case("missing_value_quant", model("good", "quant.bits=???"),
         lambda m: ["quant.bits: Missing mandatory value: bits"], never=["'???'"]),
    Case("missing_value_model", model("good", "model.hidden_size=???"),
         lambda m: ["model.hidden_size: Missing mandatory value: hidden_size"], never=["'???'"]),
    # A saved per-layer quantization entry that the weights contradict (mlx-lm refuses it too).
    Case("per_layer_entry_disagrees", model("per_layer_disagrees"),
         lambda m: ["weights do not fit the model", "1 wrong shape: "
                    "model.layers.0.mlp.down_proj.weight (64, 16) vs model (64, 32)"]),
]
BY_ID = {c.id: c for c in CASES}


def _copy(good: Path, target: Path) -> Path:
    shutil.copytree(good, target)
    return target


def _set_config(directory: Path, config: dict) -> None:
    (directory / "config.json").write_text(json.dumps(config))


def _evil(directory: Path) -> None:
    """A model_file that leaves a marker when it runs (and defines no classes)."""
    marker = directory / "MARKER"
    (directory / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")


@pytest.fixture(scope="session")
def models(tmp_path_factory) -> Dict[str, Path]:
    """Every bad (and one good) model directory of the table, built once."""
    root = tmp_path_factory.mktemp("bad_models")
    good = make_model(root / "good")
    config = json.loads((good / "config.json").read_text())
    m = {"good": good, "missing": root / "missing"}
    m["a_file"] = root / "a_file"
    m["a_file"].write_text("not a directory\n")
    m["no_config"] = root / "no_config"
    m["no_config"].mkdir()
    m["bad_json"] = _copy(good, root / "bad_json")
    (m["bad_json"] / "config.json").write_text(
        '{\n  "model_type": "llama",\n  "hidden_size": 64,,\n}\n')
    m["not_object"] = _copy(good, root / "not_object")
    (m["not_object"] / "config.json").write_text("[1, 2]\n")
    m["empty"] = _copy(good, root / "empty")
    (m["empty"] / "config.json").write_text("")
    m["no_type"] = _copy(good, root / "no_type")
    _set_config(m["no_type"], {k: v for k, v in config.items() if k != "model_type"})
    m["unknown_type"] = _copy(good, root / "unknown_type")
    _set_config(m["unknown_type"], {**config, "model_type": "lama"})
    m["no_weights"] = _copy(good, root / "no_weights")
    (m["no_weights"] / "model.safetensors").unlink()
    m["truncated"] = _copy(good, root / "truncated")
    data = (good / "model.safetensors").read_bytes()
    (m["truncated"] / "model.safetensors").write_bytes(data[: len(data) // 2])
    m["corrupt_length"] = _copy(good, root / "corrupt_length")
    (m["corrupt_length"] / "model.safetensors").write_bytes((10**12).to_bytes(8, "little") + data[8:])
    m["corrupt_json"] = _copy(good, root / "corrupt_json")
    (m["corrupt_json"] / "model.safetensors").write_bytes(data[:8] + b"garbage!!!!!" + data[20:])
    # Weights saved from other shapes, served under the good config.
    for name, change in (("wrong_shape", {"intermediate_size": 96}),
                         ("missing_weights", {"num_hidden_layers": 1}),
                         ("extra_weights", {"num_hidden_layers": 3})):
        m[name] = make_model(root / name, **change)
        _set_config(m[name], config)
    for name in ("remote", "remote_trusted"):
        m[name] = _copy(good, root / name)
        _set_config(m[name], {**config, "model_file": "evil.py"})
        _evil(m[name])
    m["non_ascii"] = _copy(good, root / NON_ASCII_NAME)
    # Saved at 4 bits; config.json says one layer has 8.
    m["per_layer_disagrees"] = make_model(root / "per_layer_disagrees", quantize=4)
    q4 = json.loads((m["per_layer_disagrees"] / "config.json").read_text())
    q4["quantization"]["model.layers.0.mlp.down_proj"] = {"group_size": 64, "bits": 8}
    _set_config(m["per_layer_disagrees"], {**q4, "quantization_config": q4["quantization"]})
    return m


@pytest.fixture(scope="session")
def results(models, tmp_path_factory) -> Dict[str, Tuple[subprocess.CompletedProcess, Path]]:
    """Run every case of the table once, PARALLEL at a time."""
    def one(case: Case):
        cwd = tmp_path_factory.mktemp(f"case_{case.id}")
        return case.id, (run_cli(*case.args(models), cwd=cwd, env=case.env), cwd)

    with ThreadPoolExecutor(PARALLEL) as pool:
        return dict(pool.map(one, CASES))


def assert_failed_cleanly(result, cwd: Path, says: List[str], one_line: bool = True,
                          never: List[str] = (), overrides: Optional[List[str]] = None) -> dict:
    """Exit 1, no traceback, the texts on stderr, one run.json saying failed with them.

    ``overrides``: the command's overrides (default: every argument after ``-m mlxhydra``).
    """
    assert result.returncode == 1, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    for text in says:
        assert text in result.stderr, (text, result.stderr)
    for text in never:
        assert text not in result.stderr, (text, result.stderr)
    [run_dir] = run_dirs(cwd)
    record = read_run(run_dir)
    assert record["status"] == "failed", record
    for text in says:
        assert text in record["error"], (text, record["error"])
    if one_line:
        assert "\n" not in record["error"], record["error"]
    assert datetime.fromisoformat(record["started"]) <= datetime.fromisoformat(record["ended"])
    assert record["command"] == shlex.join(result.args)
    assert record["versions"]["mlx"] == metadata.version("mlx")
    assert record["overrides"] == (list(result.args[3:]) if overrides is None else overrides)
    assert not list(run_dir.rglob(".*.tmp")), list(run_dir.rglob("*"))
    return record


@pytest.mark.parametrize("case_id", list(BY_ID))
def test_bad_input_fails_with_one_clear_error_and_a_record(case_id, results, models):
    case = BY_ID[case_id]
    result, cwd = results[case_id]
    record = assert_failed_cleanly(result, cwd, case.says(models), case.one_line, case.never)
    if case.stage == "compose":
        # Hydra failed before any job: the command still wrote the record.
        assert record["stage"] == "compose"
        assert Path(record["run_dir"]).parent.parent == cwd / "outputs" / "runs"
    else:
        assert record["model_dir"] == case.args(models)[0].split("=", 1)[1]


def test_model_file_never_runs_without_trust_remote_code(results, models):
    """The untrusted model_file left no marker; the trusted one did (so the marker works)."""
    assert results["model_file_untrusted"][0].returncode == 1
    assert results["model_file_flag_as_string"][0].returncode == 1  # "no" is not taken as true
    assert not (models["remote"] / "MARKER").exists()
    assert (models["remote_trusted"] / "MARKER").read_text() == "ran"


def test_a_path_with_spaces_and_non_ascii_characters_works(models, tmp_path):
    """Unquoted (as a shell user types it) and quoted in Hydra's grammar."""
    path = models["non_ascii"]
    for i, arg in enumerate([f"model={path}", f"model='{path}'"]):
        cwd = tmp_path / str(i)
        cwd.mkdir()
        result = run_cli(arg, cwd=cwd)
        assert result.returncode == 0, result.stderr
        [run_dir] = run_dirs(cwd)
        record = read_run(run_dir)
        assert record["status"] == "completed"
        assert record["model_dir"] == str(path)
        assert json.loads((run_dir / "model_config.json").read_text()) == json.loads(
            (path / "config.json").read_text())


def test_hydra_full_error_prints_the_trace_and_still_records(models, tmp_path):
    for name, expected in (("missing", "does not exist"), ("unknown_type", "closest: llama")):
        cwd = tmp_path / name
        cwd.mkdir()
        result = run_cli(f"model={models[name]}", cwd=cwd, env={"HYDRA_FULL_ERROR": "1"})
        assert result.returncode == 1
        assert "Traceback (most recent call last)" in result.stderr
        assert expected in result.stderr
        [run_dir] = run_dirs(cwd)
        record = read_run(run_dir)
        assert record["status"] == "failed" and expected in record["error"]


def test_compose_failure_respects_hydra_run_dir_and_skips_cfg(models, tmp_path):
    """A hydra.run.dir= override is where the record goes; --cfg/--help write none."""
    result = run_cli(f"model={models['missing']}", "hydra.run.dir=mine/run", cwd=tmp_path)
    assert result.returncode == 1
    record = read_run(tmp_path / "mine" / "run")
    assert record["status"] == "failed" and "does not exist" in record["error"]
    assert record["run_dir"] == str(tmp_path / "mine" / "run")
    for flags in (["--cfg", "job"], ["--help"]):
        cwd = tmp_path / flags[0].strip("-")
        cwd.mkdir()
        result = run_cli(*flags, f"model={models['missing']}", cwd=cwd)
        assert not (cwd / "outputs").exists()


def test_unreadable_config_json(models, tmp_path):
    """chmod 000 config.json → "permission denied" naming the file.

    Tests usually run as root, for whom file permissions do not bite: root
    reads a mode-000 file through its CAP_DAC_OVERRIDE capability. Then the
    command runs still as root but without CAP_DAC_OVERRIDE and
    CAP_DAC_READ_SEARCH (``setpriv``), so the permission check is real.
    """
    directory = _copy(models["good"], tmp_path / "model")
    (directory / "config.json").chmod(0o000)
    prefix = privileges_dropped()
    env = dict(os.environ)
    env.pop("HYDRA_FULL_ERROR", None)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    try:
        result = subprocess.run(
            [*prefix, sys.executable, "-m", "mlxhydra", f"model={directory}"], cwd=cwd, env=env,
            capture_output=True, text=True, timeout=300,
        )
    finally:
        (directory / "config.json").chmod(0o644)
    if prefix and result.returncode != 1 and "setpriv" in result.stderr:
        pytest.skip(f"cannot drop privileges here: {result.stderr.strip()[-300:]}")
    result.args = result.args[len(prefix):]
    assert_failed_cleanly(result, cwd, [f"{directory}/config.json: permission denied"])


@pytest.fixture(scope="session")
def tok_model(tmp_path_factory) -> Path:
    """A random llama (vocab 128) with the embedded model's character tokenizer."""
    import tiny_data  # scripts/, on sys.path through conftest

    directory = make_model(tmp_path_factory.mktemp("tok") / "m", vocab_size=128,
                           bos_token_id=1, eos_token_id=2)
    tiny_data.save_tokenizer(directory)
    return directory


@pytest.mark.parametrize("kind, says", [("missing", "does not exist"), ("empty", "is empty"),
                                        ("latin1", "is not UTF-8 text (byte 0xe9 at offset 3, line 1)")])
def test_task_data_file_missing_or_empty(kind, says, tok_model, tmp_path):
    data = tmp_path / "data.txt"
    if kind == "empty":
        data.write_text("")
    if kind == "latin1":
        data.write_bytes(b"caf\xe9\n")
    result = run_cli(f"model={tok_model}", "task=perplexity", f"task.data={data}", cwd=tmp_path)
    record = assert_failed_cleanly(result, tmp_path, ["task.data", str(data), says])
    assert record["error_type"] == "ConfigError"  # a setting: refused before loading
    assert "weight_files" not in record


@pytest.mark.parametrize("group, text, key", [
    ("quant", "bits: ???\n", "quant.bits"),
    ("load", "strict: true\ndtype: ???\n", "load.dtype"),
])
def test_missing_value_in_a_preset_is_a_missing_value_error(tmp_path, group, text, key):
    """``???`` in a user's preset YAML: a missing value named by key, not the string '???'."""
    (tmp_path / "conf" / group).mkdir(parents=True)
    (tmp_path / "conf" / group / "mine.yaml").write_text(text)
    result = run_cli("--config-dir", "conf", f"{group}=mine", cwd=tmp_path)
    record = assert_failed_cleanly(
        result, tmp_path, [f"{key}: Missing mandatory value: {key.split('.')[1]}"], never=["'???'"],
        overrides=[f"{group}=mine"])
    assert record["error_type"] == "ConfigError"
