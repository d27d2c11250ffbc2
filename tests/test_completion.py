"""Shell completion: ``mlxhydra -sc query=bash`` with the typed line in ``COMP_LINE``.

Subcommands' flags, run names that ``find_run`` accepts, Hydra's candidates
for the main command and for the overrides subcommands pass on, and never a
word on stderr. Most cases run in this process; the real command and the
real bash script run in subprocesses.
"""

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import run_cli

from mlxhydra.cli import SUBCOMMANDS
from mlxhydra.completion import ARGUMENT_KINDS, complete, subcommand_parser
from mlxhydra.errors import RunDirError
from mlxhydra.record.latest import find_run, mark_latest
from mlxhydra.record.schema import write_record

SWEEP_A = "outputs/multirun/2026-01-02/09-00-00_cccc"
SWEEP_B = "outputs/multirun/2026-01-02/09-30-00_dddd"
RUNS = ("outputs/runs/2026-01-01/10-00-00_aaaa", "outputs/runs/2026-01-01/10-30-00_bbbb",
        f"{SWEEP_A}/0_quant.bits=2", f"{SWEEP_A}/1_quant.bits=4", f"{SWEEP_B}/0_quant.bits=2")


def outputs_tree(cwd: Path) -> None:
    """Two single runs and two sweeps (both with a job 0_quant.bits=2); latest is the second sweep."""
    for name in RUNS:
        (cwd / name).mkdir(parents=True)
        write_record(cwd / name / "run.json", {"status": "completed"})
    for sweep in (SWEEP_A, SWEEP_B):
        (cwd / sweep / "multirun.yaml").write_text("hydra: {}\n")
    mark_latest(cwd / SWEEP_B, "sweep", cwd)


@pytest.fixture
def tree(tmp_path, monkeypatch):
    outputs_tree(tmp_path)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def offered(monkeypatch, capfd):
    """The words ``complete`` prints for a line (checking that stderr, fd 2 included, stays empty)."""
    def ask(line, shell="bash", point=None, subcommands=SUBCOMMANDS):
        monkeypatch.setenv("COMP_LINE", line)
        if point is None:
            monkeypatch.delenv("COMP_POINT", raising=False)
        else:
            monkeypatch.setenv("COMP_POINT", str(point))
        assert complete(shell, subcommands) == 0
        out, err = capfd.readouterr()
        assert err == "" and out.endswith("\n")
        return out[:-1].split("\n" if shell == "fish" else " ") if out != "\n" else []
    return ask


def test_subcommands_complete_their_own_flags(tree, offered):
    assert offered("mlxhydra runs --w") == ["--where"]
    assert offered("mlxhydra runs --") == ["--csv", "--help", "--json", "--last", "--reverse",
                                           "--sort", "--where"]
    assert offered("mlxhydra replay --c") == ["--config-dir", "--config-name", "--cwd"]
    assert offered("mlxhydra launch -") == ["--help", "--port", "--ranks", "--verbose", "-h", "-n"]
    assert offered("mlxhydra runs --sort=-") == []  # a flag's value: the shell's own completion
    assert offered("mlxhydra runs --sort ") == [] and offered("mlxhydra replay --cwd ") == []


def test_run_arguments_complete_to_names_that_find_run_accepts(tree, offered):
    names = ["10-00-00_aaaa", "10-30-00_bbbb", "1_quant.bits=4"]  # 0_quant.bits=2: in two sweeps
    assert offered("mlxhydra diff ") == ["latest/", *names, "outputs/"]  # latest is a sweep
    assert offered("mlxhydra diff 10-00-00_aaaa ") == ["latest/", *names, "outputs/"]
    assert offered("mlxhydra diff a b ") == []
    assert offered("mlxhydra diff latest/") == ["latest/0_quant.bits=2"]
    assert offered("mlxhydra replay 1") == names
    assert offered("mlxhydra summarize ") == ["latest", "09-00-00_cccc", "09-30-00_dddd", "outputs/"]
    assert offered("mlxhydra resume ") == ["latest", "09-00-00_cccc", "09-30-00_dddd", *names, "outputs/"]
    assert offered("mlxhydra summarize 09-0") == ["09-00-00_cccc"]
    assert offered("mlxhydra runs ")[:2] == ["latest", "09-00-00_cccc"]  # runs and sweeps
    assert offered("mlxhydra replay outputs/m") == ["outputs/multirun/"]
    assert offered("mlxhydra replay outputs/multirun/2026-01-02/") == [
        f"{SWEEP_A}/", f"{SWEEP_B}/"]
    for name in names + ["latest/0_quant.bits=2", "09-00-00_cccc"]:
        assert find_run(name).is_dir()
    with pytest.raises(RunDirError, match="2 runs start with it"):
        find_run("0_quant.bits=2")


