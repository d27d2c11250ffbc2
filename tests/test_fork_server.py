"""What the CLI tests' fork server (tests/helpers/forkserver.py) refuses to serve: a command it
would run differently from a fresh interpreter gets one instead."""

import importlib

from helpers.forkserver import discover_plugins, env_differences, needs_fresh_interpreter, shadowing


def test_a_working_directory_that_adds_hydra_plugins_is_refused(tmp_path):
    discover_plugins()  # the server has scanned hydra_plugins, a namespace package
    (tmp_path / "hydra_plugins" / "evil").mkdir(parents=True)
    (tmp_path / "hydra_plugins" / "evil" / "__init__.py").write_text("")
    assert shadowing(str(tmp_path)) == ["hydra_plugins"]


def test_a_package_or_module_of_the_same_name_is_refused_and_others_are_not(tmp_path):
    importlib.import_module("json")
    (tmp_path / "json.py").write_text("")
    (tmp_path / "mlxhydra").mkdir()
    (tmp_path / "mlxhydra" / "__init__.py").write_text("")
    (tmp_path / "data").mkdir()  # not a module anyone imported
    (tmp_path / "notes.txt").write_text("")
    assert shadowing(str(tmp_path)) == ["json", "mlxhydra"]
    assert shadowing(str(tmp_path / "data")) == []


def test_import_time_variables_and_start_up_options_need_a_fresh_interpreter():
    server = {"PATH": "/bin", "HOME": "/root"}
    assert env_differences({**server, "MLFLOW_TRACKING_URI": "x", "HYDRA_FULL_ERROR": "1"}, server) == []
    assert env_differences({**server, "PYTHONPATH": "/x"}, server) == ["PYTHONPATH"]
    assert env_differences({"PATH": "/bin"}, server) == ["HOME"]
    assert needs_fresh_interpreter({"PYTHONPROFILEIMPORTTIME": "1"}) == ["PYTHONPROFILEIMPORTTIME"]
    assert needs_fresh_interpreter({"PYTHONPROFILEIMPORTTIME": ""}) == []
