"""``mlxhydra resume RUN_DIR``: go on with one run that was killed, interrupted or failed.

The run is started again as ``replay`` starts one (:func:`mlxhydra.history.replay.replay_command`:
the recorded overrides a record may give, the installed package, in the current directory or
``--cwd DIR``), but into its own run directory, whose earlier attempt is first moved, whole, to
``.attempts/<time>/`` inside it (nothing is deleted). A ``task=lora`` run goes on from its last
checkpoint (``task.resume_from=`` that attempt's ``checkpoints/``, or the checkpoint the attempt
itself went on from, when it wrote none); any other run, or one killed before its first
checkpoint, starts again from the beginning.
"""

import shutil
import sys
from datetime import datetime
from pathlib import Path
from typing import Any, List, Optional, Tuple

from ..config.recorded import quoted
from ..errors import MlxhydraError, RunDirError, one_line_message
from ..history.replay import PLAIN_PATH, replay_command
from ..history.rerun import rerun_cwd, rerun_options, run_forwarding_signals
from ..record.latest import shown
from ..record.run_dir import RunDir, SweepDir
from ..tasks.lora_checkpoint import STATE, read_meta, state_file
from ..tasks.lora_outputs import CHECKPOINTS
from .attempts import ATTEMPTS

RESUME_KEY = "task.resume_from"


def recorded_checkpoint(run_dir: RunDir) -> Optional[Tuple[Path, int]]:
    """(checkpoint file, its step) a task=lora run would go on from: its own last one, else the
    one it went on from itself; None for another task or a run with none."""
    task = run_dir.read_config().get("task")
    if not isinstance(task, dict) or task.get("name") != "lora":
        return None
    own = run_dir.path / CHECKPOINTS / STATE
    earlier = task.get("resume_from")
    for file in [own] + ([state_file(earlier)] if isinstance(earlier, str) and earlier else []):
        if file.is_file():
            try:
                return file, read_meta(file)["step"]
            except MlxhydraError as e:
                raise RunDirError(f"{run_dir.path}: its checkpoint cannot be resumed: {e}") from None
    return None


def last_attempt_checkpoint(sweep: SweepDir, num: int) -> Optional[Tuple[Path, int]]:
    """The checkpoint a sweep's job ``num`` goes on from: that of its latest attempt set aside
    under ``.attempts/`` (see :func:`recorded_checkpoint`), or None."""
    attempts = [p for p in (sweep.path / ATTEMPTS).glob("*@*")
                if p.name.split("@")[0].split("_")[0] == str(num) and (p / RunDir.RECORD).is_file()]
    if not attempts:
        return None
    return recorded_checkpoint(RunDir(max(attempts, key=lambda p: p.name.rsplit("@", 1)[1])))


def set_aside_run(run_dir: RunDir) -> Path:
    """Move everything of the run's directory but ``.attempts/`` into ``.attempts/<time>/``."""
    target = run_dir.path / ATTEMPTS / datetime.now().strftime("%Y-%m-%d_%H-%M-%S.%f")
    target.mkdir(parents=True)
    for entry in sorted(run_dir.path.iterdir()):
        if entry.name != ATTEMPTS:
            shutil.move(str(entry), str(target / entry.name))
    return target


def plan(run_dir: RunDir, args: Any) -> Tuple[List[str], Path, Optional[Tuple[Path, int]], List[str]]:
    """(argv, cwd, the checkpoint to go on from, notes); the checkpoint's path is where it will be
    once the attempt is set aside (see :func:`main`).

    Raises:
        RunDirError: a damaged record or checkpoint.
    """
    found = recorded_checkpoint(run_dir)
    extra = list(args.overrides)
    if found is not None:
        extra.append(f"{RESUME_KEY}=<checkpoint>")  # its final path is known once set aside
    argv, cwd, _, notes = replay_command(run_dir, extra, rerun_options(args), rerun_cwd(args.cwd),
                                         out_dir=str(run_dir.path.resolve()),
                                         replaced=(RESUME_KEY,), command="resume")
    return argv, cwd, found, notes


def main(run_dir: RunDir, args: Any) -> int:
    """Resume one run (see the module's docstring); returns the exit status."""
    try:
        sweep = run_dir.path.parent
        if (sweep / SweepDir.PLAN).is_file():  # its summary and job numbers belong to the sweep
            raise RunDirError(f"{run_dir.path} is a job of the sweep {shown(sweep)}: resume the sweep "
                              f"(mlxhydra resume {shown(sweep)}), which runs its unfinished jobs")
        status = run_dir.read_record().get("status")
        if status == "completed":
            print(f"nothing to resume: {shown(run_dir.path)} completed")
            return 0
        argv, cwd, found, notes = plan(run_dir, args)
    except (RunDirError, OSError) as e:
        sys.stderr.write(f"mlxhydra: resume {one_line_message(e)}\n")
        return 2
    for note in notes:
        sys.stderr.write(f"mlxhydra: {note}\n")
    where = (f"from its checkpoint at step {found[1]}" if found else "from the beginning (no checkpoint)")
    print(f"resuming {shown(run_dir.path)} ({status}) {where}")
    sys.stdout.flush()
    if args.dry_run:
        print(f"in {cwd}: {' '.join(argv[3:])}")
        return 0
    attempt = set_aside_run(run_dir)
    if found is not None:
        file = found[0]
        if file.is_relative_to(run_dir.path) and not file.is_relative_to(run_dir.path / ATTEMPTS):
            file = attempt / file.relative_to(run_dir.path)  # the attempt's own, moved with it
        value = str(file) if PLAIN_PATH.fullmatch(str(file)) else quoted(str(file))
        argv = [a if a != f"{RESUME_KEY}=<checkpoint>" else f"{RESUME_KEY}={value}" for a in argv]
    code = run_forwarding_signals(argv, cwd, None)
    if code in (129, 130, 143):
        sys.stderr.write("mlxhydra: resume interrupted (run it again to go on)\n")
    return code


def is_single_run(path: Path) -> bool:
    """A run's directory (its run.json) rather than a sweep's."""
    return (path / RunDir.RECORD).is_file() and not (path / SweepDir.PLAN).exists()
