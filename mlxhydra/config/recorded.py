"""What a re-run takes from a record: mlxhydra's own settings, never code, consent or Hydra's machinery.

``replay``, ``resume`` and a KL reference taken from a run directory re-use
settings read from a record, and a record is data that anyone can hand over.
An allowlist decides what is re-applied:

- overrides of mlxhydra's own groups and keys (:data:`OWN_KEYS`), whose value
  holds no interpolation, whose key names no ``_target_``, and where a
  config group is chosen (``quant=4bit``, ``+experiment=quant_search``) by an
  option name, never a path that could reach a YAML file outside the config
  tree (a ``model=`` path through ``..`` is made absolute instead);
- never the settings that let code run (:data:`CONSENT`): consent is the
  current command's alone;
- never where results are written or sent (:data:`DESTINATIONS`);
- of Hydra's own settings, only ``hydra.job.chdir`` and, for a sweep, the
  launcher and sweeper options mlxhydra ships (and the plugin options they
  extend) with their plain sizes (:data:`SWEEP_HYDRA`): never a search path,
  a callback, a ``_target_``, a logging config or any other ``hydra.*`` key.

Everything else is dropped and named in one line (:func:`dropped_line`).
"""

import os
import re
from functools import lru_cache
from importlib import resources
from typing import Any, Dict, FrozenSet, List, Optional, Sequence, Tuple

from .overrides import ParsedOverride, parse_overrides

# The settings that let code run, each with the value that turns it off: consent flags and
# import paths of code. Never taken from a record, in any command; add new ones here.
CONSENT: Dict[str, str] = {
    "load.trust_remote_code": "false",
    "task.confirm_run_unsafe_code": "false",
    "load.model_class": "null",
    "load.args_class": "null",
}
# Keys that name code to run (the file a model directory's code is in): never from a record.
CODE_KEYS = ("model.model_file",)
# mlxhydra's own groups and top-level keys: the only non-Hydra settings re-applied.
OWN_KEYS = ("model", "patch", "quant", "load", "task", "logger", "experiment", "seed", "sweep",
            "model_dir", "model_hub")
# Config groups: their value picks an option (a list of options for patch and logger).
GROUPS = ("model", "patch", "quant", "load", "task", "logger", "experiment")
# Where results are written or sent: this command's choice, never a record's.
DESTINATIONS = ("task.path", "logger.mlflow.tracking_uri", "logger.tensorboard.log_dir",
                "logger.csv.path")
# Hydra settings re-applied from any record: where relative paths point.
KEPT_HYDRA = ("hydra.job.chdir",)
# A sweep's Hydra settings re-applied by resume, besides the launcher and sweeper options:
# plain sizes and names (and the search space: hydra.sweeper.params=null and
# hydra.sweeper.params.<mlxhydra key>).
SWEEP_HYDRA = tuple(f"hydra.launcher.{k}" for k in (
    "n_jobs", "partition", "timeout_min", "nodes", "tasks_per_node", "cpus_per_task", "mem_gb",
    "gpus_per_node", "array_parallelism")) + tuple(f"hydra.sweeper.{k}" for k in (
        "direction", "study_name", "n_trials", "n_jobs", "max_failure_rate", "sampler.seed",
        "sampler.n_startup_trials"))
CHOOSERS = ("hydra/launcher", "hydra/sweeper")
# An option name (no path: "/" or ".." could reach YAML outside the config tree).
_OPTION = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]*")
# A plain value of a Hydra size or name.
_PLAIN = re.compile(r"[A-Za-z0-9_.,:+-]*")

# Why a recorded setting is dropped (named in the one line).
NOT_OWN = "not an mlxhydra setting"
CONSENT_REASON = "consent to run code: give it to this command"
INTERPOLATION = "an interpolation"
CODE = "names code"
PATH_OPTION = "a path, not an option name"
PACKAGE = "a package override"
DESTINATION = "an output location: give it to this command"
HYDRA = "a Hydra setting"
UNPARSED = "not valid override syntax"


def is_consent(key: str) -> bool:
    """Whether ``key`` (an override's key, prefix dropped) is one of :data:`CONSENT` or under one."""
    return any(key == k or key.startswith(k + ".") for k in CONSENT)


def _root(key: str) -> str:
    return re.split(r"[./@]", key, maxsplit=1)[0]


def _names_code(key: str) -> bool:
    return any(part.startswith("_") and part.endswith("_") for part in re.split(r"[./]", key))


def _group_values(o: ParsedOverride) -> Optional[List[Any]]:
    """The option names an override of a config group picks, as parsed."""
    value = o.value
    if o.is_sweep:
        value = getattr(value, "list", None)
        if value is None:  # a range or interval of options
            return None
    return value if isinstance(value, list) else [value]


