"""run.json, the record of one job: its fields, how it is written and how it is read back."""

import json
import math
import threading
import time
import typing
from pathlib import Path
from typing import Any, Dict, List, Optional, TypedDict

from ..errors import RecordWriteError, RunDirError
from ..file_checks import regular_file_problem
from .atomic import read_json, write_json_atomic
from .environment import now

STATUSES = ("running", "completed", "failed", "interrupted")


class WeightFileRecord(TypedDict):
    file: str
    bytes: int
    fingerprint: str  # "<fast|full>:sha256:<hex>"


class ModelRecord(TypedDict, total=False):
    model_type: Optional[str]
    architecture: str  # "<module>.<class>"
    changed_keys: List[str]  # model keys the command line or patches changed
    removed_keys: List[str]
    ignored_user_keys: List[str]  # changed keys that ModelArgs drops
    derived_keys: List[str]  # keys mlx-lm's load_config derives (eos_token_id...)


class HubRecord(TypedDict):
    repo_id: str  # "org/name"
    revision: Optional[str]  # as requested (branch, tag or commit); None: the default branch
    commit: Optional[str]  # the commit it resolved to
    snapshot: str  # the local snapshot directory


class AdapterRecord(TypedDict, total=False):
    path: str  # the adapter directory (absolute)
    config: Dict[str, Any]  # its adapter_config.json
    fingerprint: str  # "full:sha256:<hex>" of adapters.safetensors
    fused: bool  # load.fuse: merged into the weights
    parameters: int  # adapter parameters added to the model (0 when fused)


class QuantizationRecord(TypedDict, total=False):
    source: str  # "none", "pre-quantized" or "runtime"
    settings: Dict[str, Any]  # pre-quantized: as saved
    method: str  # runtime: "rtn", "awq", "gptq", "dwq" or "dynamic"
    method_settings: Dict[str, Any]  # calibrated methods: quant.<method>, defaults filled in
    # calibrated methods: data, data_sha256, data_tokens, sequence_length, seed, samples,
    # rows_sha256 (dwq: validation_samples, steps; dynamic: target_bpw, threshold, high_bits,
    # high_group_size, high_layers, sensitivities)
    calibration: Dict[str, Any]
    default: Optional[Dict[str, Any]]  # runtime: the request
    recipe: Optional[str]
    rules: List[Dict[str, Any]]
    layers: Dict[str, Dict[str, Any]]  # runtime: module path -> {bits, group_size, mode}
    quantized: int
    float_by_rule_or_predicate: int
    float_indivisible: int
    unmatched_rules: List[str]
    quantized_layers: int
    float_layers: int
    bits_per_weight: Optional[float]
    parameters: int
    compute: str  # how quantized layers multiply: "native" or "dequantized" (quant.compute)
    dequantized_layers: int


class RankRecord(TypedDict, total=False):
    rank: int
    host: str
    mode: str  # "tensor" or "pipeline"
    layers: List[int]  # [start, end) of the decoder layers the rank runs
    weight_files: List[str]  # the files the rank opened
    weight_bytes_read: int  # data bytes of the tensors it loaded
    parameter_bytes: int  # bytes of the parameters it holds
    peak_memory_bytes: int
    max_rss_bytes: int


class DistributedRecord(TypedDict, total=False):
    backend: str  # ring, jaccl, nccl, mpi
    world_size: int
    hosts: List[str]  # each rank's host name
    shard_requested: Any  # load.shard as set
    shard: str  # the mode used
    ranks: List[RankRecord]  # written when the task is done


