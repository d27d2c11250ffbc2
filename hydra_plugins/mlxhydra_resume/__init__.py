"""Hydra plugin: the sweeper behind ``mlxhydra resume`` (see mlxhydra.runs.resume).

Hydra instantiates sweepers only from the ``hydra_plugins`` package, so the
class lives here; what it does is in :mod:`mlxhydra.runs.resume`.
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
        from mlxhydra.runs.resume import launch_jobs

        return launch_jobs(self.launcher, self.sweep_dir, self.jobs)
