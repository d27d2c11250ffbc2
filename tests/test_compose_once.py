"""One composition per command (mlxhydra/config/compose_once.py): the job's config, Hydra's
records and every error exactly as with Hydra's two compositions."""

import shutil
import sys
from contextlib import nullcontext
from pathlib import Path

import pytest
from hydra._internal.config_loader_impl import ConfigLoaderImpl
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

from mlxhydra import api
from mlxhydra.command import run_hydra
from mlxhydra.config import compose_once
from mlxhydra.sweeps import policy

# The run (sweep) directory, the same for both ways so that records compare byte for byte.
OUT = "out"
DIRS = [f"hydra.run.dir={OUT}", f"hydra.sweep.dir={OUT}"]
ONE_RTN_JOB = "hydra.sweeper.params={quant.method:rtn,quant.bits:4}"


def run_command(args, cwd: Path, monkeypatch, capsys, once: bool) -> dict:
    """``mlxhydra ARGS`` in this process: exit status, stderr, what each job received, Hydra's records,
    and how many times the whole config was composed."""
    jobs, compositions = [], []
    received = policy.run_swept_job
    composing = ConfigLoaderImpl._load_configuration_impl

    def job(cfg, compose_seconds):
        jobs.append(OmegaConf.to_yaml(cfg) + OmegaConf.to_yaml(HydraConfig.get()))
        return received(cfg, compose_seconds)

    def counted(self, *a, **k):
        compositions.append(k.get("run_mode"))
        return composing(self, *a, **k)

    with monkeypatch.context() as m:
        m.setattr(policy, "run_swept_job", job)
        m.setattr(ConfigLoaderImpl, "_load_configuration_impl", counted)
        if not once:
            m.setattr(compose_once, "composed_once", lambda multirun: nullcontext())
        m.chdir(cwd)
        shutil.rmtree(cwd / OUT, ignore_errors=True)
        capsys.readouterr()
        with api._process_kept():
            sys.argv[:] = ["mlxhydra"]
            status = run_hydra(list(args))
        records = {str(p.relative_to(cwd)): p.read_text() for p in sorted((cwd / OUT).glob("**/.hydra/*.yaml"))}
    return {"status": status, "stderr": capsys.readouterr().err, "jobs": jobs, "records": records,
            "compositions": len(compositions)}


CASES = [
    pytest.param(["task=load"], 1, id="plain"),
    pytest.param(["seed=3", "quant.bits=4", "+model.extra_key=1"], 1, id="overrides",
                 marks=pytest.mark.slow),
    pytest.param(["model=tiny_long", "quant=8bit", "patch=long_context"], 1, id="presets",
                 marks=pytest.mark.slow),
    pytest.param(["-m", "seed=1,2"], 1, id="sweep", marks=pytest.mark.slow),
    pytest.param(["-m", "hydra.mode=RUN", "seed=1"], 1, id="sweep-over-run-mode", marks=pytest.mark.slow),
    # A preset that sets hydra.mode=MULTIRUN, without -m.
    pytest.param(["+experiment=quant_study", "task=load", ONE_RTN_JOB], 1, id="multirun-preset",
                 marks=pytest.mark.slow),
    # Sweep overrides under hydra.mode=MULTIRUN without -m: composed as a run first, refused
    # there, so Hydra's own two compositions (nothing saved, nothing changed).
    pytest.param(["hydra.mode=MULTIRUN", "seed=1,2"], 2, id="multirun-by-override",
                 marks=pytest.mark.slow),
]


@pytest.mark.parametrize("args, jobs", CASES)
def test_the_job_receives_what_two_compositions_gave(args, jobs, tmp_path, monkeypatch, capsys):
    twice = run_command(args + DIRS, tmp_path, monkeypatch, capsys, once=False)
    once = run_command(args + DIRS, tmp_path, monkeypatch, capsys, once=True)
    assert twice["status"] == once["status"] == 0, twice["stderr"] + once["stderr"]
    assert len(once["jobs"]) == len(twice["jobs"]) >= jobs
    assert once["jobs"] == twice["jobs"]
    assert once["records"] == twice["records"]
    assert len(once["records"]) == 3 * len(once["jobs"])  # config, hydra, overrides per job
    # The composition that decided the run mode was the job's (or the sweep's).
    saved = 0 if "seed=1,2" in args and "-m" not in args else 1
    assert once["compositions"] == twice["compositions"] - saved


