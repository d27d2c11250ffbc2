"""The reference model of ``task=kl``: which one, how to rebuild it, and its cache key."""

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from ..config.hub import is_hub_id, resolve_hub_id
from ..config.recorded import CONSENT
from ..errors import ConfigError, HubError, MlxhydraError, TaskError
from ..file_checks import directory_problem, regular_file_problem
from ..load.settings import load_problems
from ..record.run_dir import RunDir

log = logging.getLogger("mlxhydra")

CACHE_VERSION = 1
# The load settings that let code run (consent, classes to import): this command's, never a record's.
LOAD_CONSENT = tuple(key.split(".", 1)[1] for key in CONSENT if key.startswith("load."))


@dataclass
class Reference:
    """Everything needed to rebuild a reference model.

    ``kind`` is ``default`` (the run's model directory as stored), ``model``
    (another model directory or a Hugging Face id) or ``run`` (a past run directory).
    """

    kind: str
    source: Path
    model_dir: Path
    config: Dict[str, Any]
    quant: Optional[Dict[str, Any]] = None
    load: Dict[str, Any] = field(default_factory=dict)
    weights_fingerprint: Optional[str] = None
    hub: Optional[Dict[str, Any]] = None  # a Hugging Face id's resolution

    def describe(self) -> Dict[str, Any]:
        out = {"kind": self.kind, "source": str(self.source), "model_dir": str(self.model_dir),
               "quant": self.quant, "weights_fingerprint": self.weights_fingerprint}
        if self.hub:
            out["hub"] = self.hub
        if self.load.get("adapter_path"):
            out["adapter_path"] = self.load["adapter_path"]
        return out


def _model_dir_config(model_dir: Path) -> Dict[str, Any]:
    from ..load.model_config import load_config

    try:
        return load_config(model_dir)
    except (OSError, ValueError) as e:
        raise TaskError(f"task.reference: {e}") from e


def _from_run(path: Path, current: Dict[str, Any]) -> Reference:
    """Rebuild a past run's model from its ``.hydra/config.yaml`` and ``model_config.json``.

    What the run directory holds is read as data, never resolved. Consent to
    run a model directory's code is the current command's, never the record's.
    """
    from ..load.model_config import apply_mlx_lm_adjustments
    from ..load.quant_spec import parse_quant

    run_dir = RunDir(path)
    if regular_file_problem(run_dir.config):
        raise TaskError(f"task.reference={path}: a run directory needs .hydra/config.yaml")
    try:
        saved = run_dir.read_config()
        record = run_dir.read_record()
        quant = saved.get("quant")
        saved_load = saved.get("load") if isinstance(saved.get("load"), dict) else {}
        # Only settings that shape the weights: consent to run code (a model_file, a class
        # to import) is this command's alone, never the record's.
        load = {k: saved_load.get(k) for k in ("strict", "dtype", "fingerprint", "adapter_path", "fuse")
                if k not in LOAD_CONSENT}
        load.update({k: current.get(k) for k in LOAD_CONSENT})
        # run.json's model_dir is the path as used; config.yaml's is escaped text (\${...})
        model_dir = Path(str(record.get("model_dir") or saved.get("model_dir") or ""))
        config = run_dir.read_model_config() or saved.get("model")
        recorded = record.get("weights_fingerprint")
        quant = _recorded_calibration(quant, record)
    except MlxhydraError as e:
        raise TaskError(f"task.reference={path}: cannot read its saved config: {e}") from e
    if isinstance(load.get("adapter_path"), str):  # relative to that run's working directory
        adapter = Path(load["adapter_path"]).expanduser()
        load["adapter_path"] = str(Path(str(record.get("cwd") or ".")) / adapter)
    if not isinstance(config, dict) or regular_file_problem(model_dir / "config.json"):
        raise TaskError(f"task.reference={path}: its model directory {model_dir} is gone "
                        "(or the run has no model_config.json)")
    try:
        parse_quant(quant if isinstance(quant, dict) else None)
    except ConfigError as e:
        raise TaskError(f"task.reference={path}: its recorded quant settings are not valid: {e}") from e
    load["trust_remote_code"] = load.get("trust_remote_code") is True
    problems = load_problems({k: v for k, v in load.items() if v is not None})
    if problems:
        raise TaskError(f"task.reference={path}: its recorded load settings are not valid: "
                        + "; ".join(problems))
    try:
        apply_mlx_lm_adjustments(model_dir, config)
    except (MlxhydraError, OSError, ValueError) as e:
        raise TaskError(f"task.reference={path}: {e}") from e
    return Reference("run", path, model_dir, config, quant, load, recorded)


def _recorded_calibration(quant: Any, record: Dict[str, Any]) -> Any:
    """A calibrated method's quant settings with the calibration file the run used.

    ``.hydra/config.yaml`` keeps ``quant.calibration.data`` as written (null for the
    task's file, or an interpolation); run.json has the file that was read.
    """
    used = ((record.get("quantization") or {}).get("calibration") or {}).get("data")
    if not isinstance(quant, dict) or not used:
        return quant
    return {**quant, "calibration": {**(quant.get("calibration") or {}), "data": used}}


