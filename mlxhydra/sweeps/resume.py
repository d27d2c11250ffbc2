"""``mlxhydra resume SWEEP_DIR``: finish a sweep that was interrupted, killed or had failed jobs.

The sweep's ``multirun.yaml`` says which jobs it planned (the basic
sweeper's expansion of its overrides) and how it ran them (its launcher and
Hydra overrides). Resume runs the real ``python -m mlxhydra -m`` again, in the
recorded working directory, with the recorded overrides and launcher, into
the same sweep directory, and with ``hydra/sweeper=resume``
(``hydra_plugins.mlxhydra_resume.ResumeSweeper``) launching only the jobs
that are missing, failed or interrupted (or left ``running`` by a killed
process) under their own job numbers. An Optuna search goes on from its
recorded trials instead (:mod:`.resume_search`). Completed jobs are not touched; the
directory of a job that is run again is first moved, whole, to
``.attempts/`` in the sweep. The summary, a tracker's parent run (the
sweep's ``tracking.json``) and ``mlxhydra runs`` then cover the whole sweep.

Exit status: the resumed command's (0 when every job completed), 0 when
there is nothing to resume, 2 for a directory that is not a resumable sweep.
"""

import argparse
import sys
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

from ..errors import RunDirError
from ..history.replay import CONSENT, OTHER_CONSENTS, primary_config_options, run_forwarding_signals
from ..record.latest import find_run, shown
from ..record.run_dir import SweepDir, read_yaml
from ..record.schema import read_record
from .attempts import contiguous, set_aside
from .resume_search import REPLACED, is_search, search_command_overrides
from .summary import sweep_plan

# Hydra overrides of the original command that resume sets itself.
REPLACED_HYDRA = ("hydra.mode", "hydra.sweep.dir", "hydra/sweeper", "hydra.sweeper")


def planned_jobs(sweep: SweepDir) -> List[List[str]]:
    """Every planned job's overrides, by job number.

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
    return plan


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


def launch_jobs(launcher: Any, sweep_dir: str, jobs: Sequence[int]) -> List[Any]:
    """Launch ``jobs`` of the sweep's plan through ``launcher``, each under its own number."""
    plan = planned_jobs(SweepDir(Path(sweep_dir)))
    returns = []
    for group in contiguous(jobs):
        returns.append(launcher.launch([plan[n] for n in group], initial_job_idx=group[0]))
    return returns


def _list(value: Any) -> List[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise RunDirError(f"expected a list of overrides in the sweep's {SweepDir.PLAN}, found {value!r:.60}")
    return value


def _quoted(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def resume_command(sweep: SweepDir, hc: Dict[str, Any], replaced: Sequence[str],
                   added: Sequence[str]) -> Tuple[List[str], Path]:
    """(argv, cwd) of the resumed command: the recorded one, its ``replaced`` Hydra overrides
    dropped and ``added`` appended, into the same sweep directory."""
    overrides = hc.get("overrides") or {}
    runtime = hc.get("runtime") or {}
    if not isinstance(overrides, dict) or not isinstance(runtime, dict) or not all(
            isinstance(o, str) for key in ("task", "hydra") for o in _list(overrides.get(key))):
        raise RunDirError(f"{sweep.plan}: hydra.overrides and hydra.runtime are not those of a sweep")
    cwd = Path(str(runtime.get("cwd") or "."))
    if not cwd.is_dir():
        raise RunDirError(f"{sweep.path}: its working directory {cwd} is gone")
    hydra = [o for o in _list(overrides.get("hydra")) if not o.lstrip("+~").startswith(tuple(replaced))]
    # Consent to run code is the resume command's own (its overrides), never the record's.
    task = [o for o in _list(overrides.get("task"))
            if o.lstrip("+~").split("=", 1)[0] not in (CONSENT, *OTHER_CONSENTS)]
    where = _quoted(str(sweep.path.resolve()))
    argv = [sys.executable, "-m", "mlxhydra", "-m", *primary_config_options(hc),
            *task, *hydra, f"hydra.sweep.dir={where}", *added]
    return argv, cwd


def plan_resume(sweep: SweepDir) -> Tuple[List[int], Dict[int, str], Dict[int, List[str]], List[str], Path, bool]:
    """(jobs to run, recorded statuses, overrides of each job to run (when known), argv, cwd,
    whether it is an Optuna search).

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
        todo, added, known = search_command_overrides(sweep, recorded, statuses)
        argv, cwd = resume_command(sweep, hc, REPLACED, added)
        return todo, statuses, known, argv, cwd, True
    plan = planned_jobs(sweep)
    todo = jobs_to_run(plan, statuses)
    where = _quoted(str(sweep.path.resolve()))
    argv, cwd = resume_command(sweep, hc, REPLACED_HYDRA, [
        "hydra/sweeper=resume", f"hydra.sweeper.sweep_dir={where}",
        f"hydra.sweeper.jobs=[{','.join(str(j) for j in todo)}]"])
    return todo, statuses, {n: plan[n] for n in todo}, argv, cwd, False


def main(argv: Sequence[str]) -> int:
    """``mlxhydra resume SWEEP_DIR [--dry-run]``; returns the exit status."""
    p = argparse.ArgumentParser(
        prog="mlxhydra resume",
        description="Run the missing, failed and interrupted jobs of a sweep again, into the same "
                    "sweep directory and job numbers, with its recorded launcher and overrides.")
    p.add_argument("sweep_dir", help="the sweep's directory, latest, or a unique prefix of its name")
    p.add_argument("--dry-run", action="store_true", help="print the jobs and the command; run nothing")
    p.add_argument("overrides", nargs="*", help="this command's consent, e.g. load.trust_remote_code=true "
                   "(never taken from the record)")
    args = p.parse_args(list(argv))
    try:
        sweep = SweepDir(find_run(args.sweep_dir).resolve())
        todo, statuses, known, command, cwd, search = plan_resume(sweep)
        command += list(args.overrides)
    except RunDirError as e:
        sys.stderr.write(f"mlxhydra: resume {e}\n")
        return 2
    total = len(set(statuses) | set(todo))
    if not todo:
        print(f"nothing to resume: all {total} jobs of {shown(sweep.path)} finished")
        return 0
    for n in todo:
        print(f"job {n} ({statuses.get(n, 'missing')}): {' '.join(known.get(n, ['(new trial)']))}")
    print(f"resuming {len(todo)} of {total} jobs in {shown(sweep.path)}")
    sys.stdout.flush()
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
