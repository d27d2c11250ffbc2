"""The command's own help, --version, the extra a missing plugin needs, and shell completion."""

import importlib.util
from importlib import metadata

import pytest

from conftest import run_cli
from mlxhydra.cli import SUBCOMMANDS
from mlxhydra.config.plugin_extras import EXTRAS, missing_extras

pytestmark = pytest.mark.slow


def test_help_is_mlxhydras_own(tmp_path):
    result = run_cli("--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert text.startswith("mlxhydra: ")
    assert "model= accepts:" in text and "model=./llama" in text
    assert "logger: csv, mlflow, tensorboard" in text  # Hydra's listing of the groups
    for group in ("model", "patch", "quant", "load", "task", "logger"):
        assert f"\n  {group} " in text  # one line each
    for name in SUBCOMMANDS:
        assert f"\n  {name} " in text
    assert "quant.bits=4" in text and "--hydra-help" in text and "docs/" in text
    assert "powered by Hydra" not in text
    assert not list(tmp_path.rglob("run.json"))  # --help runs nothing


def test_version_names_mlxhydra_and_its_dependencies(tmp_path):
    result = run_cli("--version", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"mlxhydra {metadata.version('mlxhydra')}"
    for package in ("mlx", "mlx-lm", "hydra-core", "omegaconf"):
        assert f"  {package} {metadata.version(package)}" in lines
    assert "Hydra 1." not in result.stdout


def test_a_missing_plugin_names_the_extra(tmp_path):
    absent = [(group, option, extra) for group, table in EXTRAS.items()
              for option, (module, extra, _) in table.items()
              if importlib.util.find_spec(module.split(".")[0]) is None
              or importlib.util.find_spec(module) is None]
    if not absent:
        pytest.skip("every optional plugin is installed")
    group, option, extra = absent[0]
    result = run_cli("-m", f"{group}={option}", "quant.bits=4,8", cwd=tmp_path)
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"mlxhydra: {group}={option} needs ")
    assert line.endswith(f"pip install 'mlxhydra[{extra}]'") or extra == "rq"
    assert not (tmp_path / "outputs" / "multirun").exists()  # nothing ran
    # installed ones pass, several options at once are each checked
    assert missing_extras(["hydra/launcher=basic", "logger=[csv]"]) == []
    assert len(missing_extras([f"{group}={option}", f"{group}={option}"])) == 2


def test_subcommands_complete_in_the_shell(tmp_path):
    result = run_cli("-sc", "query=bash", cwd=tmp_path, env={"COMP_LINE": "mlxhydra re"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[:2] == ["replay", "resume"]
    assert "runs" not in result.stdout.split()
    overrides = run_cli("-sc", "query=bash", cwd=tmp_path, env={"COMP_LINE": "mlxhydra quant="})
    assert "quant=4bit" in overrides.stdout.split() and "replay" not in overrides.stdout
    install = run_cli("-sc", "install=bash", cwd=tmp_path)
    assert install.returncode == 0 and "complete" in install.stdout
