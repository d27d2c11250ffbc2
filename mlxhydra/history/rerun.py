"""How ``replay`` and ``resume`` start the real command again: the installed package, here.

A re-run runs in the current directory (or ``--cwd DIR``), never in the
working directory a record names. And it starts the installed mlxhydra in a
way no working directory can shadow: ``python -m mlxhydra`` puts the working
directory first on ``sys.path``, so a ``mlxhydra/`` (or ``hydra_plugins/``)
folder there would run instead. The command is ``python -c`` with a short
program that removes that entry before importing anything, then runs the
package as ``-m`` does. The user's environment (``PYTHONPATH``, site-packages,
an editable install) stays as it is: Python 3.11's ``-P`` would do the same
but the project supports 3.10, and ``-I`` would drop ``PYTHONPATH`` and the
user's site-packages.
"""

import argparse
import signal
import subprocess
import sys
from pathlib import Path
from typing import List, Optional, Sequence

from ..errors import Interrupted, RunDirError
from ..file_checks import directory_problem
from ..job.thread import interruption_handlers

# python -c puts "" (the working directory) first on sys.path: removed before any import.
# The record's "command" then reads as the equivalent python -m mlxhydra ...
BOOT = ("import sys\n"
        "sys.path[:] = [p for p in sys.path if p != '']\n"
        "sys.orig_argv = [sys.orig_argv[0], '-m', 'mlxhydra', *sys.argv[1:]]\n"
        "import runpy\n"
        "runpy.run_module('mlxhydra', run_name='__main__', alter_sys=True)\n")


def installed_command(*args: str) -> List[str]:
    """argv of ``python -m mlxhydra ARGS`` that the working directory cannot shadow.

    The first three items are the interpreter and the program (``argv[3:]`` are ``args``).
    """
    return [sys.executable, "-c", BOOT, *args]


def add_rerun_options(parser: argparse.ArgumentParser) -> None:
    """``--cwd``, ``--config-dir`` and ``--config-name``: a re-run's own, never the record's."""
    parser.add_argument("--cwd", help="run in this directory (default: the current one; the "
                        "recorded working directory is never used unless given here)")
    parser.add_argument("--config-dir", help="Hydra's --config-dir for the re-run (never taken "
                        "from the record)")
    parser.add_argument("--config-name", help="Hydra's --config-name for the re-run")


def rerun_options(args: argparse.Namespace) -> List[str]:
    """The ``--config-dir``/``--config-name`` options given to the re-run command."""
    return (["--config-dir", args.config_dir] if args.config_dir else []) + (
        ["--config-name", args.config_name] if args.config_name else [])


def rerun_cwd(given: Optional[str]) -> Path:
    """The directory a re-run runs in: ``--cwd DIR``, else the current one.

    Raises:
        RunDirError: ``--cwd`` is not a directory.
    """
    if given is None:
        return Path.cwd()
    problem = directory_problem(given)
    if problem:
        raise RunDirError(f"--cwd {given}: {problem}")
    return Path(given).absolute()


def recorded_options_note(options: Sequence[str]) -> List[str]:
    """``"--config-dir DIR (...)"``: the recorded primary config options, which are not re-applied."""
    if not options:
        return []
    return [f"{' '.join(options)} (YAML outside the record: give it to this command)"]


def run_forwarding_signals(command: List[str], cwd: Path, stdout: Optional[int]) -> int:
    """Run the command; a SIGINT, SIGTERM or SIGHUP of this process is passed on to it.

    The re-run then records ``interrupted`` and exits 128 + the signal
    number, which is returned (never a SIGKILL that would leave its record running).
    """
    with subprocess.Popen(command, cwd=cwd, stdout=stdout) as proc:
        while True:
            try:
                with interruption_handlers():
                    return proc.wait()
            except (KeyboardInterrupt, Interrupted) as e:
                signum = e.signum if isinstance(e, Interrupted) else signal.SIGINT
                if proc.poll() is None:
                    proc.send_signal(signum)
