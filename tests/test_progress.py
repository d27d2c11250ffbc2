"""Progress you can see: a long task's bar or log lines (mlxhydra/progress.py) and a sweep's
``[k/N]`` line per job (mlxhydra/sweeps/job_progress.py), in this process and from the real
command (a sweep with a failed job, then ``mlxhydra resume`` of it). The joblib launcher's and
the Optuna sweeper's lines are checked by their own tests in test_sweeps.py."""

import io
import logging
import shutil
import sys
from datetime import datetime, timezone
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from conftest import EMBEDDED_TINY, run_cli, sweep_job_dirs
from helpers.progress_lines import progress_lines, seconds
from omegaconf import OmegaConf

from mlxhydra import _upstream
from mlxhydra import progress as progress_module
from mlxhydra.progress import duration, eta, progress, ticking
from mlxhydra.record.schema import write_record
from mlxhydra.sweeps.job_progress import SweepProgress, finished_times, shown_overrides
from mlxhydra.sweeps.plan import RESUME_PLANNED, RESUME_SEARCH, sweep_size


class Stream(io.StringIO):
    """stderr as a terminal (``tty=True``) or as a file or pipe."""

    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def clock(*times: float):
    """A clock that reads ``times`` in turn."""
    it = iter(times)
    return lambda: next(it)


def messages(caplog) -> list:
    return [r.getMessage() for r in caplog.records if r.name == "mlxhydra"]


# ----------------------------------------------------------------------------- the words

@pytest.mark.parametrize("span, words", [
    (0, "0.0 s"), (-1, "0.0 s"), (0.04, "0.0 s"), (9.94, "9.9 s"), (9.96, "10 s"), (41.4, "41 s"),
    (59.4, "59 s"), (59.6, "1 min 00 s"), (185, "3 min 05 s"), (3599.4, "59 min 59 s"),
    (3599.6, "1 h 00 min"), (7620, "2 h 07 min"), (90000, "25 h 00 min"),
])
def test_duration_words(span, words):
    assert duration(span) == words


def test_eta_is_the_pace_so_far_times_the_steps_left():
    assert eta(10.0, 2, 5) == 15.0
    assert eta(10.0, 0, 5) is None  # no pace yet
    assert eta(10.0, 5, 5) is None  # nothing left
    assert eta(10.0, 6, 5) is None


# ----------------------------------------------------------------------------- a long task

def test_log_lines_without_a_terminal(caplog):
    stream = Stream(tty=False)
    # Started at 0; the steps end at 60 (a line: 60 s since the start), 100, 125 (65 s since
    # the last line: a line), 150 and 200 (the last step: no line, the task says its result).
    steps = progress(range(5), 5, "kl", stream=stream, every=60, clock=clock(0, 60, 100, 125, 150, 200))
    with caplog.at_level(logging.INFO, logger="mlxhydra"):
        assert list(steps) == [0, 1, 2, 3, 4]
    assert messages(caplog) == [
        "kl: 1/5 batches (20%) · elapsed 1 min 00 s · ETA 4 min 00 s",
        "kl: 3/5 batches (60%) · elapsed 2 min 05 s · ETA 1 min 23 s",
    ]
    assert stream.getvalue() == ""


def test_no_log_line_for_a_short_or_empty_loop(caplog):
    with caplog.at_level(logging.INFO, logger="mlxhydra"):
        assert list(progress(range(3), 3, "kl", stream=Stream(False), every=60,
                             clock=clock(0, 20, 40, 59.9))) == [0, 1, 2]
        assert list(progress([], 0, "kl", stream=Stream(False), every=0, clock=clock(0))) == []
    assert messages(caplog) == []


def test_a_bar_with_an_eta_on_a_terminal(caplog):
    stream = Stream(tty=True)
    with caplog.at_level(logging.INFO, logger="mlxhydra"):
        assert list(progress(range(3), 3, "accuracy", unit="rows", stream=stream, every=0)) == [0, 1, 2]
    shown = stream.getvalue()
    assert "accuracy: " in shown and "3/3 [" in shown and " rows/s]" in shown
    assert "<00:00" in shown  # tqdm's elapsed<remaining: the ETA
    assert messages(caplog) == []  # a bar, not log lines


