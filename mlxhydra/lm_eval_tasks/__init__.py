"""lm-evaluation-harness tasks shipped with mlxhydra: the embedded tiny model's held-out sums.

``tiny_sums`` (greedy answer, exact match) and ``tiny_sums_mc`` (four
answers, scored by log-likelihood) read the JSON-lines files next to this
module through :func:`load_tiny_sums`, so they run offline from any working
directory. ``task=lm_eval`` adds this directory to lm-eval's task search path.
"""

import json
from pathlib import Path
from typing import Any

TASKS_DIR = Path(__file__).resolve().parent
SPLITS = {"test": "tiny_sums_test.jsonl", "train": "tiny_sums_fewshot.jsonl"}


def load_tiny_sums(**_metadata: Any):
    """The tasks' ``custom_dataset``: a DatasetDict with the test and few-shot (train) splits.

    Args:
        _metadata: The task's metadata, which lm-eval passes to every custom
            dataset function (unused: the data is fixed).

    Returns:
        datasets.DatasetDict of rows ``{question, answer, choices, label}``.
    """
    import datasets

    splits = {}
    for split, name in SPLITS.items():
        lines = (TASKS_DIR / name).read_text(encoding="utf-8").splitlines()
        splits[split] = datasets.Dataset.from_list([json.loads(ln) for ln in lines if ln.strip()])
    return datasets.DatasetDict(splits)
