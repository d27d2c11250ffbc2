"""``task=load``: load the model and record the run; no experiment."""

from typing import Any, Dict, List

from .common import Metrics, TaskInput

# Runs on a model sharded across the ranks of a distributed run (load.shard).
RUNS_SHARDED = True


def settings_problems(task: Dict[str, Any]) -> List[str]:
    """task=load has no settings of its own."""
    return []


def execute(job: TaskInput) -> Metrics:
    """No metrics: loading and its record are the result."""
    return {}
