"""``task=load``: load the model and record the run; no experiment."""

from typing import Any, Dict, List

from .common import Metrics, TaskInput


def check(task: Dict[str, Any]) -> List[str]:
    """task=load has no settings of its own."""
    return []


def execute(job: TaskInput) -> Metrics:
    """No metrics: loading and its record are the result."""
    return {}