def quoted(value: str) -> str:
    """``value`` as a quoted override value (a path with spaces, commas or quotes)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _model_choice(o: ParsedOverride, cwd: str) -> Tuple[Optional[str], Optional[str]]:
    """``(text, None)`` of a recorded ``model=`` override, or ``(None, reason)`` to drop it.

    A path through ``..`` is made absolute from ``cwd`` (``model=../llama`` stays
    the same directory): Hydra looks each option up as ``model/<value>.yaml`` in
    its config sources first, and ``..`` could step out of them.
    """
    values = _group_values(o)
    if values is None or not all(isinstance(v, str) for v in values):
        return None, PATH_OPTION
    if not any(".." in re.split(r"[/\\]", v) for v in values):
        return o.text, None
    paths = [quoted(os.path.normpath(os.path.join(cwd, os.path.expanduser(v)))) for v in values]
    return f"{o.prefix}{o.key}={','.join(paths)}", None


def own_override(o: ParsedOverride, cwd: str) -> Tuple[Optional[str], Optional[str]]:
    """``(text to re-apply, None)`` or ``(None, why it is dropped)`` for one recorded override."""
    root = _root(o.key)
    if not o.parsed:
        return None, UNPARSED
    if root not in OWN_KEYS:
        return None, NOT_OWN
    if is_consent(o.key):
        return None, CONSENT_REASON
    if any(o.key == d or o.key.startswith(d + ".") for d in DESTINATIONS):
        return None, DESTINATION
    if _names_code(o.key) or o.key in CODE_KEYS:
        return None, CODE
    if "@" in o.key:
        return None, PACKAGE
    if "${" in (o.value_text or ""):
        return None, INTERPOLATION
    if o.is_delete or o.value is None:
        return o.text, None
    if o.key == "model":
        return _model_choice(o, cwd)
    if o.key in GROUPS or "/" in o.key:
        values = _group_values(o)
        if values is None or not all(isinstance(v, str) and _OPTION.fullmatch(v) and ".." not in v
                                     for v in values):
            return None, PATH_OPTION
    return o.text, None


def own_overrides(texts: Sequence[str], cwd: Optional[str] = None) -> Tuple[List[str], List[str]]:
    """The recorded overrides re-applied, and ``"TEXT (reason)"`` for each one dropped.

    Args:
        texts: Recorded overrides other than Hydra's (``.hydra/overrides.yaml``, a
            sweep's ``hydra.overrides.task``, a planned job's, a trial's).
        cwd: The directory the re-run runs in (a ``model=`` path through ``..`` is
            made absolute from it); default: the current one.
    """
    where = cwd or os.getcwd()
    kept, dropped = [], []
    for o in parse_overrides([str(t) for t in texts]):
        text, reason = own_override(o, where)
        if text is None:
            dropped.append(f"{o.text} ({reason})")
        else:
            kept.append(text)
    return kept, dropped


@lru_cache(maxsize=None)
def shipped_options(chooser: str) -> FrozenSet[str]:
    """The options of ``hydra/launcher`` or ``hydra/sweeper`` that mlxhydra ships, and the
    plugin options they extend (their ``defaults``: joblib, optuna, submitit_slurm...)."""
    import yaml

    names = set()
    folder = resources.files("mlxhydra.conf").joinpath(*chooser.split("/"))
    for entry in folder.iterdir():
        if not entry.name.endswith(".yaml"):
            continue
        names.add(entry.name[: -len(".yaml")])
        content = yaml.safe_load(entry.read_text(encoding="utf-8")) or {}
        names.update(d for d in content.get("defaults") or [] if isinstance(d, str) and d != "_self_")
    return frozenset(names)


def hydra_override(o: ParsedOverride, sweep: bool) -> Optional[str]:
    """Why a recorded Hydra override is dropped, or None when it is re-applied."""
    key, text = o.key, o.value_text or ""
    plain = o.parsed and not o.is_delete and "${" not in text and not _names_code(key)
    if not plain:
        return HYDRA
    if key in KEPT_HYDRA:
        return None if isinstance(o.value, bool) else HYDRA
    if not sweep:
        return HYDRA
    if key in CHOOSERS:
        return None if isinstance(o.value, str) and o.value in shipped_options(key) else HYDRA
    params = "hydra.sweeper.params."
    if key == params[:-1]:  # params=null: the command line's search space alone
        return None if o.value is None else HYDRA
    if key.startswith(params):
        inner = key[len(params):]
        if _root(inner) not in OWN_KEYS or is_consent(inner):
            return CONSENT_REASON if is_consent(inner) else NOT_OWN
        return None
    if key in SWEEP_HYDRA and not o.is_sweep and _PLAIN.fullmatch(text):
        return None
    return HYDRA


def hydra_overrides(texts: Sequence[str], sweep: bool = False,
                    replaced: Sequence[str] = ()) -> Tuple[List[str], List[str]]:
    """The recorded Hydra overrides re-applied, and ``"TEXT (reason)"`` for each one dropped.

    Args:
        sweep: Resuming a sweep: its launcher and sweeper options and sizes are kept too.
        replaced: Key prefixes the re-run sets itself (left out, not named).
    """
    kept, dropped = [], []
    for o in parse_overrides([str(t) for t in texts]):
        if o.key.startswith(tuple(replaced)):
            continue
        reason = hydra_override(o, sweep)
        if reason is None:
            kept.append(o.text)
        else:
            dropped.append(f"{o.text} ({reason})")
    return kept, dropped


def consent_resets(config: Dict[str, Any], given: Sequence[str]) -> List[str]:
    """``KEY=off`` for each consent a recorded config had on (a preset may have set it) and the
    re-run's own overrides (``given``) do not set: what the record did never carries over."""
    keys = {o.key for o in parse_overrides([str(g) for g in given])}
    resets = []
    for key, off in CONSENT.items():
        node: Any = config
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node not in (None, False) and key not in keys:
            resets.append(f"{key}={off}")
    return resets


def dropped_line(command: str, dropped: Sequence[str]) -> Optional[str]:
    """The one line naming every recorded setting that is not re-applied (None: none)."""
    unique = list(dict.fromkeys(dropped))
    if not unique:
        return None
    return f"{command}: dropped recorded settings that are not re-applied: {', '.join(unique)}"
