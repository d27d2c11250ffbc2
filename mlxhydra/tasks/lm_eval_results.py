"""task=lm_eval's data and results: loading lm-eval's tasks, their files, metrics and provenance.

- :func:`load_tasks` builds each requested task (reading its dataset) and
  turns an unavailable dataset into one line naming the task, the dataset and
  how to fetch it;
- :func:`write_outputs` writes lm-eval's own results JSON and per-sample logs
  with lm-eval's ``EvaluationTracker``, as ``lm_eval --output_path
  <run_dir>/lm_eval/results.json --log_samples`` does;
- :func:`metrics_of` flattens lm-eval's results into metrics.json's keys.
"""

import math
import os
from importlib import metadata
from pathlib import Path
from typing import Any, Dict, List, Sequence

from ..errors import TaskError
from ..load.data_files import file_sha256

OUTPUT_DIR = "lm_eval"  # under the run directory


# ----------------------------------------------------------------------------- loading
def _offline() -> bool:
    import datasets

    return bool(datasets.config.HF_HUB_OFFLINE)


def _datasets_of(manager, name: str, seen=None) -> List[Dict[str, Any]]:
    """``{path, name, data_files}`` of the datasets a task, group or tag reads, from lm-eval's index."""
    seen = set() if seen is None else seen
    entry = manager.task_index.get(name)
    if entry is None or name in seen:
        return []
    seen.add(name)
    cfg = entry.cfg or {}
    found = []
    if cfg.get("dataset_path"):
        found.append({"path": cfg["dataset_path"], "name": cfg.get("dataset_name"),
                      "data_files": (cfg.get("dataset_kwargs") or {}).get("data_files")})
    children = cfg.get("task") if isinstance(cfg.get("task"), list) else sorted(entry.tags or ())
    for child in children:
        child_name = child.get("task") or child.get("group") if isinstance(child, dict) else child
        if isinstance(child_name, str):
            found += _datasets_of(manager, child_name, seen)
    return found


def dataset_unavailable(spec: str, datasets: List[Dict[str, Any]], error: BaseException) -> str:
    """The one-line message for a task whose dataset cannot be read.

    Names the task, the dataset (the one the error names, else the task's
    first) and how to fetch it: ``datasets.load_dataset`` once with network
    for a Hub dataset, the YAML's ``data_files`` for local files.
    """
    text = " ".join(str(error).split())
    named = [d for d in datasets if str(d["path"]) in text] or datasets
    if not named:
        return f"lm-eval task {spec!r}: its dataset cannot be read: {type(error).__name__}: {text}"
    d = named[0]
    what = repr(d["path"]) + (f" ({d['name']})" if d.get("name") else "")
    if d.get("data_files") or Path(str(d["path"])).expanduser().exists():
        return (f"lm-eval task {spec!r}: dataset {what} cannot be read from its local files "
                f"({type(error).__name__}: {text}); check dataset_kwargs.data_files in its YAML")
    args = ", ".join(repr(a) for a in (d["path"], d.get("name")) if a)
    why = ("is not in the local Hugging Face datasets cache and HF_DATASETS_OFFLINE/HF_HUB_OFFLINE "
           "forbid downloading it" if _offline() else
           f"is not in the local Hugging Face datasets cache and cannot be downloaded ({text})")
    return (f"lm-eval task {spec!r}: dataset {what} {why}; fetch it once with network access: "
            f"python -c \"import datasets; datasets.load_dataset({args})\"")


