"""The real command in subprocesses: model paths, patches, overrides, the run directory."""

import hashlib
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import zipfile
import time
from datetime import datetime
from importlib import metadata
from pathlib import Path

import pytest
import yaml

from conftest import EMBEDDED_TINY, ROOT, read_run, run_cli, run_dirs

pytestmark = pytest.mark.slow

OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
HEAVY = ("mlx", "mlx_lm", "transformers")
LONG_CONTEXT = {"type": "linear", "factor": 4.0}


def canonical(value):
    """JSON text that tells 1 from 1.0 and True from 1 (== does not)."""
    return json.dumps(value, sort_keys=True)


def read_json(path):
    return json.loads(Path(path).read_text(encoding="utf-8"))


def link_model(source: Path, target: Path, **config) -> Path:
    """A model directory at ``target``: ``source``'s weights, its config.json plus ``config``."""
    target.mkdir(parents=True)
    for f in source.iterdir():
        if f.name != "config.json":
            (target / f.name).symlink_to(f)
    (target / "config.json").write_text(
        json.dumps({**config, **read_json(source / "config.json")}), encoding="utf-8")
    return target


def git(cwd, *args):
    return subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
        cwd=cwd, check=True, capture_output=True, text=True,
    ).stdout.strip()


@pytest.fixture
def repo(tmp_path):
    """A git repository with one committed file, as the run's cwd."""
    cwd = tmp_path / "repo"
    cwd.mkdir()
    git(cwd, "init", "-q")
    (cwd / "notes.txt").write_text("one\n")
    git(cwd, "add", "notes.txt")
    git(cwd, "commit", "-q", "-m", "first")
    return cwd


def only_run(cwd):
    dirs = run_dirs(cwd)
    assert len(dirs) == 1, dirs
    return dirs[0], read_run(dirs[0])


def assert_no_trace(result):
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr


def test_console_script_default_run_and_its_record(repo):
    """Behaviours 1, 5, 9: no overrides, offline, the embedded model, every record field."""
    import mlx.core as mx

    from mlxhydra.load.weight_files import combined_fingerprint, describe_files, fingerprint

    script = Path(sys.executable).parent / "mlxhydra"
    env = {**os.environ, **OFFLINE}
    env.pop("HYDRA_FULL_ERROR", None)
    wall = time.perf_counter()
    result = subprocess.run([str(script)], cwd=repo, env=env, capture_output=True, text=True,
                            timeout=300)
    wall = time.perf_counter() - wall
    assert result.returncode == 0, result.stderr
    run_dir, record = only_run(repo)
    assert run_dir.parent.parent == repo / "outputs" / "runs"

    assert record["status"] == "completed"
    started, ended = (datetime.fromisoformat(record[k]) for k in ("started", "ended"))
    assert started <= ended
    assert shlex.split(record["command"])[-1] == str(script)  # the interpreter, then the script
    assert record["overrides"] == []
    assert record["model_dir"] == str(EMBEDDED_TINY)
    assert record["git"]["commit"] == git(repo, "rev-parse", "HEAD")
    assert record["git"]["dirty"] is False  # outputs/ is untracked: not dirty

    raw = read_json(EMBEDDED_TINY / "config.json")
    assert canonical(read_json(run_dir / "model_config.json")) == canonical(raw)
    umask = os.umask(0o022)
    os.umask(umask)
    for name in ("run.json", "model_config.json"):  # readable like any file the user makes
        assert (run_dir / name).stat().st_mode & 0o777 == 0o666 & ~umask
    for name in ("config.yaml", "hydra.yaml", "overrides.yaml"):
        assert (run_dir / ".hydra" / name).is_file()
    assert yaml.safe_load((run_dir / ".hydra" / "overrides.yaml").read_text()) == []
    assert Path(record["log_file"]) == run_dir / "mlxhydra.log"
    assert "loaded llama from" in Path(record["log_file"]).read_text()

    shipped = sorted(EMBEDDED_TINY.glob("*.safetensors"))
    assert [f["file"] for f in record["weight_files"]] == [str(f) for f in shipped]
    for entry, f in zip(record["weight_files"], shipped):
        assert entry["bytes"] == f.stat().st_size
        assert entry["fingerprint"] == fingerprint(f, "fast")
        assert f.stat().st_size < 5 * 2**20  # small: "fast" hashes every byte
        assert entry["fingerprint"] == "full:sha256:" + hashlib.sha256(f.read_bytes()).hexdigest()
    assert record["weights_fingerprint"] == combined_fingerprint(describe_files(shipped, "fast"))
    assert record["weights_fingerprint"] == "sha256:" + hashlib.sha256(b"".join(
        f.name.encode() + b"\0" + e["fingerprint"].encode() + b"\0"
        for f, e in zip(shipped, record["weight_files"]))).hexdigest()

    weights = {}
    for f in shipped:
        weights.update(mx.load(str(f)))
    parameters = sum(v.size for v in weights.values())
    quantization = record["quantization"]
    assert quantization["source"] == "none"
    # Every 2-D weight is a Linear or Embedding layer that could be quantized.
    layers = sum(1 for k, v in weights.items() if k.endswith(".weight") and v.ndim == 2)
    assert layers == 7 * raw["num_hidden_layers"] + 2  # 7 projections a layer, embedding, lm_head
    assert quantization["quantized_layers"] == 0 and quantization["float_layers"] == layers
    assert record["parameters"] == quantization["parameters"] == parameters
    assert quantization["bits_per_weight"] == pytest.approx(
        8 * sum(v.nbytes for v in weights.values()) / parameters)

    times = record["times"]
    stages = ["compose", "environment", "validate", "checks", "fingerprint", "instantiate",
              "load_weights", "quantize", "task", "record"]
    assert [k for k in times if k != "startup"] == stages  # in the order they ran
    assert all(type(v) is float and v >= 0 for v in times.values()), times
    assert sum(times.values()) <= wall  # each stage timed inside the command, startup too
    # The weights were all in MLX memory at once.
    assert type(record["peak_memory_bytes"]) is int
    assert record["peak_memory_bytes"] >= sum(v.nbytes for v in weights.values())

    assert record["versions"]["python"] == platform.python_version()
    for package in ("mlx", "mlx-lm", "hydra-core", "omegaconf", "mlxhydra"):
        assert record["versions"][package] == metadata.version(package)
    assert record["platform"]["system"] == platform.system()
    assert record["platform"]["machine"] == platform.machine()
    assert record["platform"]["mlx_device"] == str(mx.default_device())


def test_quantized_run_in_a_dirty_repository(repo, llama_dir):
    (repo / "notes.txt").write_text("two\n")
    result = run_cli(f"model={llama_dir}", "quant=4bit", cwd=repo)
    assert result.returncode == 0, result.stderr
    _, record = only_run(repo)
    assert record["git"] == {"commit": git(repo, "rev-parse", "HEAD"), "dirty": True,
                             "root": str(repo)}
    assert record["overrides"] == [f"model={llama_dir}", "quant=4bit"]
    q = record["quantization"]
    assert q["source"] == "runtime"
    # 2 layers x 7 projections, the embedding and lm_head: all 16 quantized
    assert (q["quantized_layers"], q["float_layers"]) == (16, 0)
    # 4-bit weights, group scales and float norms: as mlx-lm counts them for its own 4-bit model
    from mlx_lm import utils as mu

    model, config = mu.load_model(llama_dir)
    model, _ = mu.quantize_model(model, config, 64, 4)
    assert q["bits_per_weight"] == pytest.approx(mu.compute_bits_per_weight(model), rel=1e-12)
    assert record["parameters"] == q["parameters"] == mu.get_total_parameters(model)
    assert 4.5 <= q["bits_per_weight"] < 5.5
    assert record["times"]["quantize"] > 0