def test_a_single_run_as_latest_and_no_outputs(tree, offered, tmp_path, monkeypatch):
    mark_latest(tree / RUNS[0], "run", tree)
    assert offered("mlxhydra replay l") == ["latest"]
    assert offered("mlxhydra summarize l") == []  # latest is not a sweep
    assert offered("mlxhydra resume l") == ["latest"]  # a run resumes too
    assert offered("mlxhydra diff latest/") == []
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.chdir(empty)
    assert offered("mlxhydra diff ") == []


def test_the_main_command_completes_flags_and_subcommands_without_asking_hydra(offered):
    assert offered("mlxhydra --c") == ["--cfg", "--config-dir", "--config-name", "--config-path"]
    assert offered("mlxhydra --cfg ") == ["job", "hydra", "all"]
    assert offered("mlxhydra --info d") == ["defaults", "defaults-tree"]
    assert offered("mlxhydra re") == ["replay", "resume"]
    assert offered("mlxhydra runs --w", shell="fish") == ["--where"]
    assert offered("mlxhydra runs --", shell="fish")[:2] == ["--csv", "--help"]
    line = "mlxhydra runs --w diff"  # the cursor after --w
    assert offered(line, point=len("mlxhydra runs --w")) == ["--where"]


def test_overrides_complete_as_for_the_main_command(tree, offered):
    mixed = ["quant=mixed_2_6", "quant=mixed_3_4", "quant=mixed_3_6", "quant=mixed_4_6"]
    assert offered("mlxhydra quant=mi") == mixed
    assert offered("mlxhydra replay latest/0 quant=mi") == mixed
    assert offered("mlxhydra launch -n 2 quant=mi") == mixed
    assert offered("mlxhydra resume latest --dry-run task=kl task.num") == ["task.num_samples="]
    assert offered("mlxhydra foo bar ") == []  # Hydra cannot parse 'foo': no words, no error
    assert sys.argv[1:] != ["-sc", "query=bash"]  # this process's argv is left as it was


def no_parser(argv):
    return 0


def test_a_failure_is_silent_unless_debugging(offered, monkeypatch, capfd):
    odd = {"odd": "test_completion:no_parser"}
    assert offered("mlxhydra odd --", subcommands=odd) == []
    monkeypatch.setenv("HYDRA_COMP_DEBUG", "1")
    monkeypatch.setenv("COMP_LINE", "mlxhydra odd --")
    with pytest.raises(LookupError, match="test_completion:no_parser parses no arguments"):
        complete("bash", odd)


def test_every_subcommand_gives_its_parser_and_every_argument_has_a_kind(capfd):
    parse_args = argparse.ArgumentParser.parse_args
    for name, target in SUBCOMMANDS.items():
        parser, known_args = subcommand_parser(target)
        assert parser.prog == f"mlxhydra {name}" and known_args == (name == "launch")
        positionals = [a.dest for a in parser._actions if not a.option_strings]
        assert set(positionals) <= set(ARGUMENT_KINDS), name
    assert argparse.ArgumentParser.parse_args is parse_args  # put back
    assert capfd.readouterr() == ("", "")  # no subcommand ran: nothing printed


@pytest.mark.slow
def test_the_real_query_prints_candidates_and_never_an_error(tmp_path):
    outputs_tree(tmp_path)
    for line, words in (("mlxhydra diff ", "latest/ 10-00-00_aaaa 10-30-00_bbbb 1_quant.bits=4 outputs/"),
                        ("mlxhydra foo bar ", "")):  # Hydra's parse error, before: on the terminal
        result = run_cli("-sc", "query=bash", cwd=tmp_path, env={"COMP_LINE": line})
        assert (result.returncode, result.stdout, result.stderr) == (0, words + "\n", ""), line


@pytest.mark.slow
def test_bash_completes_through_hydras_script(tmp_path):
    program = Path(sys.executable).parent / "mlxhydra"
    if not program.is_file():
        pytest.skip(f"no console script {program} (mlxhydra is not installed in this environment)")
    outputs_tree(tmp_path)
    script = """eval "$(mlxhydra -sc install=bash)"
    ask() { COMP_LINE="$1"; COMP_POINT=${#1}; words=($1); [[ "$1" == *" " ]] && words+=("")
            COMP_CWORD=$(( ${#words[@]} - 1 )); hydra_bash_completion; echo "${COMPREPLY[*]}"; }
    ask "mlxhydra diff latest/"; ask "mlxhydra runs --w"
    """
    env = {**os.environ, "PATH": f"{program.parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("HYDRA_FULL_ERROR", None)
    result = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=120)
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.splitlines() == ["latest/0_quant.bits=2", "--where"]
