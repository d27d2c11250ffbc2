"""``mlxhydra resume SWEEP_DIR``: finish a sweep that was interrupted, killed or had failed jobs.

The sweep's ``multirun.yaml`` says which jobs it planned (the basic
sweeper's expansion of its overrides) and how it ran them (its launcher and
Hydra overrides). Resume runs the real ``python -m mlxhydra -m`` again (the
installed package, started as :mod:`mlxhydra.history.rerun` starts it), in the
current directory (or ``--cwd DIR``, never the recorded one), with the
recorded settings that :mod:`mlxhydra.config.recorded` lets through (mlxhydra's
own, the launcher and sweeper options mlxhydra ships and their sizes; never
consent, code or other Hydra settings: those are named in one line), into the
same sweep directory, and with ``hydra/sweeper=resume``
(``hydra_plugins.mlxhydra_resume.ResumeSweeper``) launching only the jobs
that are missing, failed or interrupted (or left ``running`` by a killed
process) under their own job numbers. An Optuna search goes on from its
recorded trials instead (:mod:`.resume_search`). Completed jobs are not touched; the
directory of a job that is run again is first moved, whole, to
``.attempts/`` in the sweep. The summary, a tracker's parent run (the
sweep's ``tracking.json``) and ``mlxhydra runs`` then cover the whole sweep.

A task=lora job goes on from its last checkpoint (``task.resume_from=``, set per job); a run's
directory instead of a sweep's is resumed by :mod:`.resume_run`.

Exit status: the resumed command's (0 when every job completed), 0 when
there is nothing to resume, 2 for a directory that is not a resumable sweep.
"""

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..config.overrides import parse_overrides
from ..config.recorded import dropped_line, hydra_overrides, own_overrides, quoted
from ..errors import RunDirError
from ..history.replay import primary_config_options
from ..history.rerun import (
    add_rerun_options,
    installed_command,
    recorded_options_note,
    rerun_cwd,
    rerun_options,
    run_forwarding_signals,
)
from ..record.latest import find_run, shown
from ..record.run_dir import RunDir, SweepDir, read_yaml
from ..record.schema import read_record
from . import resume_run
from .attempts import contiguous, set_aside
from .resume_run import RESUME_KEY, is_single_run, last_attempt_checkpoint, recorded_checkpoint
from .resume_search import REPLACED, is_search, search_command_overrides
from .summary import sweep_plan

log = logging.getLogger("mlxhydra")

# Hydra overrides of the original command that resume sets itself.
REPLACED_HYDRA = ("hydra.mode", "hydra.sweep.dir", "hydra/sweeper", "hydra.sweeper")


def planned_jobs(sweep: SweepDir, dropped: Optional[List[str]] = None,
                 cwd: Optional[Path] = None) -> List[List[str]]:
    """Every planned job's overrides that a record may give (:func:`own_overrides`), by job number.

    Args:
        dropped: Receives ``"TEXT (reason)"`` for each planned override left out.
        cwd: Where the jobs run (default: the current directory).

    Raises:
        RunDirError: no multirun.yaml, or a sweeper whose jobs are not planned ahead.
    """
    if not sweep.plan.is_file():
        raise RunDirError(f"{sweep.path}: not a sweep directory (no {SweepDir.PLAN})")
    _, plan = sweep_plan(sweep)
    if plan is None:
        target = ((read_yaml(sweep.plan) or {}).get("hydra", {}).get("sweeper") or {}).get("_target_")
        raise RunDirError(f"{sweep.path}: resume needs the basic sweeper's job plan; this sweep "
                          f"used {target} (run a new sweep, or summarize this one)")
    jobs = []
    for overrides in plan:
        kept, left_out = own_overrides(overrides, str(cwd) if cwd else None)
        jobs.append(kept)
        if dropped is not None:
            dropped += left_out
    return jobs


def job_statuses(sweep: SweepDir) -> Dict[int, str]:
    """Job number -> the status its run.json records (``missing`` without one)."""

    statuses = {}
    for num, job in sweep.job_dirs().items():
        try:
            statuses[num] = read_record(job.record).get("status") or "missing"
        except RunDirError:
            statuses[num] = "unreadable"
    return statuses


def jobs_to_run(plan: List[List[str]], statuses: Dict[int, str]) -> List[int]:
    """The planned jobs that did not complete."""
    return [n for n in range(len(plan)) if statuses.get(n, "missing") != "completed"]


