"""Shell completion: ``mlxhydra -sc query=bash`` (``=zsh``, ``=fish``) answers what the shell asks.

Hydra's completion script (``eval "$(mlxhydra -sc install=bash)"``) runs
``mlxhydra -sc query=bash`` with the line typed so far in ``COMP_LINE`` and
offers the words printed on stdout. Here the first word completes to a
subcommand too; after a subcommand, its own flags (read from its argparse
parser), run names for the arguments that name a run (``latest``,
``latest/<job>``, a run's or sweep's name, a path) and Hydra's override
completion for the overrides that ``replay``, ``resume`` and ``launch`` pass
on. The main command gets Hydra's flags and Hydra's override completion.

The script shows stderr in the middle of the line being typed: nothing here
writes there, and a failure only means no words (``HYDRA_COMP_DEBUG=1``,
the script's own debugging switch, lets the errors through).
"""

import argparse
import io
import os
import sys
from bisect import bisect_left
from contextlib import contextmanager, redirect_stdout
from importlib import import_module
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

from .record.latest import LATEST, OUTPUTS, all_run_dirs
from .record.run_dir import SweepDir

SHELLS = ("bash", "zsh", "fish")
# What each positional argument of a subcommand names (tests/test_completion.py checks that every
# positional of every subcommand is here): a run or sweep job, a sweep, either, or overrides.
RUN, SWEEP, ANY, OVERRIDES = "run", "sweep", "any", "overrides"
ARGUMENT_KINDS = {"run_a": RUN, "run_b": RUN, "run_dir": RUN, "sweep_dir": SWEEP, "dir": ANY,
                  "overrides": OVERRIDES}


def completion_query(args: Sequence[str]) -> Optional[str]:
    """The shell of ``-sc query=SHELL`` (or ``--shell-completion``), else None."""
    if "-sc" not in args and "--shell-completion" not in args:
        return None
    shells = [a.partition("=")[2] for a in args if a.startswith("query=")]
    return shells[0] if shells and shells[0] in SHELLS else None


@contextmanager
def quiet_stderr() -> Iterator[None]:
    """stderr (Python's and file descriptor 2, for what Hydra and argparse print) to nowhere."""
    if os.environ.get("HYDRA_COMP_DEBUG") == "1":
        yield
        return
    saved, sys.stderr = sys.stderr, io.StringIO()
    try:
        saved_fd = os.dup(2)
    except OSError:  # stderr closed: nothing to keep quiet
        saved_fd = None
    if saved_fd is not None:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)
    try:
        yield
    finally:
        sys.stderr = saved
        if saved_fd is not None:
            os.dup2(saved_fd, 2)
            os.close(saved_fd)


def typed_words(line: str) -> Tuple[List[str], str]:
    """(the words after the program name, the word being completed) of ``COMP_LINE``."""
    words = line.split()
    current = "" if not line or line[-1].isspace() else words.pop()
    programs = [i for i, w in enumerate(words) if w.endswith("mlxhydra")]  # also python -m mlxhydra
    return words[programs[0] + 1 if programs else 1:], current


def complete(shell: str, subcommands: Dict[str, str]) -> int:
    """Print the candidates for ``COMP_LINE`` (up to ``COMP_POINT``); always exit status 0."""
    line = os.environ.get("COMP_LINE", "")
    point = os.environ.get("COMP_POINT", "")
    if point.isdigit():
        line = line[: int(point)]
    words, current = typed_words(line)
    with quiet_stderr():
        try:
            if words and words[0] in subcommands:
                found = subcommand_candidates(subcommands[words[0]], words[1:], current, shell)
            else:
                found = main_candidates(words, current, shell, subcommands)
        except (Exception, SystemExit):
            if os.environ.get("HYDRA_COMP_DEBUG") == "1":
                raise
            found = []
    sys.stdout.write(("\n" if shell == "fish" else " ").join(dict.fromkeys(found)) + "\n")
    sys.stdout.flush()
    return 0