def load_tasks(manager, specs: Sequence[str]) -> List[Dict[str, Any]]:
    """Build each requested task, group or tag with lm-eval (which reads its dataset).

    Returns:
        One lm-eval TaskDict (``tasks``, ``groups``, ``group_map``) per spec, in order.

    Raises:
        TaskError: a dataset that cannot be read, or a task lm-eval cannot build,
            naming the task.
    """
    loaded = []
    for spec in specs:
        try:
            loaded.append(manager.load(spec))
        except (ConnectionError, FileNotFoundError) as e:  # datasets' offline/missing errors
            raise TaskError(dataset_unavailable(spec, _datasets_of(manager, spec), e)) from e
        except Exception as e:  # lm-eval raises many kinds for a bad task YAML
            text = " ".join(str(e).split())
            raise TaskError(f"lm-eval task {spec!r} cannot be built: {type(e).__name__}: {text}") from e
    return loaded


def top_level(loaded: List[Dict[str, Any]]) -> list:
    """The Task and Group objects to evaluate: each spec's groups and its tasks outside them."""
    items = []
    for d in loaded:
        groups = d["groups"].values()
        in_groups = {t.task_name for g in groups for t in g.get_all_tasks()}
        subgroups = {s.name for g in groups for s in g.get_all_groups()}
        items += [g for g in groups if g.name not in subgroups]
        items += [t for name, t in d["tasks"].items() if name not in in_groups]
    return items


def require_unsafe_consent(loaded: List[Dict[str, Any]], confirmed: bool) -> None:
    """Tasks that run code the model writes need ``task.confirm_run_unsafe_code=true``.

    Raises:
        TaskError: naming the tasks, before anything runs.
    """
    unsafe = sorted(name for d in loaded for name, t in d["tasks"].items()
                    if getattr(t, "UNSAFE_CODE", False))
    if unsafe and not confirmed:
        raise TaskError(f"lm-eval task(s) {', '.join(unsafe)} run code the model writes; "
                        "set task.confirm_run_unsafe_code=true to allow it")


# ----------------------------------------------------------------------------- results
def write_outputs(tracker, results: Dict[str, Any], run_dir: Path) -> Dict[str, Any]:
    """lm-eval's results JSON and one per-sample JSONL per task, written by ``tracker``.

    ``results["samples"]`` is moved out of ``results`` (as lm-eval's command does).

    Returns:
        ``results_file`` and ``samples_files`` (task -> path), for the metrics.

    Raises:
        TaskError: a file lm-eval did not write (its tracker only logs its errors).
    """
    samples = results.pop("samples")
    tracker.save_results_aggregated(results=results, samples=samples)
    for name in results["configs"]:
        tracker.save_results_samples(task_name=name, samples=samples[name])
    out = Path(run_dir) / OUTPUT_DIR
    date_id = getattr(tracker, "date_id", "")  # the files' time stamp, set by the tracker
    results_file = out / f"results_{date_id}.json"
    sample_files = {name: out / f"samples_{name}_{date_id}.jsonl" for name in results["configs"]}
    lost = [str(f) for f in [results_file, *sample_files.values()] if not f.is_file()]
    if lost:
        raise TaskError(f"lm-eval did not write {', '.join(lost)} (see the run's log)")
    return {"results_file": str(results_file),
            "samples_files": {name: str(f) for name, f in sample_files.items()}}


def table(results: Dict[str, Any]) -> str:
    """lm-eval's own Markdown table of the results (and of the groups)."""
    from lm_eval.utils import make_table

    text = make_table(results)
    if results.get("groups"):
        text += "\n" + make_table(results, "groups")
    return text


