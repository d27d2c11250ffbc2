"""The habits users bring: MLflow's own environment, the versions that change a metric, every
imported package declared, one version string, and summary figures that leave pyplot alone.

In-process and small. MLflow's environment against a real ``mlflow server``, through the real
command: tests/test_mlflow_server.py.
"""

import ast
import json
import struct
import sys
from importlib import metadata
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conftest import ROOT
from helpers.summary_sweeps import two_job_kl_sweep

ENV_URI, ENV_EXPERIMENT = "MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME"
RECORDED_PACKAGES = ["python", "mlx", "mlx-lm", "hydra-core", "omegaconf", "mlxhydra", "transformers",
                     "tokenizers", "numpy", "huggingface-hub", "safetensors", "lm-eval"]


@pytest.fixture
def no_mlflow_env(monkeypatch):
    for name in (ENV_URI, ENV_EXPERIMENT):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


# --- MLflow's environment ------------------------------------------------------------------

def test_mlflow_settings_take_mlflows_environment_when_the_config_is_silent(no_mlflow_env):
    from mlxhydra import compose
    from mlxhydra.tracking.tracker_callback import logger_settings

    cfg = compose(["logger=mlflow"])
    assert logger_settings(cfg, "mlflow") == {
        "tracking_uri": "sqlite:///outputs/mlflow.db", "experiment": "mlxhydra", "artifacts": True}
    no_mlflow_env.setenv(ENV_URI, "http://mlflow.example:5000")
    no_mlflow_env.setenv(ENV_EXPERIMENT, "team-study")
    assert logger_settings(cfg, "mlflow") == {
        "tracking_uri": "http://mlflow.example:5000", "experiment": "team-study", "artifacts": True}
    # The config wins over the environment.
    mine = compose(["logger=mlflow", "logger.mlflow.tracking_uri=sqlite:///mine.db",
                    "logger.mlflow.experiment=mine"])
    assert logger_settings(mine, "mlflow") == {
        "tracking_uri": "sqlite:///mine.db", "experiment": "mine", "artifacts": True}
    # What a run records (.hydra/config.yaml: the config unresolved) names the variables, never
    # their values: a replay resolves them in its own environment.
    assert OmegaConf.to_container(cfg.logger, resolve=False) == {"mlflow": {
        "tracking_uri": "${oc.env:MLFLOW_TRACKING_URI,sqlite:///outputs/mlflow.db}",
        "experiment": "${oc.env:MLFLOW_EXPERIMENT_NAME,mlxhydra}", "artifacts": True}}


def test_an_empty_mlflow_variable_is_refused_before_anything_runs(no_mlflow_env):
    from mlxhydra import compose
    from mlxhydra.errors import ConfigError
    from mlxhydra.job.validation import validate

    no_mlflow_env.setenv(ENV_URI, "")
    no_mlflow_env.setenv(ENV_EXPERIMENT, "")
    with pytest.raises(ConfigError) as e:
        validate(compose(["logger=mlflow"]))
    assert e.value.problems == [
        "logger.mlflow.tracking_uri='': expected a tracking URI (sqlite:///outputs/mlflow.db, "
        "http://host:5000), from the config or MLFLOW_TRACKING_URI",
        "logger.mlflow.experiment='': expected an experiment name, from the config or "
        "MLFLOW_EXPERIMENT_NAME",
    ]
    no_mlflow_env.setenv(ENV_URI, "sqlite:///x.db")  # one character is enough
    no_mlflow_env.setenv(ENV_EXPERIMENT, "x")
    assert validate(compose(["logger=mlflow"])) is not None


def test_a_failed_job_with_an_empty_store_uri_is_not_logged_anywhere(tmp_path, monkeypatch):
    """The tracker still logs a job that failed on its settings: with an empty URI, MLflow would
    create its own default store in the working directory."""
    from mlxhydra.errors import ConfigError
    from mlxhydra.tracking.mlflow_logger import MlflowLogger
    from mlxhydra.tracking.tracked_job import TrackedJob

    monkeypatch.chdir(tmp_path)
    job = TrackedJob(run_dir=tmp_path, name="job", cwd=str(tmp_path), status="failed", job_num=None,
                     started=None, ended=None)
    with pytest.raises(ConfigError) as e:
        MlflowLogger().log_job({"tracking_uri": "", "experiment": "mlxhydra", "artifacts": True}, job)
    assert str(e.value).startswith("logger.mlflow.tracking_uri='': expected a tracking URI")
    assert list(tmp_path.iterdir()) == []


