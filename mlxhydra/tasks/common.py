"""What the tasks share: their input and metrics, token chunks of a data file, peak memory."""

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List

from ..errors import TaskError
from ..load.data_files import long_documents_allowed

log = logging.getLogger("mlxhydra")

Metrics = Dict[str, Any]


@dataclass
class TaskInput:
    """Everything a task gets: its validated settings and the loaded model.

    ``task``, ``load`` and ``seed`` are plain Python (the config resolved).
    """

    task: Dict[str, Any]
    seed: int
    load: Dict[str, Any]
    model: Any
    model_config: Dict[str, Any]  # with the quantization entry when quantized
    model_dir: Path
    run_dir: Path
    # Hugging Face ids the task resolves (task.draft_model, task.reference): the setting ->
    # its resolution (mlxhydra.config.hub.HubSnapshot.record()), recorded in run.json's "hub".
    hub: Dict[str, Any] = field(default_factory=dict)
    # The job's run.json as it stands when the task starts (its command's overrides, versions,
    # Hub resolution, quantization summary): empty without a record (another rank than 0, the
    # Python API). task=save's model card tells where the model came from with it.
    record: Dict[str, Any] = field(default_factory=dict)

    @property
    def trust_remote_code(self) -> bool:
        """This command's consent to run the model directory's code (never a record's)."""
        return self.load.get("trust_remote_code") is True


def token_chunks(tokenizer, texts: List[str], sequence_length: int, num_samples: int,
                 path: Path):
    """Tokenize documents and cut them into ``[samples, sequence_length]`` rows.

    Each document is encoded and ends with the eos token (mlx-lm's
    ``TextDataset.process``); documents are joined in file order and the
    leftover tokens at the end are dropped. ``num_samples`` <= 0 keeps every row.

    Raises:
        TaskError: when the file is too short for one row.
    """
    import mlx.core as mx
    from mlx_lm.tuner.datasets import TextDataset

    dataset = TextDataset([{"text": t} for t in texts], tokenizer)
    wanted = sequence_length * num_samples if num_samples > 0 else None
    tokens: List[int] = []
    with long_documents_allowed():
        for i in range(len(dataset)):
            tokens.extend(dataset.process(dataset[i])[0])
            if wanted is not None and len(tokens) >= wanted:
                break
    rows = len(tokens) // sequence_length
    if num_samples > 0:
        rows = min(rows, num_samples)
    if rows == 0:
        raise TaskError(
            f"task.data: {path} has {len(tokens)} tokens, fewer than "
            f"task.sequence_length={sequence_length}"
        )
    return mx.array(tokens[: rows * sequence_length]).reshape(rows, sequence_length)


def peak_memory_gb() -> float:
    import mlx.core as mx

    return mx.get_peak_memory() / 1e9