def _number(value: Any) -> Any:
    """A finite float, or None (lm-eval writes "N/A" for a missing standard error)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _scores(name: str, values: Dict[str, Any]) -> Dict[str, Any]:
    """``{task}.{metric}`` and ``{task}.{metric}_stderr`` for each ``metric,filter`` of lm-eval.

    The filter is appended after a slash when it is not lm-eval's ``none``:
    ``gsm8k.exact_match/strict-match``.
    """
    out: Dict[str, Any] = {}
    for key, value in values.items():
        metric, sep, filt = key.partition(",")
        if not sep or metric.endswith("_stderr"):
            continue
        label = f"{name}.{metric}" + ("" if filt == "none" else f"/{filt}")
        out[label] = _number(value)
        out[f"{label}_stderr"] = _number(values.get(f"{metric}_stderr,{filt}"))
    return out


def _dataset_record(task, results: Dict[str, Any]) -> Dict[str, Any]:
    """What a task read: its dataset, the revision or cache snapshot, local files' hashes."""
    cfg = task.config
    name = task.task_name
    custom = getattr(cfg, "custom_dataset", None)
    kwargs = dict(cfg.dataset_kwargs or {})
    record: Dict[str, Any] = {
        "dataset": (f"{custom.__module__}.{custom.__qualname__}" if callable(custom)
                    else cfg.dataset_path),
        "dataset_name": cfg.dataset_name,
        "revision": kwargs.get("revision"),
        "task_version": results.get("versions", {}).get(name),
        "samples_hash": results.get("task_hashes", {}).get(name),
    }
    dataset = getattr(task, "dataset", None)
    splits = dataset.values() if hasattr(dataset, "values") else [dataset] if dataset else []
    snapshots = sorted({os.path.dirname(f["filename"]) for split in splits
                        for f in (getattr(split, "cache_files", None) or [])})
    if snapshots:  # a Hub dataset's cache directory ends with its revision
        record["cache"] = snapshots
    files = kwargs.get("data_files")
    if files:
        listed = files.values() if isinstance(files, dict) else [files]
        paths = [Path(p) for group in listed for p in ([group] if isinstance(group, str) else group)]
        record["data_files"] = {str(p): file_sha256(p) for p in paths if p.is_file()}
    return record


def _scored_names(loaded: List[Dict[str, Any]], per_task: Dict[str, Any]) -> List[str]:
    """The requested tasks and groups, in order; a group without metrics of its own by its tasks."""
    names: List[str] = []
    for item in top_level(loaded):
        name = getattr(item, "task_name", None) or item.name
        if name in per_task and _scores(name, per_task[name]) or not hasattr(item, "get_all_tasks"):
            names.append(name)
        else:
            names += [t.task_name for t in item.get_all_tasks()]
    return names


def metrics_of(results: Dict[str, Any], loaded: List[Dict[str, Any]],
               specs: Sequence[str]) -> Dict[str, Any]:
    """metrics.json's entries for lm-eval's results.

    ``score`` is the mean of the first metric of each requested task or group
    among those where higher is better; ``score_stderr`` combines their
    standard errors as independent ones (None when one is missing);
    ``score_metrics`` names the metrics averaged.
    """
    per_task = {**results.get("results", {}), **results.get("groups", {})}
    scores: Dict[str, Any] = {}
    for name, values in per_task.items():
        scores.update(_scores(name, values))
        n = results.get("n-samples", {}).get(name, {}).get("effective")
        if n is not None:
            scores[f"{name}.samples"] = n
    firsts = []
    for name in _scored_names(loaded, per_task):
        own = _scores(name, per_task.get(name, {}))
        first = next((k for k, v in own.items() if not k.endswith("_stderr") and v is not None), None)
        metric = first and first[len(name) + 1:].split("/")[0]
        if first and results.get("higher_is_better", {}).get(name, {}).get(metric) is not False:
            firsts.append(first)
    values = [scores[k] for k in firsts]
    errors = [scores[f"{k}_stderr"] for k in firsts]
    tasks = {name: t for d in loaded for name, t in d["tasks"].items()}
    return {
        "score": sum(values) / len(values) if values else None,
        "score_stderr": (math.sqrt(sum(e * e for e in errors)) / len(errors)
                         if errors and all(e is not None for e in errors) else None),
        "score_metrics": firsts,
        **scores,
        "tasks": list(specs),
        "num_fewshot": dict(results.get("n-shot", {})),
        "lm_eval_version": metadata.version("lm_eval"),
        "datasets_version": metadata.version("datasets"),
        "datasets": {name: _dataset_record(t, results) for name, t in tasks.items()},
    }
