"""Hydra plugin: the sweeper of mlxhydra's multiruns (see mlxhydra.sweeps.sweeper).

Hydra instantiates sweepers only from classes defined in the hydra_plugins package.
"""

from mlxhydra.sweeps import sweeper


class JobByJobSweeper(sweeper.JobByJobSweeper):
    """Hydra's basic sweeper; a job that cannot be composed fails alone."""