def launch_jobs(launcher: Any, sweep_dir: str, jobs: Sequence[int], arguments: Sequence[str] = ()
                ) -> List[Any]:
    """Launch ``jobs`` of the sweep's plan through ``launcher``, each under its own number.

    Args:
        arguments: The resumed command's overrides (what Hydra hands its sweeper). Those
            the record did not give (the resume command's own, e.g. its consent) replace
            the planned job's override of their key in every job.
    """
    sweep = SweepDir(Path(sweep_dir))
    plan = planned_jobs(sweep)
    hc = (read_yaml(sweep.plan) or {}).get("hydra") or {}
    given, _ = own_overrides(_list((hc.get("overrides") or {}).get("task")))
    own = [o for o in parse_overrides([a for a in arguments if a not in given]) if not o.is_sweep]
    keys = {o.key for o in own}
    returns = []
    for group in contiguous(jobs):
        batch = []
        for n in group:
            resumed = checkpoint_override(sweep, n)
            skip = keys | ({RESUME_KEY} if resumed else set())
            batch.append([o.text for o in parse_overrides(plan[n]) if o.key not in skip]
                         + [o.text for o in own] + resumed)
        returns.append(launcher.launch(batch, initial_job_idx=group[0]))
    return returns


def checkpoint_override(sweep: SweepDir, num: int) -> List[str]:
    """``task.resume_from=<checkpoint>`` for a task=lora job whose last attempt left one."""
    try:
        found = last_attempt_checkpoint(sweep, num)
    except RunDirError as e:  # the job starts again; the sweep goes on
        log.warning("mlxhydra: resume: job %d starts again from the beginning: %s", num, e)
        return []
    return [f"{RESUME_KEY}={quoted(str(found[0]))}"] if found else []