def resolve_reference(value: Optional[str], model_dir: Path, load: Dict[str, Any]) -> Reference:
    """Turn ``task.reference`` into a :class:`Reference`.

    Args:
        value: None (this run's model directory, its raw config.json, no
            quantization), a model directory, a Hugging Face id (``org/name[@REVISION]``)
            or a past run directory.
        model_dir: This run's model directory.
        load: This run's ``load`` settings (architecture options are kept;
            dtype is not: the reference is the model as stored).

    Raises:
        TaskError: a path that is neither a model directory nor a run directory.
    """
    keep = {k: load.get(k) for k in ("strict", *LOAD_CONSENT, "fingerprint")}
    if value is None:
        return Reference("default", model_dir, model_dir, _model_dir_config(model_dir), None, keep)
    problems = reference_problems(value)
    if problems:
        raise TaskError(problems[0])
    path = Path(value).expanduser().absolute()
    if _is_run_dir(path):
        return _from_run(path, keep)
    if is_hub_id(value):
        snapshot = resolve_hub_id(value, "task.reference")
        return Reference("model", snapshot.path, snapshot.path, _model_dir_config(snapshot.path),
                         None, keep, hub=snapshot.record())
    return Reference("model", path, path, _model_dir_config(path), None, keep)


def _is_run_dir(path: Path) -> bool:
    return not (regular_file_problem(path / ".hydra" / "config.yaml")
                and regular_file_problem(path / "run.json"))


def reference_problems(value: Any) -> List[str]:
    """Problems with ``task.reference`` found without reading any weight."""
    if value is None:
        return []
    if not isinstance(value, str) or not value:
        return [f"task.reference={value!r}: expected a model or run directory, a Hugging Face "
                "id, or null"]
    path = Path(value).expanduser().absolute()
    if _is_run_dir(path) or not regular_file_problem(path / "config.json"):
        return []
    if is_hub_id(value):
        try:  # downloads now (once per process), so that a bad id fails before any weight is read
            resolve_hub_id(value, "task.reference")
        except HubError as e:
            return [str(e)]
        return []
    what = directory_problem(path) or "holds neither config.json nor run.json"
    return [f"task.reference={value}: {path} {what} (expected a model or run directory)"]


def require_same_weights(ref: Reference) -> str:
    """The reference's current weights fingerprint (a past run's recorded one must match).

    Raises:
        TaskError: a past run's weights changed since it ran.
    """
    from ..load.weight_files import combined_fingerprint, describe_files, require_weight_files

    try:
        files = require_weight_files(ref.model_dir)
    except FileNotFoundError as e:
        raise TaskError(f"task.reference: {e}") from e
    current = combined_fingerprint(describe_files(files, ref.load.get("fingerprint") or "fast"))
    if ref.weights_fingerprint is not None and ref.weights_fingerprint != current:
        raise TaskError(
            f"task.reference={ref.source}: the weights in {ref.model_dir} changed since that run "
            f"(fingerprint {ref.weights_fingerprint} then, {current} now)"
        )
    ref.weights_fingerprint = current
    return current


def build_reference(ref: Reference, shard: Optional[str] = None):
    """Instantiate and load the reference model.

    Args:
        shard: This run's ``load.shard``: in a distributed run the reference
            is split across the ranks as the model is.

    Returns:
        The model (evaluated).
    """
    from ..load.loader import build_model
    from ..load.settings import LoadSettings

    settings = LoadSettings.from_groups(
        {**{k: v for k, v in ref.load.items() if v is not None}, "shard": shard or "auto"}, ref.quant)
    # A past run's quantized model computes as that run set it for a quality task (its
    # quant.compute, part of the cache key), so that the same settings give KL 0.
    model, _, _ = build_model(ref.model_dir, dict(ref.config), settings, task="kl")
    return model


def cache_key(ref: Reference, tokens_sha256: str, data_sha256: str, settings: Dict[str, Any]) -> str:
    """Hash of everything that determines the reference's log-probabilities."""
    from importlib import metadata

    content = {
        "version": CACHE_VERSION,
        "weights": require_same_weights(ref),
        "config": ref.config,
        "quant": ref.quant,
        "dtype": ref.load.get("dtype"),
        "model_class": ref.load.get("model_class"),
        "data": data_sha256,
        "tokens": tokens_sha256,
        "settings": settings,
        "mlx": metadata.version("mlx"),
        "mlx_lm": metadata.version("mlx-lm"),
    }
    if ref.load.get("adapter_path"):  # a past run's adapters (the key of runs without stays as it was)
        from ..load.adapters import WEIGHTS_FILE, adapter_dir
        from ..load.weight_files import fingerprint

        content["adapter"] = fingerprint(adapter_dir(ref.load["adapter_path"]) / WEIGHTS_FILE, "full")
        content["fuse"] = bool(ref.load.get("fuse"))
    text = json.dumps(content, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()