def test_ticking_counts_calls_and_closes_on_error(caplog):
    calls = []
    with caplog.at_level(logging.INFO, logger="mlxhydra"):
        steps = progress(range(3), 3, "perplexity", stream=Stream(False), every=0,
                         clock=clock(0, 1, 2, 3))
        with ticking(lambda x: calls.append(x) or x * 2, steps) as counted:
            assert [counted(i) for i in range(3)] == [0, 2, 4]
        steps = progress(range(3), 3, "again", stream=Stream(False), every=0, clock=clock(0, 1, 2, 3))
        with pytest.raises(ZeroDivisionError):
            with ticking(lambda x: 1 / x, steps) as counted:
                counted(1)
                counted(0)
    assert calls == [0, 1, 2]
    # Call i marks step i-1 done, the end of the block the last one (never logged); after an
    # error no step is marked done.
    assert messages(caplog) == ["perplexity: 1/3 batches (33%) · elapsed 1.0 s · ETA 2.0 s",
                                "perplexity: 2/3 batches (66%) · elapsed 2.0 s · ETA 1.0 s",
                                "again: 1/3 batches (33%) · elapsed 1.0 s · ETA 2.0 s"]


@pytest.fixture(scope="module")
def tiny_rows():
    from mlxhydra.load.loader import load_model

    model, _ = load_model(EMBEDDED_TINY)
    rows = mx.array(np.random.default_rng(0).integers(3, 60, size=(5, 12)))
    return model, rows


@pytest.mark.parametrize("tty", [False, True])
def test_perplexity_shows_mlxhydras_progress_not_mlx_lms_prints(tiny_rows, tty, caplog, capsys,
                                                                monkeypatch):
    from mlx_lm.perplexity import eval_ppl

    from mlxhydra.tasks.perplexity import compute_perplexity

    model, rows = tiny_rows
    with monkeypatch.context() as m:
        m.setattr(sys, "stdout", io.StringIO())
        expected = eval_ppl(model, rows, batch_size=2)
    stream = Stream(tty)
    monkeypatch.setattr(sys, "stderr", stream)
    monkeypatch.setattr(progress_module, "LOG_EVERY_SECONDS", 0.0)
    with caplog.at_level(logging.INFO, logger="mlxhydra"):
        out = compute_perplexity(model, rows, batch_size=2)
    assert (out["perplexity"], out["perplexity_stderr"]) == expected  # the model is only counted
    captured = capsys.readouterr()
    assert "Processed" not in captured.out + captured.err + stream.getvalue()
    lines = messages(caplog)
    if tty:
        assert lines == [] and "perplexity: " in stream.getvalue() and "3/3 [" in stream.getvalue()
    else:
        assert stream.getvalue() == ""
        assert [ln.split(" · ")[0] for ln in lines] == ["perplexity: 1/3 batches (33%)",
                                                       "perplexity: 2/3 batches (66%)"]
        assert all(" · elapsed " in ln and " · ETA " in ln for ln in lines)


# ----------------------------------------------------------------------------- a sweep's size

BASIC = "hydra_plugins.mlxhydra_sweeper.JobByJobSweeper"


@pytest.fixture
def no_cached_upstream_name():
    """_upstream caches the names it imports; Hydra re-executes its core plugins' modules when it
    scans plugins again (a later compose), so a cached copy would then differ from a fresh
    import, which tests/test_upstream.py checks by identity: leave no cached copy behind."""
    yield
    vars(_upstream).pop("split_sweep_arguments", None)


