"""What a sweep plans: its jobs' overrides (the basic sweeper's expansion) and how many jobs it runs."""

from typing import Any, Dict, List, Optional, Tuple

from ..config.overrides import parse_overrides

# The sweepers behind ``mlxhydra resume`` (hydra_plugins/mlxhydra_resume).
RESUME_PLANNED = "hydra_plugins.mlxhydra_resume.ResumeSweeper"
RESUME_SEARCH = "hydra_plugins.mlxhydra_resume.ResumeSearchSweeper"


def job_plan(hydra: Dict[str, Any]) -> Tuple[List[str], Optional[List[List[str]]]]:
    """(swept keys, planned jobs' overrides or None) of a sweep's ``hydra`` node: multirun.yaml's,
    or the running sweep's config. None: a sweeper that does not plan its jobs ahead (Optuna).

    Raises:
        AttributeError, TypeError: a node of another shape.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from .. import _upstream

    task = [str(o) for o in (hydra.get("overrides") or {}).get("task") or []]
    sweeper = hydra.get("sweeper") or {}
    params = sweeper.get("params") or {}
    # As Hydra's sweepers read them: the sweeper's params, then the command line (which wins).
    texts = [f"{k}={v}" for k, v in params.items()] + task
    keys = list(dict.fromkeys(o.key for o in parse_overrides(texts) if o.is_sweep))
    # Hydra's basic sweeper or mlxhydra's (sweeps/sweeper.py): the same plan of jobs.
    if not str(sweeper.get("_target_", "")).endswith(("BasicSweeper", "JobByJobSweeper")):
        return keys, None
    try:
        parsed = OverridesParser.create().parse_overrides(texts)
        return keys, _upstream.split_sweep_arguments(parsed, None)[0]
    except Exception:  # an override the plan cannot expand: the jobs found still show
        return keys, None


def sweep_size(hydra: Dict[str, Any], finished_before: int) -> Optional[int]:
    """The number of jobs of the whole sweep that a multirun's ``hydra`` node starts, or None.

    Args:
        finished_before: Jobs of the sweep directory already finished when the multirun starts
            (those of earlier runs of a resumed sweep; 0 for a new sweep).

    A resumed sweep is its finished jobs and the jobs it runs now; an Optuna search is its
    ``n_trials``; the basic sweeper's is its plan; another sweeper's is not known (None).
    """
    sweeper = hydra.get("sweeper") or {}
    target = str(sweeper.get("_target_", ""))
    if target == RESUME_PLANNED:
        return finished_before + len(sweeper.get("jobs") or [])
    if target == RESUME_SEARCH:
        return finished_before + len(sweeper.get("numbers") or [])
    if target.endswith(".OptunaSweeper"):
        return int(sweeper.get("n_trials") or 0) or None
    try:
        _, plan = job_plan(hydra)
    except (AttributeError, TypeError):
        return None
    return len(plan) if plan is not None else None