def main_candidates(words: List[str], current: str, shell: str,
                    subcommands: Dict[str, str]) -> List[str]:
    """Hydra's flags, a flag's choices, or subcommands and Hydra's candidates."""
    from ._upstream import hydra_args_parser

    parser = hydra_args_parser()  # its --version is mlxhydra's (cli.py answers it first)
    if current.startswith("-"):
        return flags(parser, current)
    waiting = option_waiting(parser, words)
    if waiting is not None:
        return [c for c in waiting.choices or () if str(c).startswith(current)]
    own = [name for name in subcommands if name.startswith(current)] if not words else []
    return own + hydra_candidates(words, current, shell)


def hydra_candidates(words: List[str], current: str, shell: str) -> List[str]:
    """What Hydra's own completion offers after the main command's ``words``."""
    from .command import run_hydra

    saved_line, saved_argv = os.environ.get("COMP_LINE"), sys.argv[1:]
    os.environ["COMP_LINE"] = " ".join(["mlxhydra", *words, current])
    out = io.StringIO()
    try:
        with redirect_stdout(out):
            run_hydra(["-sc", f"query={shell}"])
    finally:
        sys.argv[1:] = saved_argv
        if saved_line is None:
            os.environ.pop("COMP_LINE", None)
        else:
            os.environ["COMP_LINE"] = saved_line
    text = out.getvalue()
    return [w for w in (text.splitlines() if shell == "fish" else text.split()) if w]


class _ParserBuilt(Exception):
    def __init__(self, parser: argparse.ArgumentParser, known_args: bool):
        super().__init__(parser.prog)
        self.parser, self.known_args = parser, known_args


@contextmanager
def _parsing_stopped() -> Iterator[None]:
    def stop(known_args):
        def parse(self, *args, **kwargs):
            raise _ParserBuilt(self, known_args)
        return parse

    cls = argparse.ArgumentParser
    saved = cls.parse_args, cls.parse_known_args
    cls.parse_args, cls.parse_known_args = stop(False), stop(True)
    try:
        yield
    finally:
        cls.parse_args, cls.parse_known_args = saved


def subcommand_parser(target: str) -> Tuple[argparse.ArgumentParser, bool]:
    """The parser a subcommand (``module:function``) builds, and whether it keeps unknown words.

    Each subcommand builds its parser as it starts; it is taken at the moment the subcommand
    parses (which is stopped), so the words completed are those the subcommand accepts.

    Raises:
        LookupError: the subcommand parses no arguments with argparse.
    """
    module, _, name = target.partition(":")
    function = getattr(import_module(module), name)
    with _parsing_stopped():
        try:
            function(["--help"])
        except _ParserBuilt as built:
            return built.parser, built.known_args
    raise LookupError(f"{target} parses no arguments with argparse")


def flags(parser: argparse.ArgumentParser, current: str) -> List[str]:
    """The parser's option strings that start with ``current``, long ones first."""
    found = [s for a in parser._actions for s in a.option_strings if s.startswith(current)]
    return sorted(found, key=lambda s: (not s.startswith("--"), s))


def takes_value(action: argparse.Action) -> bool:
    return action.nargs != 0


def option_waiting(parser: argparse.ArgumentParser, words: List[str]) -> Optional[argparse.Action]:
    """The option whose value the next word is (the last word names it), or None."""
    if not words:
        return None
    action = parser._option_string_actions.get(words[-1])
    return action if action is not None and takes_value(action) else None


def positional_words(parser: argparse.ArgumentParser, words: List[str]) -> List[str]:
    """``words`` without the options and the values they take."""
    found, skip = [], False
    for word in words:
        if skip:
            skip = False
        elif word.startswith("-") and word != "-":
            action = parser._option_string_actions.get(word)
            skip = action is not None and takes_value(action)
        else:
            found.append(word)
    return found