class RunRecord(TypedDict, total=False):
    """The fields of run.json, in the order they are written.

    A job writes it when it starts (status running) and rewrites it at each
    stage; a failure before the job (while Hydra composes) writes a shorter
    one with ``stage: compose``.
    """

    status: str  # one of STATUSES
    started: str  # ISO 8601 with the UTC offset
    ended: Optional[str]
    stage: str  # only for failures before the job: "compose"
    run_dir: str
    command: str  # the command line, shell-quoted
    overrides: List[str]  # the task overrides as typed (never resolved)
    job_num: Optional[int]  # multirun job number
    cwd: str
    choices: Dict[str, Optional[str]]  # config group -> option
    log_file: str
    model_dir: Optional[str]
    # Hugging Face ids resolved for this job, by the setting that names them:
    # "model", "task.draft_model", "task.reference".
    hub: Dict[str, HubRecord]
    seed: Any
    versions: Dict[str, Optional[str]]
    platform: Dict[str, Any]
    git: Optional[Dict[str, Any]]
    times: Dict[str, float]  # seconds per stage: compose, instantiate, load_weights, quantize, task
    distributed: DistributedRecord  # only under mlx.launch with several ranks (rank 0 writes)
    model: ModelRecord
    weight_files: List[WeightFileRecord]
    weights_fingerprint: str
    adapter: AdapterRecord  # load.adapter_path
    weights_cache: Optional[str]  # multirun: "hit" or "miss"
    quantization: QuantizationRecord
    parameters: int
    ignored_keys: List[str]  # config keys ModelArgs.from_dict drops
    weight_mismatches: List[str]  # with load.strict=false
    metrics: Dict[str, Any]  # the task's metrics (also in metrics.json)
    objective: float  # sweep.objective's value, for sweepers
    tracking: Dict[str, Any]  # logger name (mlflow...) -> where the job was logged, or its error
    error: str  # failed/interrupted: the one-line message
    error_type: Optional[str]
    peak_memory_bytes: Optional[int]
    max_rss_bytes: int


FIELDS = tuple(RunRecord.__annotations__)


def _json_types(hint: Any) -> Optional[tuple]:
    """The Python types a JSON value of a schema field may have (None: any)."""
    origin = typing.get_origin(hint)
    if hint is Any:
        return None
    if origin is typing.Union:
        parts = [_json_types(h) for h in typing.get_args(hint)]
        return None if any(p is None for p in parts) else tuple(t for p in parts for t in p)
    if hint is type(None):
        return (type(None),)
    if hint is float:
        return (int, float)
    if origin in (list, List) or hint is list:
        return (list,)
    if origin in (dict, Dict) or hint is dict or typing.is_typeddict(hint):
        return (dict,)
    if isinstance(hint, type):
        return (hint,)
    return None


FIELD_TYPES = {k: _json_types(v) for k, v in typing.get_type_hints(RunRecord).items()}


def shape_problem(data: Dict[str, Any]) -> Optional[str]:
    """The first field of a record read back whose JSON type the schema does not allow, or None."""
    for key, value in data.items():
        types = FIELD_TYPES.get(key)
        if types is None or isinstance(value, types) and not (
                isinstance(value, bool) and bool not in types):
            continue
        expected = " or ".join(sorted({"object" if t is dict else "list" if t is list else
                                       "null" if t is type(None) else t.__name__ for t in types}))
        return f"field {key!r} is {json.dumps(value)[:60]}, expected {expected}"
    return None


def write_record(path: Path, fields: Dict[str, Any]) -> None:
    """Write a whole record atomically, its fields in schema order.

    Raises:
        KeyError: a name that is not a field of :class:`RunRecord`.
    """
    unknown = [k for k in fields if k not in FIELDS]
    if unknown:
        raise KeyError(f"not run.json fields: {', '.join(unknown)}")
    write_json_atomic(path, {k: fields[k] for k in FIELDS if k in fields})


class RecordClosed(BaseException):
    """An update of a record whose final status is written (by a job that was stopped)."""


