"""Broken and hostile input through the real command: one row per class of the hardening issue.

Every row runs ``python -m mlxhydra ...`` (or a subcommand) in its own working
directory, a few at a time, with a secret in the environment. Each row then
holds to what a user relies on:

- the exit status it names (1 for bad input, 2 for a damaged run directory
  given to a subcommand, 0 where the hostile part must simply stay inert);
- no Python traceback, and none of Hydra's ``Error executing job`` /
  ``HYDRA_FULL_ERROR`` lines around the message: one line holds every text
  the row expects;
- an honest record: the run's ``run.json`` says ``failed`` with that line,
  or, where none can be written, no record at all (the message says so);
- the secret appears in no output stream and no file written;
- a marker file for code that must not run is never created.
"""

import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

import pytest
import yaml

from conftest import EMBEDDED_TINY, make_model, read_run, run_cli, run_dirs

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("hostile")]  # one worker: fixtures built once

SECRET = "hostile-s3cr3t-4e1d"
SECRET_VAR = "MLXHYDRA_HOSTILE_SECRET"
PARALLEL = 4

Ctx = Dict[str, Path]  # the fixture's paths (models, markers, runs) and "cwd": the row's own


@dataclass
class Row:
    """One command and what must hold after it."""

    id: str
    args: Callable[[Ctx], List[str]]  # ctx -> arguments after "python -m mlxhydra"
    says: Callable[[Ctx], List[str]]  # texts one line of stderr holds (stdout for exit 0)
    exit: int = 1
    record: Optional[str] = "failed"  # status of the one run.json under cwd/outputs; None: no
    # record at all; "own": the row's check looks at its records
    before_weights: bool = False  # refused before any weight file was fingerprinted
    setup: Optional[Callable[[Ctx], None]] = None
    check: Optional[Callable[[Ctx, subprocess.CompletedProcess], None]] = None
    markers: List[str] = field(default_factory=list)  # ctx keys of marker files that must not exist


def model(name: str, *more: str):
    return lambda c: [f"model={c[name]}", *more]


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, symlinks=True)
    return dst


def _config(directory: Path, **changes) -> None:
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, **changes}))


def _nested(depth: int) -> dict:
    root = node = {}
    for _ in range(depth):
        node["a"] = {}
        node = node["a"]
    return root


