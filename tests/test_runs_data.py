"""``mlxhydra runs --json`` / ``--csv`` and ``mlxhydra.runs()``: the runs table as data.

The run directories are written as a job writes them (run.json through the
record's own writer, metrics.json, a sweep's multirun.yaml), without running
a model: what is checked is how they are read back.
"""

import csv
import io
import json
import os
from pathlib import Path

import pytest

import mlxhydra
from mlxhydra.cli import run_subcommand
from mlxhydra.errors import RunDirError
from mlxhydra.history import rows as rows_module
from mlxhydra.history.rows import FIXED
from mlxhydra.record.schema import write_record

KL = "outputs/runs/2026-01-01/10-00-00_kl"
FAILED = "outputs/runs/2026-01-01/10-05-00_failed"
DAMAGED = "outputs/runs/2026-01-01/11-00-00_damaged"
KILLED = "outputs/multirun/2026-01-02/09-00-00_sweep/0_quant.bits=8"
PROMPT = "'41+28=, \"sum\"'"  # a comma and double quotes inside a quoted override value
KV_ERROR = "task.kv_group_size=64: this model's KV cache has head size 32, not a multiple of 64"


def write_run(cwd: Path, name: str, metrics_file=None, **fields) -> None:
    run_dir = cwd / name
    run_dir.mkdir(parents=True)
    write_record(run_dir / "run.json", {"run_dir": str(run_dir), **fields})
    if metrics_file is not None:
        (run_dir / "metrics.json").write_text(json.dumps(metrics_file))


def outputs_tree(cwd: Path) -> None:
    """A completed KL run, a failed generation, a damaged run.json and a sweep job killed after
    its task wrote metrics.json (its run.json still says running, without metrics)."""
    write_run(cwd, KL, status="completed", started="2026-01-01T10:00:00.000+00:00",
              ended="2026-01-01T10:00:02.500+00:00",
              overrides=["task=kl", "quant.bits=4", "load.lazy=true",
                         "quant.rules=[{pattern: lm_head, skip: true}]"],
              job_num=None, choices={"model": "tiny", "quant": "none", "task": "kl"},
              quantization={"source": "runtime", "default": {"bits": 4, "group_size": 64},
                            "bits_per_weight": 4.5},
              metrics={"kl_mean": 0.25, "tokens_evaluated": 128, "reference": "float",
                       "quantiles": {"p99": 1.5}, "per_sample": [0.125, 0.375],
                       "converged": True})
    write_run(cwd, FAILED, status="failed", started="2026-01-01T10:05:00.000+00:00",
              ended="2026-01-01T10:05:00.250+00:00", overrides=["task=generate", f"task.prompt={PROMPT}"],
              choices={"model": "tiny", "quant": "none", "task": "generate"},
              quantization={"source": "none"}, error=KV_ERROR, error_type="TaskError")
    damaged = cwd / DAMAGED
    damaged.mkdir(parents=True)
    (damaged / "run.json").write_text('{"status": "completed", "metrics": [1]}')
    write_run(cwd, KILLED, metrics_file={"kl_mean": 0.0625, "tokens_evaluated": 128},
              status="running", started="2026-01-02T09:00:01.000+00:00", ended=None, job_num=0,
              overrides=["task=kl", "quant.bits=8"], choices={"model": "tiny", "task": "kl"})
    (cwd / KILLED).parent.joinpath("multirun.yaml").write_text("hydra: {}\n")


@pytest.fixture
def tree(tmp_path, monkeypatch):
    outputs_tree(tmp_path)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def runs(capsys, *args):
    """``mlxhydra runs ARGS`` through the command's dispatch: (status, stdout, stderr)."""
    status = run_subcommand(["runs", *args])
    out, err = capsys.readouterr()
    return status, out, err


METRIC_COLUMNS = ["metrics.kl_mean", "metrics.quantiles.p99", "metrics.tokens_evaluated"]
OVERRIDE_COLUMNS = ["overrides.load.lazy", "overrides.quant.bits", "overrides.quant.rules",
                    "overrides.task", "overrides.task.prompt"]
COLUMNS = [*FIXED, *METRIC_COLUMNS, *OVERRIDE_COLUMNS]
DAMAGED_ERROR = (f"{DAMAGED}/run.json: not a run record: field 'metrics' is [1], expected object")