class RecordWriter:
    """Writes one job's run.json: created as running, rewritten atomically at each change.

    The job's thread and the main thread may both write it (see
    :mod:`mlxhydra.job.thread`): after :meth:`finish` the record is closed
    and a late update raises :class:`RecordClosed` instead of changing it.
    """

    def __init__(self, path: Path, /, **fields: Any):
        self.path = Path(path)
        self.data: Dict[str, Any] = {"status": "running", "started": now(), "ended": None}
        self.closed = False
        self.write_seconds = 0.0  # spent writing the file so far
        self._lock = threading.RLock()
        self.update(**fields)

    def update(self, **fields: Any) -> None:
        """Set fields and rewrite the file.

        Raises:
            KeyError: a name that is not a field of :class:`RunRecord`.
            RecordWriteError: the file cannot be written (naming it and the reason).
            RecordClosed: the record already has its final status.
        """
        with self._lock:
            if self.closed:
                raise RecordClosed(str(self.path))
            started = time.perf_counter()
            try:
                write_record(self.path, {**self.data, **fields})
            except OSError as e:
                raise RecordWriteError.from_os_error(
                    f"cannot update {self.path}: {e.strerror or e}", e) from e
            finally:
                self.write_seconds += time.perf_counter() - started
            self.data.update(fields)

    def finish(self, status: str, **fields: Any) -> None:
        """Set the final status (completed, failed, interrupted) and the end time; close the record.

        Raises:
            RecordWriteError: run.json cannot be written (it keeps its previous content).
        """
        assert status in STATUSES[1:], status
        with self._lock:
            try:
                self.update(**fields, status=status, ended=now())
            finally:
                self.closed = True



def read_record(path: Path, missing_ok: bool = True) -> RunRecord:
    """Read a run.json back as data.

    Args:
        missing_ok: Return ``{}`` for a file that does not exist.

    Raises:
        RunDirError: naming the file, when it is unreadable, not JSON or not an object.
    """

    path = Path(path)
    problem = regular_file_problem(path)
    if problem == "does not exist":
        if missing_ok:
            return RunRecord()
        raise RunDirError(f"{path}: no such file")
    if problem:  # a FIFO or a device is never opened
        raise RunDirError(f"{path} {problem} (expected a JSON file)")
    try:
        data = read_json(path)
    except FileNotFoundError:
        if missing_ok:
            return RunRecord()
        raise RunDirError(f"{path}: no such file")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise RunDirError(f"{path}: unreadable ({' '.join(str(e).split())})") from e
    if not isinstance(data, dict):
        raise RunDirError(f"{path}: expected a JSON object, found {type(data).__name__}")
    problem = shape_problem(data)
    if problem:
        raise RunDirError(f"{path}: not a run record: {problem}")
    return data  # type: ignore[return-value]


def flatten(value: Any, prefix: str = "", lists: bool = True) -> Dict[str, Any]:
    """Flatten nested dicts (and lists) into ``{"a.b.0.c": leaf}``.

    Args:
        lists: Flatten lists by index; False leaves lists out (summary columns).

    Nested empty dicts and lists are kept as leaves so that "nothing" still
    compares; an empty or missing top level flattens to no keys.
    """
    if not prefix and not value:
        return {}
    if not lists and isinstance(value, (dict, list, tuple)) and not value:
        return {}
    if isinstance(value, dict) and value:
        out: Dict[str, Any] = {}
        for k, v in value.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k), lists))
        return out
    if isinstance(value, (list, tuple)):
        if not lists:
            return {}
        if value:
            out = {}
            for i, v in enumerate(value):
                out.update(flatten(v, f"{prefix}.{i}" if prefix else str(i), lists))
            return out
    return {prefix: value}


def same(a: Any, b: Any) -> bool:
    """Exact equality, with NaN equal to NaN and True not equal to 1."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return isinstance(a, bool) == isinstance(b, bool) and a == b


# Each task's headline metric: the one a sweep's summary plots and optimises by default,
# and the runs table shows.
MAIN_METRIC = {"load": "bits_per_weight", "kl": "kl_mean", "perplexity": "perplexity",
               "accuracy": "accuracy", "generate": "generation_tps", "bench": "generation_tps",
               "save": "bits_per_weight", "lm_eval": "score", "lora": "final_val_loss"}