def _overlapping_header(directory: Path) -> None:
    """Two tensors' data_offsets made to overlap (sizes stay right: only the offsets lie)."""
    path = directory / "model.safetensors"
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    names = sorted((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"])
    a, b = header[names[0]], header[names[1]]
    a_size = a["data_offsets"][1] - a["data_offsets"][0]
    b_size = b["data_offsets"][1] - b["data_offsets"][0]
    b["data_offsets"] = [a["data_offsets"][0] + 4, a["data_offsets"][0] + 4 + b_size]
    assert a_size > 4
    raw = json.dumps(header).encode()
    raw += b" " * (n - len(raw)) if len(raw) <= n else b""
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + data[8 + n:])


def _marker_code(marker: Path) -> str:
    return f"open({str(marker)!r}, 'w').write('ran')\n"


@pytest.fixture(scope="module")
def ctx(tmp_path_factory) -> Ctx:
    """Every model directory, run directory and marker the rows use, built once."""
    import mlx.core as mx

    root = tmp_path_factory.mktemp("hostile")
    c: Ctx = {"root": root, "hf_home": root / "hf"}
    good = c["good"] = make_model(root / "good")
    for name, edit in {
        "weight_dir": lambda d: ((d / "model.safetensors").unlink(), (d / "model.safetensors").mkdir()),
        "weight_loop": lambda d: ((d / "model.safetensors").unlink(),
                                  (d / "model.safetensors").symlink_to("model.safetensors")),
        "weight_dangling": lambda d: ((d / "model.safetensors").unlink(),
                                      (d / "model.safetensors").symlink_to(d / "gone.safetensors")),
        "weight_fifo": lambda d: ((d / "model.safetensors").unlink(), os.mkfifo(d / "model.safetensors")),
        "weight_device": lambda d: ((d / "model.safetensors").unlink(),
                                    (d / "model.safetensors").symlink_to("/dev/zero")),
        "deep_config": lambda d: _config(d, extra=_nested(200)),
        "huge_config": lambda d: _config(d, extra=list(range(300_000))),
        "str_layers": lambda d: _config(d, num_hidden_layers="2"),
        "float_layers": lambda d: _config(d, num_hidden_layers=2.0),
        "generation_list": lambda d: (d / "generation_config.json").write_text("[2]"),
        "overlap": _overlapping_header,
    }.items():
        c[name] = _copy(good, root / name)
        edit(c[name])
    c["int_weights"] = _copy(good, root / "int_weights")
    weights = mx.load(str(good / "model.safetensors"))
    weights["model.layers.0.mlp.up_proj.weight"] = weights["model.layers.0.mlp.up_proj.weight"].astype(mx.int32)
    mx.save_safetensors(str(c["int_weights"] / "model.safetensors"), weights)

    # The embedded model (it has a tokenizer and eval.txt) with hostile tokenizer files.
    c["tokenizer_list"] = _copy(EMBEDDED_TINY, root / "tokenizer_list")
    (c["tokenizer_list"] / "tokenizer_config.json").write_text("[]")
    c["tokenizer_marker"] = root / "TOKENIZER_CODE_RAN"
    c["tokenizer_code"] = _copy(EMBEDDED_TINY, root / "tokenizer_code")
    tok_config = json.loads((EMBEDDED_TINY / "tokenizer_config.json").read_text())
    tok_config.update(tokenizer_class="MarkerTokenizer",
                      auto_map={"AutoTokenizer": [None, "marker_tokenizer.MarkerTokenizer"]})
    (c["tokenizer_code"] / "tokenizer_config.json").write_text(json.dumps(tok_config))
    (c["tokenizer_code"] / "marker_tokenizer.py").write_text(
        _marker_code(c["tokenizer_marker"]) + "from transformers import PreTrainedTokenizerFast\n\n\n"
        "class MarkerTokenizer(PreTrainedTokenizerFast):\n    pass\n")
    c["tokenizer_trusted"] = _copy(c["tokenizer_code"], root / "tokenizer_trusted")
    c["trusted_marker"] = root / "TRUSTED_TOKENIZER_CODE_RAN"
    (c["tokenizer_trusted"] / "marker_tokenizer.py").write_text(
        (c["tokenizer_code"] / "marker_tokenizer.py").read_text().replace(
            str(c["tokenizer_marker"]), str(c["trusted_marker"])))

    # A past run directory that ran a model_file with consent: a KL reference must not inherit it.
    c["model_file_marker"] = root / "MODEL_FILE_RAN"
    remote = c["remote"] = _copy(EMBEDDED_TINY, root / "remote")
    _config(remote, model_file="evil.py")
    (remote / "evil.py").write_text(_marker_code(c["model_file_marker"]))
    past = c["past_run"] = root / "past_run"
    (past / ".hydra").mkdir(parents=True)
    (past / ".hydra" / "overrides.yaml").write_text(f"- model={remote}\n- load.trust_remote_code=true\n")
    (past / ".hydra" / "config.yaml").write_text(yaml.safe_dump({
        "model_dir": str(remote), "seed": 0, "quant": {"bits": None, "mode": "affine"},
        "load": {"strict": True, "trust_remote_code": True}, "task": {"name": "load"}}))
    (past / "model_config.json").write_text((remote / "config.json").read_text())
    (past / "run.json").write_text(json.dumps({"status": "completed", "model_dir": str(remote)}))

    # A real run of the embedded model, copied and damaged by the subcommand rows.
    c["runs_cwd"] = root / "runs_cwd"
    c["runs_cwd"].mkdir()
    result = run_cli("task=load", cwd=c["runs_cwd"])
    assert result.returncode == 0, result.stderr
    [c["real_run"]] = run_dirs(c["runs_cwd"])
    # Model directory whose name reads like an interpolation of the secret.
    c["dollar_model"] = _copy(good, root / f"m${{oc.env:{SECRET_VAR}}}")
    c["callback_marker"] = root / "CALLBACK_RAN"
    return c


def _damaged_run(c: Ctx, name: str, edit: Callable[[Path], None]) -> Path:
    run = _copy(c["real_run"], c["cwd"] / name)
    edit(run)
    return run


def _sweep_with(c: Ctx, record: Optional[dict], plan: Optional[str]) -> Path:
    sweep = c["cwd"] / "sweep"
    (sweep / "0_seed=1").mkdir(parents=True)
    if record is not None:
        (sweep / "0_seed=1" / "run.json").write_text(json.dumps(record))
    if plan is not None:
        (sweep / "multirun.yaml").write_text(plan)
    return sweep


def _taken_run_dir(c: Ctx) -> None:
    (c["cwd"] / "taken").mkdir()
    (c["cwd"] / "taken" / "run.json").write_text('{"status": "completed", "note": "ORIGINAL"}')


def _untouched_run(c: Ctx, _result) -> None:
    assert (c["cwd"] / "taken" / "run.json").read_text() == '{"status": "completed", "note": "ORIGINAL"}'
    assert sorted(p.name for p in (c["cwd"] / "taken").iterdir()) == ["run.json"]


def _taken_sweep_dir(c: Ctx) -> None:
    _sweep_with(c, {"status": "completed"}, "hydra: {}\n")


def _untouched_sweep(c: Ctx, _result) -> None:
    sweep = c["cwd"] / "sweep"
    assert sorted(p.name for p in sweep.iterdir()) == ["0_seed=1", "multirun.yaml"]
    assert json.loads((sweep / "0_seed=1" / "run.json").read_text()) == {"status": "completed"}


def _sweep_jobs_fail_alone(c: Ctx, result) -> None:
    [sweep] = (c["cwd"] / "outputs" / "multirun").glob("*/*")
    jobs = sorted((p for p in sweep.iterdir() if p.is_dir()), key=lambda p: int(p.name.split("_")[0]))
    runs = [read_run(j) for j in jobs]
    assert [r["status"] for r in runs] == ["completed", "failed", "failed", "completed"]
    assert "does not exist" in runs[1]["error"] and "nested more than" in runs[2]["error"]
    assert all("\n" not in r.get("error", "") for r in runs)
    assert "2 of 4 jobs failed" in result.stderr
    assert (sweep / "summary.csv").read_text().count("failed") == 2


def _uncomposable_job_fails_alone(c: Ctx, result) -> None:
    [sweep] = (c["cwd"] / "outputs" / "multirun").glob("*/*")
    jobs = sorted((p for p in sweep.iterdir() if p.is_dir()), key=lambda p: int(p.name.split("_")[0]))
    assert [j.name for j in jobs] == ["0_quant=nosuch", "1_quant=none"]
    failed, completed = (read_run(j) for j in jobs)
    assert completed["status"] == "completed" and failed["status"] == "failed"
    assert 'Could not find "quant/nosuch"' in failed["error"] and "\n" not in failed["error"]
    assert "weight_files" not in failed


def _replay_of_a_tampered_record(c: Ctx) -> None:
    """A real run whose recorded overrides ask for a callback, an interpolation and consent."""
    result = run_cli("task=load", cwd=c["cwd"])
    assert result.returncode == 0, result.stderr
    [run] = run_dirs(c["cwd"])
    c["tampered"] = run
    overrides = yaml.safe_load((run / ".hydra" / "overrides.yaml").read_text())
    overrides += ["+hydra.callbacks.evil._target_=os.mkdir",
                  f"+hydra.callbacks.evil.path={c['callback_marker']}",
                  f"+model.note=${{oc.env:{SECRET_VAR}}}", "load.trust_remote_code=true"]
    (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    hydra = yaml.safe_load((run / ".hydra" / "hydra.yaml").read_text())
    hydra["hydra"]["overrides"]["hydra"] += ["hydra/job_logging=none", "hydra.searchpath=[file:///tmp]"]
    (run / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump(hydra))


def _replay_dropped_them(c: Ctx, result) -> None:
    assert result.stderr.splitlines()[0] == (
        "mlxhydra: replay: dropped recorded settings that are not re-applied: "
        "+hydra.callbacks.evil._target_=os.mkdir (not an mlxhydra setting), "
        f"+hydra.callbacks.evil.path={c['callback_marker']} (not an mlxhydra setting), "
        f"+model.note=${{oc.env:{SECRET_VAR}}} (an interpolation), "
        "load.trust_remote_code=true (consent to run code: give it to this command), "
        "hydra/job_logging=none (a Hydra setting), hydra.searchpath=[file:///tmp] (a Hydra setting)"
    ), result.stderr
    assert "replay matches" in result.stdout, result.stdout


def _diff_shows_text(c: Ctx, result) -> None:
    assert f"${{oc.env:{SECRET_VAR}}}" in result.stdout, result.stdout


def _literal_model_dir(c: Ctx, result) -> None:
    [run] = run_dirs(c["cwd"])
    record = read_run(run)
    assert record["status"] == "completed"
    assert record["model_dir"] == str(c["cwd"] / c["dollar_model"].name)  # "${" kept as text
    assert record["choices"]["model"] == f"./{c['dollar_model'].name}"


def _tokenizer_code_ran(c: Ctx, result) -> None:
    assert c["trusted_marker"].read_text() == "ran"  # consent given: the tokenizer loader got it
    assert read_run(run_dirs(c["cwd"])[0])["status"] == "completed"


def _no_replay_started(c: Ctx, _result) -> None:
    assert not list((c["runs_cwd"] / "outputs" / "runs").glob("*/*_replay-*"))


ROWS = [
    # --- file system: weight files that are not regular files, names too long
    Row("weight_is_a_directory", model("weight_dir"),
        lambda c: [f"{c['weight_dir']}/model.safetensors is a directory, not a regular file"],
        before_weights=True),
    Row("weight_symlink_loop", model("weight_loop"),
        lambda c: [f"{c['weight_loop']}/model.safetensors is a symlink loop"], before_weights=True),
    Row("weight_dangling_symlink", model("weight_dangling"),
        lambda c: [f"{c['weight_dangling']}/model.safetensors is a dangling symlink"],
        before_weights=True),
    Row("weight_fifo_never_read", model("weight_fifo"),
        lambda c: [f"{c['weight_fifo']}/model.safetensors is a FIFO (named pipe)"], before_weights=True),
    Row("weight_device_never_read", model("weight_device"),
        lambda c: [f"{c['weight_device']}/model.safetensors is a character device"],
        before_weights=True),
    Row("model_name_too_long", lambda c: ["model=./" + "n" * 300],
        lambda c: ["has a name too long for the file system"]),
    Row("outputs_is_a_file", lambda c: [],
        lambda c: [f"{c['cwd']}/outputs is not a directory"], record=None,
        setup=lambda c: (c["cwd"] / "outputs").write_text("a file\n")),
    Row("unusable_run_dir", lambda c: ["hydra.run.dir=/dev/null/run"],
        lambda c: ["hydra.run.dir=/dev/null/run: cannot be created: /dev/null is not a directory"],
        record=None),
    Row("run_dir_of_another_run", lambda c: ["hydra.run.dir=taken"],
        lambda c: ["already holds another run's record", "leave hydra.run.dir unset"], record=None,
        setup=_taken_run_dir, check=_untouched_run),
    Row("sweep_dir_of_another_sweep", lambda c: ["-m", "hydra.sweep.dir=sweep", "seed=1,2"],
        lambda c: ["already holds another sweep's records", "leave hydra.sweep.dir unset"],
        record=None, setup=_taken_sweep_dir, check=_untouched_sweep),
    # --- validation: every group, all problems in one error, before any weight is read
    Row("unknown_keys_in_task_load_quant", lambda c: ["+task.foo=1", "+load.bar=2", "+quant.baz=3"],
        lambda c: ["task.foo: unknown key for task=load; valid keys: name",
                   "load.bar: unknown key for load; valid keys: ", "dtype", "trust_remote_code",
                   "quant.baz: unknown key for quant; valid keys: ", "group_size", "recipe"],
        before_weights=True),
    Row("sampling_and_seed_out_of_range", lambda c: [
        "task=generate", "task.temperature=nan", "task.top_p=2", "task.repetition_penalty=0",
        "task.top_k=-1", "task.max_tokens=0", "seed=18446744073709551616", "sweep.penalty=inf"],
        lambda c: ["task.temperature=nan", "task.top_p=2", "task.repetition_penalty=0",
                   "task.top_k=-1", "task.max_tokens=0", "seed=18446744073709551616",
                   "sweep.penalty=inf"], before_weights=True),
    Row("sizes_out_of_range", lambda c: [
        "task=perplexity", "task.batch_size=0", "task.sequence_length=4294967296",
        "task.num_samples=-2"],
        lambda c: ["task.batch_size=0", "task.sequence_length=4294967296", "task.num_samples=-2"],
        before_weights=True),
    Row("config_json_string_layers", model("str_layers"),
        lambda c: [f"model.num_hidden_layers='2' in {c['str_layers']}/config.json: expected int, got str"],
        before_weights=True),
    Row("config_json_float_layers", model("float_layers"),
        lambda c: [f"model.num_hidden_layers=2.0 in {c['float_layers']}/config.json: expected int"],
        before_weights=True),
    Row("config_json_deeply_nested", model("deep_config"),
        lambda c: [f"{c['deep_config']}/config.json: nested more than 32 levels deep"]),
    Row("config_json_huge", model("huge_config"),
        lambda c: [f"{c['huge_config']}/config.json: holds more than 100000 values"]),
    Row("generation_config_wrong_shape", model("generation_list"),
        lambda c: [f"{c['generation_list']}/generation_config.json: expected a JSON object"],
        before_weights=True),
    Row("tokenizer_file_wrong_shape", model("tokenizer_list", "task=generate"),
        lambda c: [f"{c['tokenizer_list']}/tokenizer_config.json: expected a JSON object"],
        before_weights=True),
    Row("model_dir_null", lambda c: ["model_dir=null"],
        lambda c: ["model_dir=None: expected a model directory"], before_weights=True),
    Row("model_removed", lambda c: ["~model"],
        lambda c: ["model: expected the model config"], before_weights=True),
    # --- weights
    Row("integer_data_into_float_parameter", model("int_weights"),
        lambda c: ["1 wrong dtype: model.layers.0.mlp.up_proj.weight int32 vs model float32"]),
    Row("overlapping_safetensors_offsets", model("overlap"),
        lambda c: [f"{c['overlap']}/model.safetensors: tensor", "overlaps the previous tensor"],
        before_weights=True),
    # --- security: consent is the command's own, records are data, paths stay literal
    Row("tokenizer_code_without_consent", model("tokenizer_code", "task=generate"),
        lambda c: [f"{c['tokenizer_code']}/tokenizer_config.json names tokenizer code",
                   "set load.trust_remote_code=true"],
        before_weights=True, markers=["tokenizer_marker"]),
    Row("tokenizer_code_with_consent", model("tokenizer_trusted", "task=generate",
                                             "task.max_tokens=2", "load.trust_remote_code=true"),
        lambda c: [], exit=0, record="completed", check=_tokenizer_code_ran),
    Row("kl_reference_never_inherits_consent",
        lambda c: ["task=kl", f"task.reference={c['past_run']}", "task.num_samples=1"],
        lambda c: [f"{c['remote']}/config.json sets model_file='evil.py'", "is refused"],
        markers=["model_file_marker"]),
    Row("model_path_reading_like_an_interpolation",
        lambda c: [f"model=./{c['dollar_model'].name.replace('$', chr(92) + '$')}"],
        lambda c: [], exit=0, record="completed", check=_literal_model_dir,
        setup=lambda c: os.symlink(c["dollar_model"], c["cwd"] / c["dollar_model"].name)),
    Row("replay_drops_what_a_record_must_not_decide",
        lambda c: ["replay", str(c["tampered"])], lambda c: [], exit=0, record="own",
        setup=_replay_of_a_tampered_record, check=_replay_dropped_them,
        markers=["callback_marker"]),
    Row("diff_shows_recorded_interpolations_as_text",
        lambda c: ["diff", str(c["real_run"]), str(c["with_env"])], lambda c: [], exit=0, record=None,
        setup=lambda c: c.update(with_env=_damaged_run(c, "with_env", lambda r: (r / ".hydra" / "config.yaml").write_text(
            (r / ".hydra" / "config.yaml").read_text() + f"note: ${{oc.env:{SECRET_VAR}}}\n"))),
        check=_diff_shows_text),
    # --- subcommands on damaged run directories: one line, exit 2, nothing re-run
    Row("replay_run_json_of_the_wrong_type", lambda c: ["replay", str(c["bad"])],
        lambda c: [f"{c['bad']}/run.json: expected a JSON object, found list"], exit=2, record=None,
        setup=lambda c: c.update(bad=_damaged_run(c, "bad", lambda r: (r / "run.json").write_text("[1]"))),
        check=_no_replay_started),
    Row("replay_bad_yaml", lambda c: ["replay", str(c["bad"])],
        lambda c: [f"{c['bad']}/.hydra/config.yaml: unreadable YAML"], exit=2, record=None,
        setup=lambda c: c.update(bad=_damaged_run(
            c, "bad", lambda r: (r / ".hydra" / "config.yaml").write_text("a: [1,\n"))),
        check=_no_replay_started),
    Row("replay_record_field_of_the_wrong_type", lambda c: ["replay", str(c["bad"])],
        lambda c: [f"{c['bad']}/run.json: not a run record: field 'metrics' is [1], expected object"],
        exit=2, record=None,
        setup=lambda c: c.update(bad=_damaged_run(c, "bad", lambda r: (r / "run.json").write_text(
            json.dumps({**json.loads((r / "run.json").read_text()), "metrics": [1]})))),
        check=_no_replay_started),
    Row("diff_missing_run_json", lambda c: ["diff", str(c["real_run"]), str(c["bad"])],
        lambda c: [f"{c['bad']}/run.json does not exist"], exit=2, record=None,
        setup=lambda c: c.update(bad=_damaged_run(c, "bad", lambda r: (r / "run.json").unlink()))),
    Row("summarize_record_of_the_wrong_shape", lambda c: ["summarize", str(c["cwd"] / "sweep")],
        lambda c: [f"{c['cwd']}/sweep/0_seed=1/run.json: not a run record: field 'quantization'"],
        exit=2, record=None,
        setup=lambda c: _sweep_with(c, {"status": "completed", "quantization": "x"}, None)),
    Row("summarize_bad_plan", lambda c: ["summarize", str(c["cwd"] / "sweep")],
        lambda c: [f"{c['cwd']}/sweep/multirun.yaml"], exit=2, record=None,
        setup=lambda c: _sweep_with(c, {"status": "completed"}, "hydra: [\n")),
    Row("resume_plan_of_the_wrong_type", lambda c: ["resume", str(c["cwd"] / "sweep")],
        lambda c: [f"{c['cwd']}/sweep/multirun.yaml: not a sweep plan"], exit=2, record=None,
        setup=lambda c: _sweep_with(c, {"status": "failed"}, "[1, 2]\n")),
    # --- sweeps: a job whose composition fails is that job's failure only
    Row("sweep_with_bad_model_directories",
        lambda c: ["-m", f"model={c['good']},{c['root']}/gone,{c['deep_config']},{c['good']}"],
        lambda c: ["2 of 4 jobs failed"], record="own", check=_sweep_jobs_fail_alone),
    Row("sweep_with_a_job_that_cannot_be_composed", lambda c: ["-m", "quant=nosuch,none"],
        lambda c: ["1 of 2 jobs failed"], record="own", check=_uncomposable_job_fails_alone),
]
BY_ID = {r.id: r for r in ROWS}


@pytest.fixture(scope="module")
def results(ctx, tmp_path_factory):
    """Run every row once, PARALLEL at a time; (result, the row's ctx) by id."""
    env = {SECRET_VAR: SECRET, "HF_HOME": str(ctx["hf_home"]), "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "PYTHONDONTWRITEBYTECODE": "1"}

    def one(row: Row):
        c = {**ctx, "cwd": tmp_path_factory.mktemp(f"row_{row.id}")}
        if row.setup:
            row.setup(c)
        return row.id, (run_cli(*row.args(c), cwd=c["cwd"], env=env, timeout=240), c)

    with ThreadPoolExecutor(PARALLEL) as pool:
        return dict(pool.map(one, ROWS))


def _files(directory: Path):
    return [p for p in directory.rglob("*") if p.is_file() and not p.is_symlink()]


@pytest.mark.parametrize("row_id", list(BY_ID))
def test_hostile_input(row_id, results):
    row = BY_ID[row_id]
    result, c = results[row_id]
    streams = result.stdout + result.stderr
    assert result.returncode == row.exit, (result.returncode, result.stderr[-3000:])
    for never in ("Traceback", "Error executing job", "HYDRA_FULL_ERROR"):
        assert never not in result.stderr, result.stderr
    says = row.says(c)
    if says:
        lines = (result.stderr if row.exit else result.stdout).splitlines()
        assert any(all(t in line for t in says) for line in lines), (says, result.stderr)
    assert SECRET not in streams
    for f in _files(c["cwd"]):
        assert SECRET.encode() not in f.read_bytes(), f
    for key in row.markers:
        assert not c[key].exists(), f"code ran: {c[key]}"
    records = [p for p in (c["cwd"] / "outputs").rglob("run.json")] if (c["cwd"] / "outputs").is_dir() else []
    if row.record is None:
        assert not records, records
    elif row.record != "own":
        [record_file] = records
        record = json.loads(record_file.read_text())
        assert record["status"] == row.record, record
        if row.record == "failed":
            for text in says:
                assert text in record["error"], (text, record["error"])
            assert "\n" not in record["error"]
        if row.before_weights:
            assert "weight_files" not in record, record
    if row.check:
        row.check(c, result)


def test_the_markers_work(ctx, tmp_path):
    """The code the rows keep from running does run when asked to: the markers can tell."""
    result = run_cli("+hydra.callbacks.evil._target_=os.mkdir", f"+hydra.callbacks.evil.path={tmp_path / 'M'}",
                     cwd=tmp_path)
    assert (tmp_path / "M").is_dir(), result.stderr
    result = run_cli(f"model={ctx['remote']}", "load.trust_remote_code=true", cwd=tmp_path)
    assert ctx["model_file_marker"].read_text() == "ran"
    ctx["model_file_marker"].unlink()


def test_deleted_working_directory(tmp_path):
    """The shell's directory removed under it: one line, exit 1, nothing written anywhere."""
    gone = tmp_path / "gone"
    gone.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    result = subprocess.run(
        ["sh", "-c", f'cd "{gone}" && rmdir "{gone}" && exec "{sys.executable}" -m mlxhydra'],
        env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip() == ("mlxhydra: the working directory cannot be used (No such file "
                                     "or directory): cd to an existing directory and run again")
    assert list(tmp_path.iterdir()) == []