@pytest.mark.parametrize("sweeper, overrides, before, size", [
    ({"_target_": BASIC, "params": {"seed": "1,2"}}, ["quant.bits=2,4,8", "task=load"], 0, 6),
    ({"_target_": BASIC}, ["task=load"], 0, 1),  # nothing swept: one job
    ({"_target_": BASIC, "params": {"seed": "1,2"}}, ["seed=5"], 0, 1),  # the command line wins
    ({"_target_": "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"}, ["seed=1,2"], 0, 2),
    ({"_target_": RESUME_PLANNED, "sweep_dir": "s", "jobs": [0, 3]}, [], 5, 7),
    ({"_target_": RESUME_PLANNED, "sweep_dir": "s", "jobs": []}, [], 4, 4),
    ({"_target_": RESUME_SEARCH, "numbers": [4, 5, 6]}, [], 3, 6),
    ({"_target_": "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper",
      "n_trials": 12}, [], 0, 12),
    ({"_target_": "somewhere.OtherSweeper"}, ["seed=1,2"], 0, None),
])
def test_sweep_size(sweeper, overrides, before, size, no_cached_upstream_name):
    assert sweep_size({"sweeper": sweeper, "overrides": {"task": overrides}}, before) == size


# ----------------------------------------------------------------------------- a job's line

def iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).astimezone().isoformat(timespec="milliseconds")


def job(sweep: Path, num: int, status: str, ended: float, name: str = "x") -> Path:
    d = sweep / f"{num}_{name}"
    d.mkdir(parents=True)
    write_record(d / "run.json", {"status": status, "started": iso(ended - 1), "ended": iso(ended)})
    return d


def job_config(output_dir: Path, *overrides: str):
    return OmegaConf.create({"hydra": {
        "runtime": {"output_dir": str(output_dir)}, "overrides": {"task": list(overrides)},
        "job": {"config": {"override_dirname": {"exclude_keys": ["logger", "job_error"]}}}}})


T0 = 1_800_000_000.0


def started(sweep: Path, before: int, total, at: float = T0) -> SweepProgress:
    """A SweepProgress as on_multirun_start leaves it."""
    p = SweepProgress()
    p.sweep_dir, p.finished_before, p.total, p.started = sweep, before, total, at
    return p


def test_k_counts_the_jobs_ended_before_this_one_and_the_eta_this_commands_pace(tmp_path):
    sweep = tmp_path / "s"
    job(sweep, 0, "completed", T0 - 500)  # finished by an earlier run of a resumed sweep
    job(sweep, 1, "completed", T0 + 50)
    mine = job(sweep, 2, "failed", T0 + 99)
    job(sweep, 3, "completed", T0 + 99.5)  # another worker's job, ended after this one
    job(sweep, 4, "interrupted", T0 + 90)  # not finished
    job(sweep, 5, "running", T0 + 10)
    p = started(sweep, before=1, total=6)
    p.clock = clock(T0 + 80, T0 + 100)
    p.on_job_start(job_config(mine))
    line = p.line(job_config(mine, "seed=2", "hydra.sweep.subdir=x", "+job_error='bad seed'",
                             "logger=[csv]"))
    # k = 3 (jobs 0, 1 and this one); 2 finished by this command in 100 s, 3 left.
    assert line == "[3/6] seed=2 failed after 20 s · elapsed 1 min 40 s · ETA 2 min 30 s"


def test_a_record_is_read_again_when_it_changes(tmp_path):
    sweep = tmp_path / "s"
    d = job(sweep, 0, "running", T0)
    assert finished_times(sweep) == []
    write_record(d / "run.json", {"status": "completed", "started": iso(T0), "ended": iso(T0 + 2)})
    assert finished_times(sweep) == [T0 + 2]
    assert finished_times(tmp_path / "none") == []  # before the sweep directory exists


