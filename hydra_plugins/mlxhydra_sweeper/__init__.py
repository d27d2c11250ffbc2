"""Hydra plugin: the sweeper of mlxhydra's multiruns (see mlxhydra.runs.job_sweeper).

Hydra instantiates sweepers only from classes defined in the hydra_plugins package.
"""

from mlxhydra.runs import job_sweeper


class JobByJobSweeper(job_sweeper.JobByJobSweeper):
    """Hydra's basic sweeper; a job that cannot be composed fails alone."""