def _list(value: Any) -> List[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise RunDirError(f"expected a list of overrides in the sweep's {SweepDir.PLAN}, found {value!r:.60}")
    return value


def _quoted(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def resume_command(sweep: SweepDir, recorded: Dict[str, Any], replaced: Sequence[str],
                   added: Sequence[str], extra: Sequence[str] = (), options: Sequence[str] = (),
                   cwd: Optional[Path] = None) -> Tuple[List[str], List[str]]:
    """(argv, dropped) of the resumed command: the recorded settings a record may give, its
    ``replaced`` Hydra overrides left out and ``added`` appended, into the same sweep directory,
    then this command's ``extra`` overrides and ``options``.

    ``dropped`` is ``"TEXT (reason)"`` for each recorded setting that is not re-applied.
    """
    hc = recorded["hydra"]
    overrides = hc.get("overrides") or {}
    runtime = hc.get("runtime") or {}
    if not isinstance(overrides, dict) or not isinstance(runtime, dict) or not all(
            isinstance(o, str) for key in ("task", "hydra") for o in _list(overrides.get(key))):
        raise RunDirError(f"{sweep.plan}: hydra.overrides and hydra.runtime are not those of a sweep")
    task, dropped = own_overrides(_list(overrides.get("task")), str(cwd or Path.cwd()))
    hydra, dropped_hydra = hydra_overrides(_list(overrides.get("hydra")), sweep=True, replaced=replaced)
    dropped += dropped_hydra + (recorded_options_note(primary_config_options(hc)) if not options else [])
    where = _quoted(str(sweep.path.resolve()))
    # No consent can come back: the record's overrides, presets and search paths are left out.
    argv = installed_command("-m", *options, *task, *hydra, f"hydra.sweep.dir={where}", *added, *extra)
    return argv, dropped


def plan_resume(sweep: SweepDir, extra: Sequence[str] = (), options: Sequence[str] = (),
                cwd: Optional[Path] = None
                ) -> Tuple[List[int], Dict[int, str], Dict[int, List[str]], List[str], bool, List[str]]:
    """(jobs to run, recorded statuses, overrides of each job to run (when known), argv,
    whether it is an Optuna search, the recorded settings dropped).

    Raises:
        RunDirError: not a sweep, or one that cannot be resumed (named).
    """
    if not sweep.plan.is_file():
        raise RunDirError(f"{sweep.path}: not a sweep directory (no {SweepDir.PLAN})")
    recorded = read_yaml(sweep.plan) or {}
    hc = recorded.get("hydra") if isinstance(recorded, dict) else None
    if not isinstance(hc, dict):
        raise RunDirError(f"{sweep.plan}: not a sweep plan (no hydra mapping)")
    statuses = job_statuses(sweep)
    if is_search(hc):
        todo, added, known, dropped = search_command_overrides(sweep, recorded, statuses)
        argv, more = resume_command(sweep, recorded, REPLACED, added, extra, options, cwd)
        return todo, statuses, known, argv, True, more + dropped
    planned: List[str] = []
    plan = planned_jobs(sweep, planned, cwd)
    todo = jobs_to_run(plan, statuses)
    where = _quoted(str(sweep.path.resolve()))
    argv, more = resume_command(sweep, recorded, REPLACED_HYDRA, [
        "hydra/sweeper=resume", f"hydra.sweeper.sweep_dir={where}",
        f"hydra.sweeper.jobs=[{','.join(str(j) for j in todo)}]"], extra, options, cwd)
    named = {_key(d) for d in more}  # a planned job's copy of a recorded override: named once
    return todo, statuses, {n: plan[n] for n in todo}, argv, False, more + [
        d for d in planned if _key(d) not in named]


def _checkpoint(job: RunDir) -> Optional[Tuple[Path, int]]:
    try:
        return recorded_checkpoint(job)
    except RunDirError:  # named when the job is launched
        return None


def _key(dropped: str) -> str:
    """The key of a ``"TEXT (reason)"`` item."""
    return parse_overrides([dropped.rsplit(" (", 1)[0]])[0].key


def _cwd_note(recorded: Any, cwd: Path) -> Optional[str]:
    """A note when the sweep ran in another directory than the one it is resumed in."""
    hc = recorded.get("hydra") if isinstance(recorded, dict) else None
    ran = ((hc or {}).get("runtime") or {}).get("cwd") if isinstance(hc, dict) else None
    if isinstance(ran, str) and os.path.realpath(ran) != os.path.realpath(cwd):
        return (f"mlxhydra: resume: the sweep ran in {ran}; resuming in {cwd}: relative paths in "
                "its settings are taken from here (--cwd DIR chooses)")
    return None


def main(argv: Sequence[str]) -> int:
    """``mlxhydra resume SWEEP_DIR|RUN_DIR [--dry-run] [--cwd DIR] [OVERRIDE...]``; returns the
    exit status. A run's directory is resumed by :mod:`.resume_run`."""
    p = argparse.ArgumentParser(
        prog="mlxhydra resume",
        description="Run the missing, failed and interrupted jobs of a sweep again, into the same "
                    "sweep directory and job numbers, with its recorded mlxhydra settings, launcher "
                    "and sweeper, in the current directory. Given a run's directory, run it again "
                    "there; a task=lora run goes on from its last checkpoint.")
    p.add_argument("dir", metavar="SWEEP_DIR|RUN_DIR", help="the sweep's (or run's) directory, "
                   "latest, or a unique prefix of its name")
    p.add_argument("--dry-run", action="store_true", help="print the jobs and the command; run nothing")
    add_rerun_options(p)
    p.add_argument("overrides", nargs="*", help="this command's own overrides, applied last, e.g. "
                   "its consent: load.trust_remote_code=true (never taken from the record)")
    args = p.parse_args(list(argv))
    try:
        found = find_run(args.dir).resolve()
        if is_single_run(found):
            return resume_run.main(RunDir(found), args)
        sweep = SweepDir(found)
        cwd = rerun_cwd(args.cwd)
        todo, statuses, known, command, search, dropped = plan_resume(
            sweep, args.overrides, rerun_options(args), cwd)
    except RunDirError as e:
        sys.stderr.write(f"mlxhydra: resume {e}\n")
        return 2
    total = len(set(statuses) | set(todo))
    if not todo:
        print(f"nothing to resume: all {total} jobs of {shown(sweep.path)} finished")
        return 0
    line = dropped_line("resume", dropped)
    for note in ([f"mlxhydra: {line}"] if line else []) + [_cwd_note(read_yaml(sweep.plan), cwd)]:
        if note:
            sys.stderr.write(note + "\n")
    jobs = sweep.job_dirs()
    for n in todo:
        found = _checkpoint(jobs[n]) if n in jobs and not search else None
        where = f" (from its checkpoint at step {found[1]})" if found else ""
        print(f"job {n} ({statuses.get(n, 'missing')}){where}: {' '.join(known.get(n, ['(new trial)']))}")
    print(f"resuming {len(todo)} of {total} jobs in {shown(sweep.path)}")
    sys.stdout.flush()
    sys.stderr.flush()
    if args.dry_run:
        print(f"in {cwd}: {' '.join(command[3:])}")
        return 0
    if not search:  # a search's sweeper reads the unfinished trials first, then sets them aside
        set_aside(sweep, todo)
    # SIGINT, SIGTERM, SIGHUP are passed on: the resumed sweep records them and writes its summary.
    code = run_forwarding_signals(command, cwd, None)
    if code in (129, 130, 143):
        sys.stderr.write("mlxhydra: resume interrupted (run it again to go on)\n")
    return code
