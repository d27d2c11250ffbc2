"""The ``logger`` node's settings: checked in the validate stage (before any weight is read),
and completed from the shipped YAML for the trackers."""

from typing import Any, Dict, List

from .declared import shipped_defaults
from .plugin_extras import EXTRAS, install_hint, installed

# logger name -> {key: (expected types, what is expected)}
KEYS: Dict[str, Dict[str, tuple]] = {
    "mlflow": {"tracking_uri": ((str,), "a tracking URI (sqlite:///outputs/mlflow.db, "
                                        "http://host:5000), from the config or MLFLOW_TRACKING_URI"),
               "experiment": ((str,), "an experiment name, from the config or MLFLOW_EXPERIMENT_NAME"),
               "artifacts": ((bool,), "true or false")},
    "tensorboard": {"log_dir": ((str, type(None)), "a directory or null")},
    "csv": {"path": ((str,), "a CSV file path")},
}


def logger_problems(node: Any) -> List[str]:
    """Problems of the ``logger`` node: unknown loggers or keys, bad values, missing packages."""
    if node in (None, {}):
        return []
    if not isinstance(node, dict):
        return [f"logger={node!r}: expected logger settings (choose trackers with logger=[mlflow,csv])"]
    problems = []
    for name, settings in node.items():
        if name not in KEYS:
            problems.append(f"logger.{name}: unknown logger (expected one of {', '.join(KEYS)})")
            continue
        if not isinstance(settings, dict):
            problems.append(f"logger.{name}={settings!r}: expected its settings")
            continue
        for key, value in settings.items():
            if key not in KEYS[name]:
                problems.append(f"logger.{name}.{key}: unknown key (expected {', '.join(KEYS[name])})")
                continue
            types, expected = KEYS[name][key]
            if not isinstance(value, types) or value == "":
                problems.append(f"logger.{name}.{key}={value!r}: expected {expected}")
        module, extra, package = EXTRAS["logger"].get(name, (None, None, None))
        if module and not installed(module):
            problems.append(f"logger={name} needs {package}, which is not installed: "
                            f"{install_hint(extra, package)}")
    return problems


def shipped_logger_settings(name: str) -> Dict[str, Any]:
    """``logger.<name>`` as ``conf/logger/<name>.yaml`` ships it, resolved now.

    Resolving reads the environment its defaults name (``${oc.env:MLFLOW_TRACKING_URI,...}``)
    in this process: a tracker's settings come from the command that runs, never from a record.
    """
    from omegaconf import OmegaConf

    node = (shipped_defaults("logger", name).get("logger") or {}).get(name) or {}
    return OmegaConf.to_container(OmegaConf.create(node), resolve=True)


def completed_logger_settings(name: str, given: Dict[str, Any]) -> Dict[str, Any]:
    """A tracker's settings: ``given`` (a composed ``logger.<name>``, resolved), its missing keys
    taken from the shipped YAML, the one place each default is written."""
    return {**shipped_logger_settings(name), **given}
