"""Resuming an Optuna search (hydra-optuna-sweeper) from its recorded trials, not from the start.

The resumed command runs the recorded sweeper (its sampler, search space,
``n_jobs``, launcher) through ``hydra_plugins.mlxhydra_resume.ResumeSearchSweeper``,
which hands it a study that already holds the search's finished trials:

- with a recorded ``hydra.sweeper.storage``, the study is the stored one;
- without one (an in-memory study, lost with its process), an in-memory
  study is rebuilt from the finished jobs' records: each job's parameters
  (its overrides) and the value it returned (``objective`` in its run.json,
  ``sweep.penalty`` for a failed job).

The trials that did not finish (killed, interrupted) are queued first with
their own parameters and get their own job numbers back; the search then
runs the trials still owed (``n_trials`` less the finished ones), numbered
after the sweep's last job.
"""

import logging
import warnings
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

from ..config.overrides import override_texts
from ..config.recorded import own_overrides
from ..errors import RunDirError
from ..record.run_dir import SweepDir, read_yaml
from ..record.schema import read_record
from .attempts import contiguous, set_aside
from .policy import PENALTY

DEFAULT_STUDY = "mlxhydra_search"
FINISHED = ("completed", "failed")
# Hydra overrides of the original search that resume sets itself.
REPLACED = ("hydra.mode", "hydra.sweep.dir", "hydra.sweeper.n_trials", "hydra.sweeper._target_")
RESUME_SWEEPER = "hydra_plugins.mlxhydra_resume.ResumeSearchSweeper"
# The only sweeper a search is resumed with: a recorded _target_ is never imported.
OPTUNA_SWEEPER = "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper"


def is_search(hc: Dict[str, Any]) -> bool:
    """True for a sweep run by hydra-optuna-sweeper."""
    sweeper = hc.get("sweeper")
    return isinstance(sweeper, dict) and sweeper.get("_target_") == OPTUNA_SWEEPER


def search_space(hc: Dict[str, Any]) -> Dict[str, Any]:
    """The search's Optuna distributions: the sweeper's params and the command line's search overrides."""
    from .. import _upstream

    params = (hc.get("sweeper") or {}).get("params") or {}
    texts = [f"{k}={v}" for k, v in params.items()]
    texts += [str(o) for o in (hc.get("overrides") or {}).get("task") or []]
    # What a record may give: never a consent to run code searched over, nor other settings.
    kept, _dropped = own_overrides(texts)
    distributions, _fixed = _upstream.optuna_params_from_overrides(kept)
    return distributions


def trial_params(overrides: Sequence[str], distributions: Dict[str, Any]) -> Dict[str, Any]:
    """A job's parameter values, typed as its distributions expect (a choice's own value).

    Raises:
        RunDirError: a value missing or outside the search space.
    """
    texts = override_texts(overrides)
    params = {}
    for name, dist in distributions.items():
        text = texts.get(name)
        if text is None:
            raise RunDirError(f"a job has no value for the searched parameter {name}")
        choices = getattr(dist, "choices", None)
        if choices is not None:
            match = [c for c in choices if str(c) == text]
            if not match:
                raise RunDirError(f"{name}={text} is not one of the search's choices {list(choices)}")
            params[name] = match[0]
        else:
            value = float(text)
            params[name] = int(value) if type(getattr(dist, "low", 0.0)) is int else value
    return params


def search_jobs(sweep: SweepDir, statuses: Dict[int, str], n_trials: int
                ) -> Tuple[Dict[int, List[str]], Dict[int, List[str]], List[int]]:
    """(finished jobs' overrides, unfinished jobs' overrides, the job numbers to run)."""
    finished, unfinished = {}, {}
    for num, job in sweep.job_dirs().items():
        record = read_record(job.record)
        target = finished if statuses.get(num) in FINISHED else unfinished
        target[num] = [str(o) for o in record.get("overrides") or job.read_overrides()]
    owed = max(n_trials - len(finished), 0)
    last = max(list(finished) + list(unfinished), default=-1)
    numbers = sorted(unfinished)[:owed]
    numbers += list(range(last + 1, last + 1 + owed - len(numbers)))
    return finished, unfinished, numbers


