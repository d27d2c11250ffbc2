"""task=lora's record of training: mlx-lm's reports as JSON lines, the loss curve.

mlx-lm's trainer reports through a ``TrainingCallback``: the training loss every
``steps_per_report`` iterations (averaged over them, with the learning rate, tokens/s, trained
tokens and peak memory) and the validation loss at iteration 0, every ``steps_per_eval`` and at
the end. Each report becomes one line of ``train_log.jsonl``, as mlx-lm reports it, flushed as
it comes (trackers read the file as step metrics: ``tracking/tracked_job.py``).
"""

import json
import logging
from pathlib import Path
from typing import Any, Dict, List

log = logging.getLogger("mlxhydra")


def _plain(info: Dict[str, Any]) -> Dict[str, Any]:
    """A report's values as JSON numbers (mlx-lm may hand over 0-d arrays)."""
    return {k: (v.item() if hasattr(v, "item") else v) for k, v in info.items()}


class TrainingLog:
    """mlx-lm's ``TrainingCallback`` hooks, writing ``train_log.jsonl``.

    A subclass of mlx-lm's class is made at first use (:func:`callback`) so that importing
    this module stays light.
    """

    def __init__(self, path: Path, iters: int):
        self.path = Path(path)
        self.iters = iters
        self.train: List[Dict[str, Any]] = []
        self.val: List[Dict[str, Any]] = []
        self._file = open(self.path, "a", encoding="utf-8")

    def _write(self, entry: Dict[str, Any]) -> None:
        self._file.write(json.dumps(entry) + "\n")
        self._file.flush()

    def on_train_loss_report(self, train_info: Dict[str, Any]) -> None:
        entry = _plain(train_info)
        self.train.append(entry)
        self._write(entry)
        log.info("lora: iteration %d/%d: train loss %.4f, learning rate %.3g, %.0f tokens/s, "
                 "%d trained tokens, peak memory %.3f GB", entry["iteration"], self.iters,
                 entry["train_loss"], entry["learning_rate"], entry["tokens_per_second"],
                 entry["trained_tokens"], entry["peak_memory"])

    def on_val_loss_report(self, val_info: Dict[str, Any]) -> None:
        entry = _plain(val_info)
        self.val.append(entry)
        self._write(entry)
        log.info("lora: iteration %d/%d: validation loss %.4f (%.1f s)", entry["iteration"],
                 self.iters, entry["val_loss"], entry["val_time"])

    def replay(self, reports: Dict[str, List[Dict[str, Any]]]) -> None:
        """A resumed run's reports up to its checkpoint, written again at the top of its log."""
        self.train, self.val = list(reports["train"]), list(reports["val"])
        for entry in sorted(self.train + self.val, key=lambda e: (e["iteration"], "val_loss" in e)):
            self._write(entry)

    def close(self) -> None:
        self._file.close()

    def final(self) -> Dict[str, Any]:
        """The run's final figures from the last reports."""
        last = self.train[-1] if self.train else {}
        return {
            "final_train_loss": last.get("train_loss"),
            "final_val_loss": self.val[-1]["val_loss"] if self.val else None,
            "initial_val_loss": self.val[0]["val_loss"] if self.val else None,
            "trained_tokens": last.get("trained_tokens", 0),
            "learning_rate": last.get("learning_rate"),
            "peak_memory_gb": max((e["peak_memory"] for e in self.train), default=None),
        }


def callback(training_log: TrainingLog):
    """``training_log`` as an instance of mlx-lm's ``TrainingCallback``."""
    from mlx_lm.tuner.callbacks import TrainingCallback

    class Reporting(TrainingCallback):
        def on_train_loss_report(self, train_info):
            training_log.on_train_loss_report(train_info)

        def on_val_loss_report(self, val_info):
            training_log.on_val_loss_report(val_info)

    return Reporting()


def loss_figure(train: List[Dict[str, Any]], val: List[Dict[str, Any]]):
    """The loss curves (a matplotlib Figure of its own: no pyplot), or None without reports."""
    if not train and not val:
        return None
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    if train:
        ax.plot([e["iteration"] for e in train], [e["train_loss"] for e in train],
                label="train loss", marker=".")
    if val:
        ax.plot([e["iteration"] for e in val], [e["val_loss"] for e in val],
                label="validation loss", marker="o")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig
