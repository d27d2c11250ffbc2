"""Faults, concurrency and security, through the real command.

- SIGINT (Ctrl-C) and SIGTERM while a model loads: run.json says
  ``interrupted``, exit 130 / 143, no temporary or half-written files.
- Eight runs started at once: eight run directories, each complete.
- Standard output closed by its reader (``| head``): no traceback, the record complete.
- Nothing in a model directory is interpolated or executed; no environment
  variable's value lands in a run directory; YAML is loaded safely.
"""

import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest

from conftest import default_signals, make_model, read_run, run_cli, run_dirs

pytestmark = pytest.mark.slow

SECRET = "s3cr3t-value-7f3a"


def assert_no_partial_files(run_dir: Path) -> None:
    """No temp files left, and every JSON file in the run directory parses whole."""
    leftovers = [p for p in run_dir.rglob("*") if p.name.endswith(".tmp")]
    assert not leftovers, leftovers
    for p in run_dir.rglob("*.json"):
        json.loads(p.read_text())


@pytest.fixture(scope="session")
def slow_model(tmp_path_factory) -> Path:
    """A 66M-parameter llama (265 MB): loading and quantizing it (quant.bits=4) takes
    a second or more, long enough to interrupt it."""
    return make_model(
        tmp_path_factory.mktemp("slow") / "llama", hidden_size=512, num_hidden_layers=8,
        intermediate_size=2048, vocab_size=32000, num_attention_heads=8, num_key_value_heads=8,
    )


def wait_for_loading(cwd: Path, proc: subprocess.Popen, timeout: float = 240) -> Path:
    """The run directory, once its run.json says running and lists the weight files:
    the record's last update before the weights are read and quantized."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        for run_dir in run_dirs(cwd):
            try:
                record = read_run(run_dir)
                if record["status"] == "running" and "weight_files" in record:
                    return run_dir
            except (OSError, ValueError):
                pass
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    raise AssertionError("run.json never said running with weight files")


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
@pytest.mark.xdist_group("slow_model")  # on one worker: the fixture is built once
def test_signal_while_loading_records_interrupted(slow_model, tmp_path, signum, code):
    env = dict(os.environ)
    env.pop("HYDRA_FULL_ERROR", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlxhydra", f"model={slow_model}", "quant.bits=4"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=default_signals,  # a runner started in the background ignores SIGINT
    )
    try:
        run_dir = wait_for_loading(tmp_path, proc)
        proc.send_signal(signum)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == code, stderr
    assert "Traceback" not in stderr, stderr
    assert f"mlxhydra: interrupted by {signal.Signals(signum).name}" in stderr
    record = read_run(run_dir)
    assert record["status"] == "interrupted", record
    assert record["error"] == f"interrupted by {signal.Signals(signum).name}"
    assert datetime.fromisoformat(record["started"]) <= datetime.fromisoformat(record["ended"])
    assert "quantization" not in record  # stopped while loading and quantizing
    assert not (run_dir / "metrics.json").exists()
    assert_no_partial_files(run_dir)


def test_eight_runs_at_once_get_eight_complete_run_directories(llama_dir, tmp_path):
    env = dict(os.environ)
    env.pop("HYDRA_FULL_ERROR", None)
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "mlxhydra", f"model={llama_dir}", f"seed={i}"],
            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for i in range(8)
    ]
    for p in procs:
        _, stderr = p.communicate(timeout=600)
        assert p.returncode == 0, stderr
    dirs = run_dirs(tmp_path)
    assert len(dirs) == 8 and len(set(dirs)) == 8
    expected_config = json.loads((llama_dir / "config.json").read_text())
    assert sorted(read_run(d)["seed"] for d in dirs) == list(range(8))
    for d in dirs:
        record = read_run(d)
        assert record["status"] == "completed", record
        assert record["run_dir"] == str(d)
        assert json.loads((d / "model_config.json").read_text()) == expected_config
        assert (d / "metrics.json").exists()
        assert_no_partial_files(d)


def test_config_json_values_are_never_interpolated_and_no_secret_is_recorded(llama_dir, tmp_path):
    """Interpolation-looking strings in config.json stay literal in model_config.json and
    run.json; an environment variable's value appears in no file of the run directory."""
    model = tmp_path / "model"
    model.mkdir()
    for f in llama_dir.iterdir():
        (model / f.name).write_bytes(f.read_bytes())
    config = json.loads((llama_dir / "config.json").read_text())
    literal = {
        "note_env": "${oc.env:MLXHYDRA_TEST_SECRET}",
        "note_home": "${oc.env:HOME}",
        "note_decode": "${oc.decode:'{a: ${oc.env:MLXHYDRA_TEST_SECRET}}'}",
        "note_escaped": "\\${model_dir}",
        "note_nested": {"x": ["${model_dir}", "$${y}"]},
    }
    (model / "config.json").write_text(json.dumps({**config, **literal}))
    # The value of an overridden key, so that it shows in the record's changed_keys.
    result = run_cli(f"model={model}", "model.rms_norm_eps=1e-6", cwd=tmp_path,
                     env={"MLXHYDRA_TEST_SECRET": SECRET})
    assert result.returncode == 0, result.stderr
    [run_dir] = run_dirs(tmp_path)
    saved = json.loads((run_dir / "model_config.json").read_text())
    for key, value in literal.items():
        assert saved[key] == value
    assert read_run(run_dir)["status"] == "completed"
    for path in run_dir.rglob("*"):
        if path.is_file():
            assert SECRET not in path.read_text(errors="replace"), path
    assert SECRET not in result.stdout + result.stderr