def search_command_overrides(sweep: SweepDir, plan: Dict[str, Any], statuses: Dict[int, str]
                             ) -> Tuple[List[int], List[str], Dict[int, List[str]], List[str]]:
    """(job numbers to run, the resumed command's extra Hydra overrides, overrides of known jobs
    (what a record may give), ``"TEXT (reason)"`` of each of their overrides left out)."""
    sweeper = (plan.get("hydra") or {}).get("sweeper") or {}
    if isinstance(sweeper.get("direction"), (list, tuple)):
        raise RunDirError(f"{sweep.path}: resume supports single-objective searches")
    _, unfinished, numbers = search_jobs(sweep, statuses, int(sweeper.get("n_trials") or 0))
    where = "'" + str(sweep.path.resolve()).replace("\\", "\\\\").replace("'", "\\'") + "'"
    overrides = [f"hydra.sweeper._target_={RESUME_SWEEPER}", f"+hydra.sweeper.sweep_dir={where}",
                 f"+hydra.sweeper.numbers=[{','.join(str(n) for n in numbers)}]",
                 f"+hydra.sweeper.inner_target={OPTUNA_SWEEPER}"]
    known, dropped = {}, []
    for n in numbers:
        if n in unfinished:
            known[n], left_out = own_overrides(unfinished[n])
            dropped += left_out
    return numbers, overrides, known, dropped


def resumed_storage(sweep_dir: str, settings: Dict[str, Any]) -> Any:
    """The storage the resumed search's sweeper gets, holding its study (in the resumed process).

    Args:
        settings: the sweeper's settings (``storage``, ``study_name``, ``direction``...).
    """
    import optuna


    sweep = SweepDir(Path(sweep_dir))
    plan = read_yaml(sweep.plan) or {}
    hc = plan.get("hydra") or {}
    statuses = {n: read_record(j.record).get("status") or "missing" for n, j in sweep.job_dirs().items()}
    n_trials = int((hc.get("sweeper") or {}).get("n_trials") or 0)
    finished, unfinished, _ = search_jobs(sweep, statuses, n_trials)
    distributions = search_space(hc)
    storage = settings.get("storage") or optuna.storages.InMemoryStorage()
    direction = settings.get("direction") or "minimize"
    direction = getattr(direction, "name", direction)
    study = optuna.create_study(study_name=settings.get("study_name") or DEFAULT_STUDY,
                                storage=storage, direction=direction, load_if_exists=True)
    source = "its storage"
    if not study.trials:  # an in-memory study, lost with its process: rebuild it from the records
        source = "the jobs' records"
        try:
            penalty = float((plan.get("sweep") or {}).get("penalty") or PENALTY)
        except (TypeError, ValueError):  # an interpolation: the default
            penalty = PENALTY
        with warnings.catch_warnings():  # Optuna 2 calls create_trial experimental
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            for num in sorted(finished):
                value = read_record(sweep.job_dirs()[num].record).get("objective")
                study.add_trial(optuna.trial.create_trial(
                    params=trial_params(finished[num], distributions), distributions=distributions,
                    value=float(penalty if value is None else value)))
    for num in sorted(unfinished):
        study.enqueue_trial(trial_params(unfinished[num], distributions))
    set_aside(sweep, sorted(unfinished))
    logging.getLogger("mlxhydra").info(
        "resuming study %s: %d finished trials from %s, %d queued again, %d to run",
        study.study_name, len(finished), source, len(unfinished), settings["n_trials"])
    return storage


class RenumberedLauncher:
    """A launcher whose n-th launched job gets ``numbers[n]`` (a sweeper counts from 0)."""

    def __init__(self, inner: Any, numbers: Sequence[int]):
        self.inner = inner
        self.numbers = list(numbers)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> List[Any]:
        wanted = [self.numbers[initial_job_idx + i] for i in range(len(job_overrides))]
        by_number = dict(zip(wanted, job_overrides))
        returns: Dict[int, Any] = {}
        for group in contiguous(wanted):
            for n, ret in zip(group, self.inner.launch([by_number[n] for n in group], initial_job_idx=group[0])):
                returns[n] = ret
        return [returns[n] for n in wanted]  # in the sweeper's order

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def renumber(sweeper: Any, numbers: Sequence[int]) -> None:
    """Give the jobs an Optuna sweeper launches the numbers they are owed.

    hydra-optuna-sweeper's ``OptunaSweeper`` keeps its implementation in
    ``.sweeper`` and that one's launcher in ``.launcher`` (set by ``setup``).
    """
    impl = getattr(sweeper, "sweeper", sweeper)
    impl.launcher = RenumberedLauncher(impl.launcher, numbers)