def test_model_paths_in_one_sweep(tmp_path, llama_dir):
    """Relative, absolute, ~ and spaces + non-ASCII paths: the model node is the JSON exactly."""
    odd = {
        "env": "${oc.env:HOME}", "escaped": "\\${oc.env:HOME}", "two": "\\\\${x}",
        "nested": {"list": [1, None, {"deep": "${c}", "f": 2.0}], "none": None},
        "marker": "???", "big": 12345678901234567890, "whole_float": 3.0,
    }
    cwd, home = tmp_path / "cwd", tmp_path / "home"
    models = {
        "./rel": link_model(llama_dir, cwd / "rel", **odd),
        f"'{tmp_path / 'abs'}'": link_model(llama_dir, tmp_path / "abs", **odd),
        "'~/in home'": link_model(llama_dir, home / "in home", **odd),
        "'./my models/llamä ü'": link_model(llama_dir, cwd / "my models" / "llamä ü", **odd),
    }
    result = run_cli("-m", "model=" + ",".join(models), cwd=cwd, env={"HOME": str(home)})
    assert result.returncode == 0, result.stderr
    [sweep_dir] = (cwd / "outputs" / "multirun").glob("*/*")
    jobs = sorted(p for p in sweep_dir.iterdir() if p.is_dir())
    assert [p.name.split("_", 1)[0] for p in jobs] == ["0", "1", "2", "3"]
    for job, directory in zip(jobs, models.values()):
        assert job.name.startswith(f"{job.name[0]}_model=")
        assert (job / "run.json").is_file()  # one folder per job, nothing nested
        record = read_run(job)
        assert record["status"] == "completed"
        assert record["model_dir"] == str(directory) and Path(record["model_dir"]).is_absolute()
        raw = read_json(directory / "config.json")
        config = read_json(job / "model_config.json")
        assert canonical(config) == canonical(raw)
        assert list(config) == list(raw)
        assert config["env"] == "${oc.env:HOME}" and config["marker"] == "???"


@pytest.mark.parametrize("option, where", [
    ("~/in home", "home/in home"),
    ("./my models/llamä ü", "cwd/my models/llamä ü"),
])
def test_unquoted_home_and_non_ascii_paths(tmp_path, option, where):
    """Outside a sweep, model= paths need no Hydra quoting (the command adds it)."""
    directory = tmp_path / where
    directory.mkdir(parents=True)
    (directory / "config.json").write_text('{"model_type": "llama", "n": null}')
    (tmp_path / "cwd").mkdir(exist_ok=True)
    result = run_cli("--cfg", "job", f"model={option}", cwd=tmp_path / "cwd",
                     env={"HOME": str(tmp_path / "home")})
    assert result.returncode == 0, result.stderr
    shown = yaml.safe_load(result.stdout)
    assert shown["model_dir"] == str(directory)
    assert shown["model"] == {"model_type": "llama", "n": None}


@pytest.mark.parametrize("case, why", [
    ("missing", "does not exist"),
    ("a_file", "is not a directory"),
    ("empty", "has no config.json"),
])
def test_bad_model_path_is_one_clear_error(tmp_path, case, why):
    (tmp_path / "empty").mkdir()
    (tmp_path / "a_file").write_text("{}")
    path = tmp_path / case
    result = run_cli(f"model={path}", cwd=tmp_path)
    assert_no_trace(result)
    assert f"model={path}: {path} {why} (expected a model directory holding config.json)" \
        in result.stderr
    for run_dir in run_dirs(tmp_path):
        assert read_run(run_dir)["status"] == "failed"