def test_yaml_is_loaded_safely(tmp_path):
    """A YAML tag that would run code under yaml.load/unsafe_load is refused unexecuted."""
    marker = tmp_path / "MARKER"
    conf = tmp_path / "myconf" / "quant"
    conf.mkdir(parents=True)
    (conf / "evil.yaml").write_text(
        f"bits: !!python/object/apply:os.system ['touch {marker}']\n")
    result = run_cli("--config-dir", str(tmp_path / "myconf"), "quant=evil", cwd=tmp_path)
    assert result.returncode == 1
    assert not marker.exists()
    assert "python/object/apply" in result.stderr
    [run_dir] = run_dirs(tmp_path)  # a composition failure, recorded all the same
    record = read_run(run_dir)
    assert record["status"] == "failed" and "python/object/apply" in record["error"]


def run_with_stdout_closed(cwd: Path, *args: str, read: int = 0) -> subprocess.CompletedProcess:
    """``python -m mlxhydra ARGS | head -c READ``: stdout's reader goes away after READ bytes."""
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    proc = subprocess.Popen([sys.executable, "-m", "mlxhydra", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if read:
        proc.stdout.read(read)
    proc.stdout.close()
    stderr = proc.stderr.read()
    proc.wait(timeout=300)
    return subprocess.CompletedProcess(proc.args, proc.returncode, "", stderr)


@pytest.mark.parametrize("read", [0, 10])
def test_stdout_closed_early_the_run_completes_and_says_so(tmp_path, read):
    """The streamed text cannot be printed; the run goes on: completed, every output written."""
    cwd = tmp_path / str(read)
    cwd.mkdir()
    result = run_with_stdout_closed(cwd, "task=generate", "task.stream=true", "task.prompt='41+28='",
                                    "task.max_tokens=24", read=read)
    assert (result.returncode, result.stderr) == (0, "")  # no BrokenPipeError, no traceback
    [run_dir] = run_dirs(cwd)
    record = read_run(run_dir)
    assert record["status"] == "completed" and record["metrics"]["generation_tokens"] == 24
    [line] = (run_dir / "generations.jsonl").read_text().splitlines()
    assert json.loads(line)["text"] == record["metrics"]["text"]
    assert ("standard output was closed (broken pipe): the run goes on; its output is in the run "
            "directory") in (run_dir / "mlxhydra.log").read_text()


def test_stdout_closed_early_a_failed_run_keeps_its_own_error(tmp_path):
    result = run_with_stdout_closed(tmp_path, "task=generate", "task.prompt='41+28='", "task.kv_bits=4")
    message = ("task.kv_group_size=64: this model's KV cache has head size 32, not a multiple of 64 "
               "(mx.quantize quantizes each head's vectors in groups); set task.kv_group_size=32")
    assert (result.returncode, result.stderr) == (1, message + "\n")
    record = read_run(run_dirs(tmp_path)[0])
    assert (record["status"], record["error"]) == ("failed", message)


def test_a_subcommand_whose_stdout_closes_ends_quietly(tmp_path):
    (tmp_path / "outputs").mkdir()
    result = run_with_stdout_closed(tmp_path, "runs", "--json")
    assert (result.returncode, result.stderr) == (0, "")