def expected_rows(cwd: Path) -> list:
    """The rows of :func:`outputs_tree`, oldest first (the damaged one has no time)."""
    empty = dict.fromkeys(COLUMNS)

    def row(name, **values):
        return {**empty, "dir": name, "run_dir": str(cwd / name), **values}

    return [
        row(DAMAGED, time="", status="unreadable", model="", quant="", task="", metric="",
            error=DAMAGED_ERROR),
        row(KL, time="2026-01-01 10:00:00", status="completed", model="tiny", quant="4bit g64",
            task="kl", metric="kl_mean=0.25", bits_per_weight=4.5,
            started="2026-01-01T10:00:00.000+00:00", ended="2026-01-01T10:00:02.500+00:00",
            duration_s=2.5, **{"metrics.kl_mean": 0.25, "metrics.quantiles.p99": 1.5,
                               "metrics.tokens_evaluated": 128, "overrides.load.lazy": True,
                               "overrides.quant.bits": 4, "overrides.task": "kl",
                               "overrides.quant.rules": "[{pattern: lm_head, skip: true}]"}),
        row(FAILED, time="2026-01-01 10:05:00", status="failed", model="tiny", quant="none",
            task="generate", metric="", started="2026-01-01T10:05:00.000+00:00",
            ended="2026-01-01T10:05:00.250+00:00", duration_s=0.25, error=KV_ERROR,
            **{"overrides.task": "generate", "overrides.task.prompt": '41+28=, "sum"'}),
        row(KILLED, time="2026-01-02 09:00:01", status="running", model="tiny", quant="",
            task="kl", metric="", job_num=0, started="2026-01-02T09:00:01.000+00:00",
            **{"metrics.kl_mean": 0.0625, "metrics.tokens_evaluated": 128,
               "overrides.quant.bits": 8, "overrides.task": "kl"}),
    ]


def test_json_has_every_run_with_its_metrics_and_overrides_as_values(tree, capsys):
    status, out, err = runs(capsys, "--json")
    assert (status, err) == (0, "")
    rows = json.loads(out)
    assert rows == expected_rows(tree)
    assert [list(r) for r in rows] == [COLUMNS] * 4  # every row every column, in one order
    kl = rows[1]
    assert type(kl["metrics.tokens_evaluated"]) is int and type(kl["metrics.kl_mean"]) is float
    assert type(kl["overrides.quant.bits"]) is int and kl["overrides.load.lazy"] is True
    assert '"metrics.kl_mean": 0.25,' in out and '"overrides.quant.bits": 4,' in out  # not "0.25"


def test_csv_is_the_same_rows_quoted_by_the_csv_module(tree, capsys):
    status, out, err = runs(capsys, "--csv")
    assert (status, err) == (0, "")
    lines = out.split("\n")
    assert lines[0] == ",".join(COLUMNS) and lines[-1] == "" and len(lines) == 6
    assert lines[3] == (f"2026-01-01 10:05:00,failed,tiny,none,generate,,,{FAILED},{tree / FAILED},,"
                        "2026-01-01T10:05:00.000+00:00,2026-01-01T10:05:00.250+00:00,0.25,"
                        f"\"{KV_ERROR}\",,,,,,,generate,\"41+28=, \"\"sum\"\"\"")
    assert lines[2].endswith(",0.25,1.5,128,true,4,\"[{pattern: lm_head, skip: true}]\",kl,")
    parsed = list(csv.DictReader(io.StringIO(out)))
    as_text = [{k: "" if v is None else "true" if v is True else str(v) for k, v in r.items()}
               for r in expected_rows(tree)]
    assert parsed == as_text


def test_sort_where_and_last_apply_to_the_data_and_missing_values_sort_last(tree, capsys):
    def names(*args):
        status, out, err = runs(capsys, *args, "--json")
        assert (status, err) == (0, "")
        return [r["dir"] for r in json.loads(out)]

    assert names("--sort=-metrics.kl_mean") == [KL, KILLED, DAMAGED, FAILED]
    assert names("--sort", "metrics.kl_mean") == [KILLED, KL, DAMAGED, FAILED]
    assert names("--sort=-overrides.quant.bits", "--last", "2") == [KILLED, FAILED]
    assert names("--where", "overrides.quant.bits=4") == [KL]
    assert names("--where", "task=kl", "--sort=-duration_s") == [KL, KILLED]
    status, out, _ = runs(capsys, "--where", "status=failed", "--csv")
    assert status == 0 and [r["dir"] for r in csv.DictReader(io.StringIO(out))] == [FAILED]
    # the columns are those of the rows kept: a failed generation has no metric
    assert out.split("\n")[0] == ",".join([*FIXED, "overrides.task", "overrides.task.prompt"])