def test_the_last_job_has_no_eta_and_an_unknown_size_no_n(tmp_path):
    sweep = tmp_path / "s"
    mine = job(sweep, 0, "completed", T0 + 3)
    p = started(sweep, before=0, total=1)
    p.clock = clock(T0 + 1, T0 + 4)
    p.on_job_start(job_config(mine))
    assert p.line(job_config(mine, "quant.bits=4")) == (
        "[1/1] quant.bits=4 completed in 3.0 s · elapsed 4.0 s")
    p = started(sweep, before=0, total=None)
    p.clock = clock(T0 + 1, T0 + 4)
    p.on_job_start(job_config(mine))
    assert p.line(job_config(mine)) == "[1] (no overrides) completed in 3.0 s · elapsed 4.0 s"


def test_nothing_in_a_single_run_and_never_an_error(tmp_path, caplog):
    p = SweepProgress()  # on_multirun_start was not called: a single run
    with caplog.at_level(logging.DEBUG, logger="mlxhydra"):
        p.on_job_start(job_config(tmp_path))
        p.on_job_end(job_config(tmp_path), job_return=None)
        broken = started(tmp_path / "s", 0, 2)
        broken.on_job_end(OmegaConf.create({"hydra": {}}), job_return=None)  # no output_dir
    assert [r.levelname for r in caplog.records if r.name == "mlxhydra"] == ["DEBUG"]


def test_shown_overrides_leave_out_hydras_and_what_folder_names_leave_out():
    texts = ["a=1", "hydra.job.chdir=false", "+job_error='x'", "~job_error", "+b=2", "logger=[csv]"]
    assert shown_overrides(texts, ["logger", "job_error"]) == "a=1 +b=2"
    assert shown_overrides(texts) == "a=1 +job_error='x' ~job_error +b=2 logger=[csv]"
    assert shown_overrides([], ["logger"]) == "(no overrides)"


# ----------------------------------------------------------------------------- the command

def within(duration_text: str, factor: float, elapsed_text: str) -> bool:
    """Whether an ETA is ``factor`` times the elapsed time, to the precision both are written."""
    def resolution(text: str) -> float:
        return 0.05 if "." in text else (30.0 if " h " in text else 0.5)

    return abs(seconds(duration_text) - factor * seconds(elapsed_text)) <= (
        resolution(duration_text) + factor * resolution(elapsed_text) + 1e-9)


@pytest.mark.slow
def test_a_sweep_and_its_resume_print_k_of_n_with_times(tmp_path):
    sweep = tmp_path / "outputs" / "multirun" / "s"
    first = run_cli("-m", "task=load", "seed=1,-1,3", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert first.returncode == 1, first.stderr[-2000:]  # seed=-1 fails; the sweep goes on
    lines = progress_lines(first.stdout)
    assert [(ln.k, ln.n, ln.overrides, ln.verb) for ln in lines] == [
        (1, 3, "task=load seed=1", "completed in"),
        (2, 3, "task=load seed=-1", "failed after"),
        (3, 3, "task=load seed=3", "completed in")]
    assert [ln.eta is not None for ln in lines] == [True, True, False]
    assert within(lines[0].eta, 2, lines[0].elapsed)  # 1 job done of 3: twice the time so far
    assert within(lines[1].eta, 0.5, lines[1].elapsed)
    elapsed = [seconds(ln.elapsed) for ln in lines]
    assert elapsed == sorted(elapsed)
    jobs = sweep_job_dirs(sweep)
    assert "] - [1/3] task=load seed=1 completed in " in (jobs[0] / "mlxhydra.log").read_text()

    shutil.rmtree(jobs[0])  # a job that never ran; job 1 failed: resume runs both
    resumed = run_cli("resume", str(sweep), cwd=tmp_path)
    assert resumed.returncode == 1, resumed.stderr[-2000:]
    lines = progress_lines(resumed.stdout)
    # k and N count the whole sweep (job 2 finished before); the ETA is this command's pace.
    assert [(ln.k, ln.n, ln.overrides, ln.verb, ln.eta is None) for ln in lines] == [
        (2, 3, "task=load seed=1", "completed in", False),
        (3, 3, "task=load seed=-1", "failed after", True)]
    assert within(lines[0].eta, 1, lines[0].elapsed)