def test_a_partial_logger_node_is_completed_from_the_shipped_yaml(no_mlflow_env):
    from mlxhydra.tracking.tracker_callback import logger_settings

    no_mlflow_env.setenv(ENV_URI, "http://mlflow.example:5000")
    partial = OmegaConf.create({"logger": {"mlflow": {"artifacts": False}}})
    assert logger_settings(partial, "mlflow") == {
        "tracking_uri": "http://mlflow.example:5000", "experiment": "mlxhydra", "artifacts": False}
    assert logger_settings(OmegaConf.create({}), "csv") == {"path": "outputs/tracking.csv"}
    assert logger_settings(OmegaConf.create({}), "tensorboard") == {"log_dir": None}


@pytest.mark.parametrize("uri, shown", [
    ("sqlite:////work/outputs/mlflow.db", "sqlite:////work/outputs/mlflow.db"),
    ("http://mlflow.example:5000", "http://mlflow.example:5000"),
    ("https://me:s3cret@mlflow.example/x", "https://me:***@mlflow.example/x"),
    ("postgresql://me:p%40ss@db:5432/mlflow", "postgresql://me:***@db:5432/mlflow"),
    ("https://tok3n@mlflow.example", "https://***@mlflow.example"),  # a user name alone: a token
    ("https://me:@mlflow.example", "https://me:***@mlflow.example"),  # an empty password
    ("http://[::1", "http://[::1"),  # malformed: MLflow names it when it is used
])
def test_a_store_uri_is_shown_without_its_credentials(uri, shown):
    from mlxhydra.tracking.mlflow_logger import MlflowLogger
    from mlxhydra.tracking.store_uri import redacted_uri

    assert redacted_uri(uri) == shown
    error = f"MlflowException: API request to {uri}/api/2.0/mlflow/runs/create failed"
    assert MlflowLogger().redact({"tracking_uri": uri}, error) == error.replace(uri, shown)


# --- versions ------------------------------------------------------------------------------

def test_the_versions_that_change_a_metric_are_recorded():
    from mlxhydra.record.environment import versions

    found = versions()
    assert list(found) == RECORDED_PACKAGES
    assert found["python"] == ".".join(map(str, sys.version_info[:3]))
    for name in RECORDED_PACKAGES[1:]:
        assert found[name] == metadata.version(name), name


def test_a_package_not_installed_is_recorded_as_null(monkeypatch, capsys):
    import mlxhydra
    from mlxhydra.cli import print_version
    from mlxhydra.record import environment
    from mlxhydra.record.environment import versions

    installed = metadata.version
    absent = {"lm-eval", "tokenizers", "mlxhydra"}

    def version(name):
        if name in absent:
            raise metadata.PackageNotFoundError(name)
        return installed(name)

    monkeypatch.setattr(metadata, "version", version)
    environment._versions.cache_clear()  # read once per process: this one reads them again
    try:
        found = versions()
    finally:
        environment._versions.cache_clear()  # the next reader gets the installed versions
    assert [k for k, v in found.items() if v is None] == ["mlxhydra", "tokenizers", "lm-eval"]
    assert found["numpy"] == installed("numpy")
    assert mlxhydra.__version__ == "0+unknown"  # a source tree that is not installed
    print_version()
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "mlxhydra 0+unknown"
    assert "  lm-eval not installed" in lines and "  tokenizers not installed" in lines
    assert f"  transformers {installed('transformers')}" in lines


def _run_dir(path: Path, versions: dict) -> Path:
    (path / ".hydra").mkdir(parents=True)
    (path / ".hydra" / "overrides.yaml").write_text("- task=kl\n")
    (path / ".hydra" / "config.yaml").write_text("task:\n  name: kl\n")
    (path / "run.json").write_text(json.dumps({"status": "completed", "versions": versions,
                                               "metrics": {"kl_mean": 0.25}}))
    return path


