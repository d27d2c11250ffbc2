"""Hydra plugins: the sweepers behind ``mlxhydra resume`` (see mlxhydra.sweeps.resume).

Hydra instantiates sweepers only from the ``hydra_plugins`` package, so the
classes live here; what they do is in :mod:`mlxhydra.sweeps.resume` and
:mod:`mlxhydra.sweeps.resume_search`.
"""

from typing import Any, List, Optional

from hydra.plugins.sweeper import Sweeper
from omegaconf import DictConfig


class ResumeSweeper(Sweeper):
    """Launch the given jobs of a recorded sweep, with their own numbers, through the configured launcher."""

    def __init__(self, sweep_dir: str, jobs: List[int]) -> None:
        self.sweep_dir = sweep_dir
        self.jobs = [int(j) for j in jobs]
        self.config: Optional[DictConfig] = None
        self.launcher: Any = None

    def setup(self, *, hydra_context: Any, task_function: Any, config: DictConfig) -> None:
        from hydra.core.plugins import Plugins

        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: List[str]) -> Any:
        from mlxhydra.sweeps.resume import launch_jobs

        return launch_jobs(self.launcher, self.sweep_dir, self.jobs, arguments)



class ResumeSearchSweeper(Sweeper):
    """Go on with a recorded Optuna search: the recorded sweeper, given the study of its finished
    trials and renumbering the jobs it launches (see mlxhydra.sweeps.resume_search)."""

    def __init__(self, sweep_dir: str, numbers: List[int], inner_target: str, **settings: Any) -> None:
        from hydra.utils import get_class

        from mlxhydra.sweeps.resume_search import OPTUNA_SWEEPER, resumed_storage

        if inner_target != OPTUNA_SWEEPER:  # resume names it; never another class
            raise ValueError(f"hydra.sweeper.inner_target={inner_target}: expected {OPTUNA_SWEEPER}")
        self.numbers = [int(n) for n in numbers]
        settings["n_trials"] = len(self.numbers)
        settings["storage"] = resumed_storage(sweep_dir, settings)
        self.inner = get_class(inner_target)(**settings)

    def setup(self, *, hydra_context: Any, task_function: Any, config: DictConfig) -> None:
        from mlxhydra.sweeps.resume_search import renumber

        self.inner.setup(hydra_context=hydra_context, task_function=task_function, config=config)
        renumber(self.inner, self.numbers)

    def sweep(self, arguments: List[str]) -> Any:
        return self.inner.sweep(arguments)