def test_json_and_csv_together_are_refused(tree, capsys):
    with pytest.raises(SystemExit) as stop:
        run_subcommand(["runs", "--json", "--csv"])
    assert stop.value.code == 2
    assert "argument --csv: not allowed with argument --json" in capsys.readouterr().err


def test_the_table_for_people_is_unchanged(tree, capsys):
    status, out, err = runs(capsys)
    assert (status, err) == (0, "")
    assert out == (
        "time                 status      model  quant     task      metric        bits_per_weight  dir\n"
        "-------------------  ----------  -----  --------  --------  ------------  ---------------  "
        f"{'-' * len(KILLED)}\n"
        f"-                    unreadable  -      -         -         -             -                {DAMAGED}\n"
        f"2026-01-01 10:00:00  completed   tiny   4bit g64  kl        kl_mean=0.25  4.500            {KL}\n"
        f"2026-01-01 10:05:00  failed      tiny   none      generate  -             -                {FAILED}\n"
        f"2026-01-02 09:00:01  running     tiny   -         kl        -             -                {KILLED}\n"
        "\n4 runs: 1 completed, 1 failed, 1 running, 1 unreadable\n")


def test_no_runs_is_an_empty_list_and_a_header(tmp_path, monkeypatch, capsys):
    (tmp_path / "outputs").mkdir()
    monkeypatch.chdir(tmp_path)
    assert runs(capsys, "--json") == (0, "[]\n", "")
    assert runs(capsys, "--csv") == (0, ",".join(FIXED) + "\n", "")
    assert runs(capsys) == (0, "no runs under outputs\n", "")
    assert mlxhydra.runs() == []
    outputs_tree(tmp_path)
    assert runs(capsys, "--where", "status=nope", "--csv") == (0, ",".join(FIXED) + "\n", "")


def test_a_missing_directory_is_one_line_and_an_error_of_the_function(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert runs(capsys, "--csv") == (2, "", "mlxhydra: runs outputs: no such directory\n")
    with pytest.raises(RunDirError, match=r"^outputs: no such directory$"):
        mlxhydra.runs()
    with pytest.raises(RunDirError, match=r"^nope: no such directory$"):
        mlxhydra.runs("nope")


def test_the_python_function_gives_the_rows_of_json(tree, capsys):
    assert mlxhydra.runs is rows_module.runs and "runs" in mlxhydra.__all__
    rows = mlxhydra.runs()
    assert rows == expected_rows(tree)
    assert runs(capsys, "--json")[1] == json.dumps(rows, indent=2) + "\n"
    elsewhere = mlxhydra.runs(tree / "outputs")  # a Path: the same rows (errors name the path given)
    assert [{**r, "error": None} for r in elsewhere] == [{**r, "error": None} for r in rows]
    assert [r["dir"] for r in mlxhydra.runs("09-00-00_sweep")] == [KILLED]  # a name prefix


def test_pandas_takes_the_rows(tree, capsys):
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame(mlxhydra.runs())
    assert list(frame.columns) == COLUMNS and len(frame) == 4
    assert pd.api.types.is_float_dtype(frame["metrics.kl_mean"])
    assert pd.api.types.is_numeric_dtype(frame["overrides.quant.bits"])
    assert frame["metrics.kl_mean"].max() == 0.25
    read = pd.read_csv(io.StringIO(runs(capsys, "--csv")[1]))
    assert list(read.columns) == COLUMNS
    for column in ("overrides.quant.bits", "metrics.tokens_evaluated", "duration_s"):
        assert read[column].equals(frame[column])
    assert read["overrides.task.prompt"][2] == '41+28=, "sum"'


def test_a_record_is_read_as_data(tmp_path, monkeypatch, capsys):
    """An override that names an environment variable stays text; a metrics.json that is not an
    object is no metric; an odd time gives no duration; nothing fails."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SECRET_VALUE", "hunter2")
    write_run(tmp_path, KL, metrics_file=[1, 2], status="completed", started="yesterday",
              ended="2026-01-01T10:00:02.500+00:00",
              overrides=["+x=${oc.env:SECRET_VALUE}", "y=[1,", "task=kl"])
    [row] = mlxhydra.runs()
    assert row["overrides.x"] == "${oc.env:SECRET_VALUE}" and row["overrides.y"] == "[1,"
    assert (row["duration_s"], row["status"]) == (None, "completed")
    assert not any(c.startswith("metrics.") for c in row)
    assert "hunter2" not in runs(capsys, "--csv")[1]
    assert os.environ["SECRET_VALUE"] == "hunter2"