def test_diff_names_the_versions_that_differ(tmp_path, capsys):
    from mlxhydra.history.diff import main

    base = {"python": "3.11.7", "mlx": "0.32.4", "mlx-lm": "0.32.2"}
    a = _run_dir(tmp_path / "a", {**base, "transformers": "5.25.0", "numpy": "2.4.6", "lm-eval": "0.4.13"})
    b = _run_dir(tmp_path / "b", {**base, "transformers": "5.26.0", "numpy": "2.4.6", "lm-eval": None})
    old = _run_dir(tmp_path / "old", base)  # recorded before these versions were
    same = _run_dir(tmp_path / "same", {**base, "transformers": "5.25.0", "numpy": "2.4.6",
                                        "lm-eval": "0.4.13"})
    assert main([str(a), str(b), "--exit-code"]) == 1
    assert capsys.readouterr().out.splitlines() == [
        "field                  A       B",
        "---------------------  ------  ------",
        "versions.transformers  5.25.0  5.26.0",
        "versions.lm-eval       0.4.13  null",
        "",
        f"A: {a}",
        f"B: {b}",
    ]
    assert main([str(old), str(a)]) == 0
    assert capsys.readouterr().out.splitlines()[2:5] == [
        "versions.transformers  (absent)  5.25.0",
        "versions.numpy         (absent)  2.4.6",
        "versions.lm-eval       (absent)  0.4.13",
    ]
    assert main([str(a), str(same), "--exit-code"]) == 0
    assert capsys.readouterr().out == "no differences\n"


# --- packages and the version string -------------------------------------------------------

def _imported_modules() -> dict:
    """Top-level modules imported anywhere in mlxhydra/ and hydra_plugins/ (function-local too)."""
    found: dict = {}
    for path in sorted([*(ROOT / "mlxhydra").rglob("*.py"), *(ROOT / "hydra_plugins").rglob("*.py")]):
        if "conf" in path.relative_to(ROOT).parts:  # mlxhydra/conf: a link to the YAML tree
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            for name in names:
                found.setdefault(name.split(".")[0], path.relative_to(ROOT))
    return {m: p for m, p in found.items()
            if m not in sys.stdlib_module_names and m not in ("mlxhydra", "hydra_plugins")}


def _requirement_name(text: str) -> str:
    name = text.split(";")[0].strip()
    for stop in "<>=!~[ ":
        name = name.split(stop)[0]
    return name.lower().replace("_", "-").replace(".", "-")


def test_every_imported_package_is_declared():
    tomllib = pytest.importorskip("tomllib", reason="tomllib: Python 3.11 or later")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {_requirement_name(r) for r in project["dependencies"]}
    declared |= {_requirement_name(r) for group in project["optional-dependencies"].values()
                 for r in group}
    providers = metadata.packages_distributions()
    undeclared = {}
    for module, where in _imported_modules().items():
        assert module in providers, f"{module} (imported in {where}) is not installed"
        names = {_requirement_name(d) for d in providers[module]}
        if not names & declared:
            undeclared[module] = (sorted(names), str(where))
    assert undeclared == {}
    # The ones that used to arrive only through other packages are core dependencies now.
    core = {_requirement_name(r) for r in project["dependencies"]}
    assert {"numpy", "pyyaml", "tqdm"} <= core


def test_the_version_is_written_once_in_pyproject():
    import mlxhydra

    assigned = []
    for path in (ROOT / "mlxhydra").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Assign) and any(
                    isinstance(t, ast.Name) and t.id == "__version__" for t in node.targets):
                assigned.append(str(path.relative_to(ROOT)))
    assert assigned == []
    assert mlxhydra.__version__ == metadata.version("mlxhydra")
    assert "__version__" in mlxhydra.__all__


# --- figures -------------------------------------------------------------------------------

def test_a_summary_leaves_the_callers_pyplot_alone(tmp_path):
    """A notebook's backend (inline there; svg here) and figures are its own: writing a sweep's
    summary draws on a Figure of its own."""
    import matplotlib
    import matplotlib.pyplot as plt

    from mlxhydra.sweeps.summary import write_summary

    before = matplotlib.get_backend()
    plt.switch_backend("svg")
    try:
        written = write_summary(two_job_kl_sweep(tmp_path / "sweep"))
        assert matplotlib.get_backend() == "svg"
        assert plt.get_fignums() == []
    finally:
        plt.switch_backend(before)
    png = tmp_path / "sweep" / "summary.png"
    assert written["files"][-1] == str(png) and written["metric"] == "kl_mean"
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", data[16:24]) == (750, 500)  # figsize 7.5 x 5 inches at 100 dpi
