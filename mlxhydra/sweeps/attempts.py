"""A resumed sweep's earlier attempts: set aside under ``.attempts/``, never deleted.

Both kinds of resume use it: a planned sweep's (:mod:`.resume`) and a search's
(:mod:`.resume_search`).
"""

import shutil
from datetime import datetime
from pathlib import Path
from typing import List, Sequence

from ..record.run_dir import SweepDir

ATTEMPTS = ".attempts"


def contiguous(nums: Sequence[int]) -> List[List[int]]:
    """``[1, 2, 5]`` -> ``[[1, 2], [5]]``: a launcher numbers each batch from its first job."""
    groups: List[List[int]] = []
    for n in sorted(nums):
        if groups and n == groups[-1][-1] + 1:
            groups[-1].append(n)
        else:
            groups.append([n])
    return groups


def set_aside(sweep: SweepDir, jobs: Sequence[int]) -> List[Path]:
    """Move the directories of jobs about to run again into ``.attempts/`` (nothing is deleted)."""
    moved = []
    found = sweep.job_dirs()
    stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    for num in jobs:
        for path in sorted(sweep.path.glob(f"{num}_*")) + ([sweep.path / str(num)] if num in found else []):
            if path.is_dir() and path.name.split("_")[0] == str(num):
                target = sweep.path / ATTEMPTS / f"{path.name}@{stamp}"
                target.parent.mkdir(exist_ok=True)
                shutil.move(str(path), str(target))
                moved.append(target)
    return moved