def test_patch_without_brackets_matches_mlx_lm(tmp_path, llama_dir):
    """patch=long_context: model_config.json, and logits equal mlx-lm's with the same patch."""
    import mlx.core as mx
    from mlx_lm.utils import load_model as mlx_lm_load_model

    from mlxhydra.load.loader import build_model

    link_model(llama_dir, tmp_path / "llama")
    result = run_cli("model=./llama", "patch=long_context", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    run_dir, record = only_run(tmp_path)
    config = read_json(run_dir / "model_config.json")
    assert config == {**read_json(llama_dir / "config.json"), "rope_scaling": LONG_CONTEXT}
    assert record["model"]["changed_keys"] == ["rope_scaling"]

    tokens = mx.arange(24)[None]
    ours, _, _ = build_model(llama_dir, dict(config))
    theirs, _ = mlx_lm_load_model(llama_dir, model_config={"rope_scaling": LONG_CONTEXT})
    plain, _ = mlx_lm_load_model(llama_dir)
    assert mx.array_equal(ours(tokens), theirs(tokens)).item()
    assert not mx.allclose(ours(tokens), plain(tokens)).item()


def test_patch_order_and_a_user_patch_from_config_dir(tmp_path, llama_dir):
    """config.json < patches (in order) < command line; --config-dir adds patches."""
    (tmp_path / "my_conf" / "patch").mkdir(parents=True)
    (tmp_path / "my_conf" / "patch" / "mine.yaml").write_text(
        "# @package model\nmax_position_embeddings: 1024\nrope_theta: 7.0\n"
        "rope_scaling:\n  factor: 2.0\n")
    result = run_cli("--config-dir", "my_conf", f"model={llama_dir}",
                     "patch=[long_context,llama3_rope,mine]", "model.rope_theta=42.0",
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    run_dir, _ = only_run(tmp_path)
    llama3 = yaml.safe_load((ROOT / "conf" / "patch" / "llama3_rope.yaml").read_text())
    expected = {**read_json(llama_dir / "config.json"), "rope_theta": 42.0,
                "max_position_embeddings": 1024,
                "rope_scaling": {**llama3["rope_scaling"], "factor": 2.0}}
    assert canonical(read_json(run_dir / "model_config.json")) == canonical(expected)


def test_overrides_and_an_ignored_plus_key(tmp_path, llama_dir):
    """model_config.json is what ModelArgs.from_dict gets: mlx-lm's load_config + overrides."""
    model = link_model(llama_dir, tmp_path / "llama")
    (model / "generation_config.json").write_text('{"eos_token_id": [1, 2]}')
    result = run_cli("model=./llama", "model.rope_theta=500000", "+model.foo=1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    run_dir, record = only_run(tmp_path)
    config = read_json(run_dir / "model_config.json")
    assert config == {**read_json(llama_dir / "config.json"), "rope_theta": 500000, "foo": 1,
                      "eos_token_id": [1, 2]}
    assert isinstance(config["rope_theta"], int)
    assert record["model"]["derived_keys"] == ["eos_token_id"]
    assert record["model"]["ignored_user_keys"] == ["foo"]
    assert record["model"]["changed_keys"] == ["foo", "rope_theta"]
    warning = "mlx_lm.models.llama.ModelArgs ignores these model keys (not passed to the model): foo"
    assert warning in (run_dir / "mlxhydra.log").read_text()
    assert warning in result.stdout


def test_key_absent_from_the_model_is_refused(tmp_path, llama_dir):
    result = run_cli(f"model={llama_dir}", "model.foo=1", cwd=tmp_path)
    assert_no_trace(result)
    assert "Could not override 'model.foo'" in result.stderr
    assert "+model.foo=1" in result.stderr


def test_wrong_type_fails_and_is_recorded(tmp_path, llama_dir):
    message = "model.hidden_size='abc': expected int, got str"
    result = run_cli(f"model={llama_dir}", "model.hidden_size=abc", cwd=tmp_path)
    assert_no_trace(result)
    assert message in result.stderr
    _, record = only_run(tmp_path)
    assert record["status"] == "failed"
    assert record["error"] == message
    assert datetime.fromisoformat(record["started"]) <= datetime.fromisoformat(record["ended"])

    full = run_cli(f"model={llama_dir}", "model.hidden_size=abc", cwd=tmp_path,
                   env={"HYDRA_FULL_ERROR": "1"})
    assert full.returncode != 0
    assert "Traceback" in full.stderr and message in full.stderr


def imported_modules(stderr: str) -> set:
    """Module names from ``-X importtime`` output."""
    return {line.rsplit("|", 1)[1].strip() for line in stderr.splitlines()
            if line.startswith("import time:") and "|" in line}


@pytest.mark.parametrize("args, env, shows", [
    (["--help"], {}, "model: tiny"),
    (["--cfg", "job"], {}, "model_dir: "),
    # HYDRA_COMP_DEBUG=1: completion keeps stderr (where -X importtime writes) open
    (["-sc", "query=bash"], {"COMP_LINE": "mlxhydra model=", "HYDRA_COMP_DEBUG": "1"}, "model=tiny"),
    (["-sc", "query=bash"], {"COMP_LINE": "mlxhydra replay x model=", "HYDRA_COMP_DEBUG": "1"},
     "model=tiny"),
])
def test_help_cfg_and_completion_stay_light(tmp_path, args, env, shows):
    result = run_cli(*args, cwd=tmp_path, env={"PYTHONPROFILEIMPORTTIME": "1", **env})
    assert result.returncode == 0, result.stderr
    assert shows in result.stdout
    modules = imported_modules(result.stderr)
    assert {"hydra", "omegaconf", "mlxhydra.config.model_source"} <= modules
    heavy = sorted(m for m in modules if m.split(".")[0] in HEAVY)
    assert heavy == []


def test_two_runs_started_together_get_their_own_directories(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    procs = [subprocess.Popen([sys.executable, "-m", "mlxhydra"], cwd=tmp_path, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    dirs = run_dirs(tmp_path)
    assert len(dirs) == 2 and dirs[0] != dirs[1]
    assert all(read_run(d)["status"] == "completed" for d in dirs)


def test_wheel_ships_the_config_tree(tmp_path):
    source = tmp_path / "src"
    shutil.copytree(ROOT, source, symlinks=True, ignore=shutil.ignore_patterns(  # .venv: 1 GB
        ".git", ".venv", "outputs", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache"))
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--no-index", "-q", "-w", str(tmp_path / "dist"), str(source)],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr
    [wheel] = (tmp_path / "dist").glob("mlxhydra-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {f"mlxhydra/conf/{p.relative_to(ROOT / 'conf')}"
                for p in (ROOT / "conf").rglob("*.yaml")}
    assert "mlxhydra/conf/config.yaml" in expected
    assert {"mlxhydra/conf/patch/long_context.yaml", "mlxhydra/conf/quant/4bit.yaml",
            "mlxhydra/conf/model/tiny_long.yaml"} <= expected
    assert expected <= names
    assert "hydra_plugins/mlxhydra_model_source/__init__.py" in names
    assert "hydra_plugins/mlxhydra_resume/__init__.py" in names  # the sweepers of `mlxhydra resume`
    assert {"mlxhydra/conf/logger/mlflow.yaml", "mlxhydra/conf/hydra/help/mlxhydra.yaml"} <= names
    assert "mlxhydra/models/tiny/config.json" in names
    assert any(n.startswith("mlxhydra/models/tiny/") and n.endswith(".safetensors") for n in names)
    assert {f"mlxhydra/lm_eval_tasks/{n}" for n in (
        "__init__.py", "tiny_sums.yaml", "tiny_sums_mc.yaml", "tiny_sums_test.jsonl",
        "tiny_sums_fewshot.jsonl")} <= names  # task=lm_eval's offline default tasks
    assert not any(n.startswith("tests/") for n in names)


@pytest.mark.slow
def test_help_is_the_same_text_with_and_without_the_group_listing_cache(tmp_path):
    """mlxhydra.config.help_cache caches Hydra's group listings for --help; the text must not change."""
    plain = subprocess.run(
        [sys.executable, "-c",
         "import sys, mlxhydra.config.help_cache as f; f.install = lambda: False; "
         "from mlxhydra.cli import main; sys.argv = ['mlxhydra', '--help']; main()"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    cached = run_cli("--help", cwd=tmp_path)
    assert plain.returncode == cached.returncode == 0, plain.stderr + cached.stderr
    assert "quant: 4bit, 8bit, mixed_2_6" in cached.stdout
    assert cached.stdout == plain.stdout