ERRORS = [
    pytest.param(["seed=1,2"], "Ambiguous value for argument 'seed=1,2'", id="sweep-without-m"),
    pytest.param(["model=???"], "You must specify 'model'", id="missing-model"),
    pytest.param(["-m", "model=???"], "1 of 1 jobs failed", id="missing-model-sweep",
                 marks=pytest.mark.slow),
    pytest.param(["-m", "hydra.job.chdir=true,false"], "Sweeping over Hydra's configuration",
                 id="hydra-sweep", marks=pytest.mark.slow),
    pytest.param(["--resolve"], "--resolve flag can only be used", id="resolve-alone",
                 marks=pytest.mark.slow),
    pytest.param(["quant.bits=notanint"], "quant.bits", id="bad-value", marks=pytest.mark.slow),
    pytest.param(["nokey=1"], "nokey", id="unknown-key", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("args, says", ERRORS)
def test_errors_are_reported_as_before(args, says, tmp_path, monkeypatch, capsys):
    twice = run_command(args + DIRS, tmp_path, monkeypatch, capsys, once=False)
    once = run_command(args + DIRS, tmp_path, monkeypatch, capsys, once=True)
    assert (once["status"], once["stderr"]) == (twice["status"], twice["stderr"])
    assert once["status"] != 0 and says in once["stderr"]
    assert once["jobs"] == twice["jobs"]


@pytest.mark.slow
@pytest.mark.parametrize("args", [["--cfg", "job", "seed=4"], ["--cfg", "all", "--resolve"],
                                  ["--info", "defaults"]])
def test_commands_without_a_job_print_the_same(args, tmp_path, monkeypatch, capsys):
    twice = run_command(args, tmp_path, monkeypatch, capsys, once=False)
    once = run_command(args, tmp_path, monkeypatch, capsys, once=True)
    assert once == twice


def test_a_plain_run_composes_once(tmp_path, monkeypatch, capsys):
    once = run_command(["task=load"] + DIRS, tmp_path, monkeypatch, capsys, once=True)
    assert (once["status"], once["compositions"], len(once["jobs"])) == (0, 1, 1)


def test_the_python_api_composes_once(tmp_path, monkeypatch):
    compositions = []
    composing = ConfigLoaderImpl._load_configuration_impl

    def counted(self, *a, **k):
        compositions.append(k.get("run_mode"))
        return composing(self, *a, **k)

    monkeypatch.setattr(ConfigLoaderImpl, "_load_configuration_impl", counted)
    monkeypatch.chdir(tmp_path)
    record = api.run("task=load", "seed=5")
    assert (record["status"], record["seed"], len(compositions)) == ("completed", 5, 1)


def test_a_kept_config_serves_one_composition_only(tmp_path, monkeypatch):
    """The next composition gets the kept config, once; any other composes anew."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode

    from hydra._internal.utils import create_automatic_config_search_path

    from mlxhydra import _upstream
    from mlxhydra.config.composition import CONFIG_MODULE, CONFIG_NAME
    from mlxhydra.config.resolvers import register_resolvers

    register_resolvers()
    _upstream.quiet_basic_sweeper_schema_warning()
    monkeypatch.chdir(tmp_path)
    search_path = create_automatic_config_search_path(None, None, f"pkg://{CONFIG_MODULE}")
    with api._hydra_kept(), compose_once.composed_once(multirun=False):
        hydra = _upstream.Hydra.create_main_hydra2("mlxhydra", search_path)
        overrides = ["seed=7"]
        assert hydra.get_mode(CONFIG_NAME, overrides) is None
        kept = hydra.config_loader.load_configuration(CONFIG_NAME, overrides + ["hydra.mode=RUN"],
                                                      RunMode.RUN)
        again = hydra.config_loader.load_configuration(CONFIG_NAME, overrides + ["hydra.mode=RUN"],
                                                       RunMode.RUN)
        assert kept is not again and OmegaConf.to_yaml(kept) == OmegaConf.to_yaml(again)
        assert kept.hydra.overrides.hydra[-1] == "hydra.mode=RUN" and kept.hydra.mode == RunMode.RUN
        hydra.get_mode(CONFIG_NAME, overrides)
        other = hydra.config_loader.load_configuration(CONFIG_NAME, ["seed=8"], RunMode.RUN)
        assert other.seed == 8
        GlobalHydra.instance().clear()