def positional_kinds(parser: argparse.ArgumentParser, count: int, known_args: bool) -> List[str]:
    """The kind (:data:`ARGUMENT_KINDS`) of each of the first ``count`` positional words;
    words past the parser's positionals are overrides for ``parse_known_args``, else nothing."""
    kinds: List[str] = []
    for action in (a for a in parser._actions if not a.option_strings):
        many = action.nargs in ("*", "+", argparse.REMAINDER)
        kinds += [ARGUMENT_KINDS.get(action.dest, "")] * (count + 1 - len(kinds) if many else 1)
    return (kinds + [OVERRIDES if known_args else ""] * (count + 1))[: count + 1]


def subcommand_candidates(target: str, words: List[str], current: str, shell: str) -> List[str]:
    """A subcommand's flags, a flag's choices, run names or Hydra's override candidates."""
    parser, known_args = subcommand_parser(target)
    if current.startswith("-"):
        return flags(parser, current)
    waiting = option_waiting(parser, words)
    if waiting is not None:
        return [str(c) for c in waiting.choices or () if str(c).startswith(current)]
    positionals = positional_words(parser, words)
    kinds = positional_kinds(parser, len(positionals), known_args)
    if kinds[-1] == OVERRIDES:
        overrides = [w for w, k in zip(positionals, kinds) if k == OVERRIDES]
        return hydra_candidates(overrides, current, shell)
    if kinds[-1] in (RUN, SWEEP, ANY):
        return run_references(current, kinds[-1])
    return []


def run_references(current: str, kind: str, outputs: Path = Path(OUTPUTS)) -> List[str]:
    """Run references (record/latest.py: ``find_run``) that start with ``current``: ``latest``,
    ``latest/<job>``, the unique names of runs or sweeps under ``outputs``, directories."""
    latest = outputs / LATEST
    if current.startswith(LATEST + "/"):
        jobs = sorted(all_run_dirs(latest)) if kind != SWEEP and latest.is_dir() else []
        found = [f"{LATEST}/{job.relative_to(latest)}" for job in jobs if job != latest]
    else:
        found = latest_references(latest, kind) + run_names(outputs, kind) + directories(current)
    return [c for c in found if c.startswith(current)]


def is_sweep(directory: Path) -> bool:
    return (directory / SweepDir.PLAN).is_file()


def latest_references(latest: Path, kind: str) -> List[str]:
    """``latest`` where it names what ``kind`` wants, ``latest/`` for a run in the latest sweep."""
    if not latest.is_dir():
        return []
    sweep = is_sweep(latest)
    if kind == RUN:
        return [f"{LATEST}/" if sweep else LATEST]
    return [LATEST] if kind == ANY or sweep else []


def run_names(outputs: Path, kind: str) -> List[str]:
    """Names of runs (single runs and sweep jobs) or sweeps under ``outputs`` that name one
    directory (``find_run`` refuses a prefix of several)."""
    if not outputs.is_dir():
        return []
    runs = all_run_dirs(outputs)
    sweeps = sorted({d.parent for d in runs if is_sweep(d.parent)})
    wanted = {RUN: runs, SWEEP: sweeps, ANY: runs + sweeps}[kind]
    # find_run matches a prefix against every run and its parent (a sweep, or a date folder).
    names = sorted(d.name for d in {*runs, *(d.parent for d in runs)} if d != outputs)

    def unique(name: str) -> bool:
        start = bisect_left(names, name)
        return start + 1 == len(names) or not names[start + 1].startswith(name)

    return sorted({d.name for d in wanted if unique(d.name)})


def directories(current: str) -> List[str]:
    """Directories whose path starts with ``current`` (hidden ones only when asked), with ``/``."""
    head, tail = os.path.split(current)
    try:
        entries = sorted(os.scandir(os.path.expanduser(head) or "."), key=lambda e: e.name)
    except OSError:
        return []
    return [os.path.join(head, e.name) + "/" for e in entries
            if e.name.startswith(tail) and (tail.startswith(".") or not e.name.startswith("."))
            and e.is_dir()]
