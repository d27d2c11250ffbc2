"""The settings each config group declares: the keys of the group's shipped YAML files.

A key added with ``+`` under ``task``, ``load`` or ``quant`` that no shipped
option of the group declares is a typo or a setting this version does not
have: the validate stage refuses it, listing the valid keys. So a new setting
is declared in one place, its YAML with its default:

- ``task.<key>``: ``conf/task/<task>.yaml`` (every shipped YAML whose ``name``
  is the task's counts, so a preset of a task may add keys of its own);
- ``load.<key>``: ``conf/load/default.yaml`` (or any other ``conf/load/*.yaml``);
- ``quant.<key>``: ``conf/quant/none.yaml`` (or any other ``conf/quant/*.yaml``).

Import-light (PyYAML and the standard library): the loader uses it too.
"""

import copy
import functools
from importlib import resources
from typing import Any, Dict, FrozenSet, List, Mapping, Optional

CONFIG_PACKAGE = "mlxhydra.conf"
CHECKED_GROUPS = ("task", "load", "quant")


@functools.lru_cache(maxsize=None)
def shipped_options(group: str) -> Dict[str, Dict[str, Any]]:
    """``{option: its YAML as plain data}`` for every YAML file of a shipped config group.

    Read with PyYAML's safe loader (a third of OmegaConf's time; only the keys matter here).
    """
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    folder = resources.files(CONFIG_PACKAGE) / group
    options: Dict[str, Dict[str, Any]] = {}
    if not folder.is_dir():
        return options
    for entry in folder.iterdir():
        if entry.name.endswith(".yaml") and entry.is_file():
            content = yaml.load(entry.read_text(), Loader=loader)
            options[entry.name[: -len(".yaml")]] = content if isinstance(content, dict) else {}
    return options


def shipped_defaults(group: str, option: str) -> Dict[str, Any]:
    """A shipped option's settings (a fresh copy): the one place a default is written.

    Code that gets a partial node (the Python API) fills it from here rather than
    from defaults of its own, e.g. ``shipped_defaults("load", "default")``.
    """
    content = shipped_options(group).get(option)
    if content is None:
        raise KeyError(f"no shipped option {group}/{option}.yaml")
    return copy.deepcopy({k: v for k, v in content.items() if k != "defaults"})


@functools.lru_cache(maxsize=None)
def declared_keys(group: str, task_name: Optional[str] = None) -> FrozenSet[str]:
    """The keys the shipped options of ``group`` declare (for ``task``: those of ``task_name``)."""
    keys = set()
    for content in shipped_options(group).values():
        if group == "task" and content.get("name") != task_name:
            continue
        keys.update(k for k in content if k != "defaults")
    return frozenset(keys)


def unknown_key_problems(group: str, node: Mapping[str, Any], task_name: Optional[str] = None) -> List[str]:
    """``group.key: unknown key ...; valid keys: ...`` for each key no shipped option declares.

    Nothing is reported for a group (or task) that ships no YAML to compare with.
    """
    if not isinstance(node, Mapping):
        return []
    valid = declared_keys(group, task_name)
    if not valid:
        return []
    where = f"task={task_name}" if group == "task" else group
    listed = ", ".join(sorted(valid))
    return [f"{group}.{key}: unknown key for {where}; valid keys: {listed}"
            for key in sorted(set(node) - valid, key=str)]
