"""Command-line overrides: read argv as Hydra will, parse overrides once, quote model paths.

:func:`parse_overrides` is the one override parser of the project: the
command line, recorded ``.hydra/overrides.yaml`` files, sweep plans and
replays all go through it (Hydra's own grammar).
"""

import os
import re
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

from ..errors import OverrideSyntaxError

GRAMMAR_DOCS = "https://hydra.cc/docs/advanced/override_grammar/basic/"
# Characters that mean a model= value is meant as override grammar, not a plain path.
_GRAMMAR = set("'\"\\,[]{}()=:$")
# Hydra's own flags that print or complete instead of running a job.
_NO_JOB_FLAGS = ("help", "hydra_help", "cfg", "info", "shell_completion", "experimental_rerun")


@dataclass(frozen=True)
class ParsedOverride:
    """One override, as Hydra's grammar reads it.

    ``value`` is the parsed value (a quoted string unquoted, a number as a
    number, a sweep as Hydra's sweep object); ``value_text`` is the value as
    typed. An override that does not parse keeps its raw text in both.
    """

    text: str
    prefix: str  # "", "+", "++" or "~"
    key: str  # the key or group, with any @package
    value: Any
    value_text: Optional[str]
    is_sweep: bool = False
    is_delete: bool = False
    parsed: bool = True


def parse_overrides(texts: Sequence[str], strict: bool = False) -> List[ParsedOverride]:
    """Parse override strings with Hydra's grammar.

    Args:
        strict: Raise on an override that does not parse; otherwise keep it
            as raw text (split at the first ``=``).

    Raises:
        OverrideSyntaxError: (strict) naming the override and the grammar's complaint.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    out = []
    for text in texts:
        text = str(text)
        try:
            o = parser.parse_override(text)
        except HydraException as e:
            if strict:
                detail = " ".join(str(e).split("See https://")[0].split())
                raise OverrideSyntaxError(
                    f"override {text!r} is not valid Hydra override syntax: {detail} "
                    f"(quote values with special characters: key='value'; see {GRAMMAR_DOCS})"
                ) from None
            key, sep, value = text.partition("=")
            bare = key.lstrip("+~")
            out.append(ParsedOverride(text, key[: len(key) - len(bare)], bare,
                                      value if sep else None, value if sep else None, parsed=False))
            continue
        prefix = {"ADD": "+", "FORCE_ADD": "++", "DEL": "~"}.get(o.type.name, "")
        key = o.key_or_group + (f"@{o.package}" if o.package else "")
        value_text = text.partition("=")[2] if o.value_type is not None else None
        value = o.value() if o.value_type is not None else None
        out.append(ParsedOverride(text, prefix, key, value, value_text,
                                  is_sweep=o.is_sweep_override(), is_delete=o.is_delete()))
    return out


# Config groups whose override picks an option (a list of options for the last two).
CHOICE_GROUPS = ("model", "quant", "load", "task", "patch", "logger")
LIST_GROUPS = ("patch", "logger")
_UNESCAPED_INTERPOLATION = re.compile(r"(?<!\\)\$\{")


def group_choice_problems(texts: Sequence[str]) -> List[str]:
    """Overrides of a config group whose value is not an option name or path.

    Hydra's defaults list fails on them with a Python error (``model=1e-5``,
    ``model=[1]``) or resolves them (``model=${oc.env:X}``): both are refused
    here, before composition, each with one line.
    """
    problems = []
    for o in parse_overrides(texts):
        group = o.key.split("@", 1)[0]
        if group not in CHOICE_GROUPS or o.is_delete or o.is_sweep or o.value is None:
            continue
        values = o.value if isinstance(o.value, list) and group in LIST_GROUPS else [o.value]
        if not all(isinstance(v, str) for v in values):
            expected = "a list of option names" if group in LIST_GROUPS else "an option name or a path"
            problems.append(f"{o.text}: expected {expected} for the {group} group")
        elif any(_UNESCAPED_INTERPOLATION.search(v) for v in values):
            problems.append(f"{o.text}: a config group's choice cannot be an interpolation "
                            "(give the option or path itself)")
    return problems


def override_texts(texts: Sequence[str]) -> Dict[str, Optional[str]]:
    """``{key: value as text}`` of overrides (prefix dropped; the last one wins)."""
    return {o.key: o.value_text for o in parse_overrides(texts)}


def override_value(texts: Sequence[str], key: str) -> Optional[str]:
    """The string value that overrides give ``key`` (the last one wins), or None."""
    found = None
    for o in parse_overrides(texts):
        if o.key == key and not o.is_delete and isinstance(o.value, str):
            found = o.value
    return found


def require_override_syntax(texts: Sequence[str]) -> None:
    """Parse each override as Hydra will, naming the one that does not parse.

    Hydra's own message quotes only the token where its parser stopped
    (``no viable alternative at input '[1,'``), not the override. With
    ``HYDRA_FULL_ERROR=1`` Hydra raises its own error, with the trace asked for.

    Raises:
        OverrideSyntaxError: ``override 'KEY=VALUE' is not valid ...``.
    """
    if os.environ.get("HYDRA_FULL_ERROR") != "1":
        parse_overrides(texts, strict=True)


def _parse_argv(args: Sequence[str]):
    from .._upstream import hydra_args_parser

    return hydra_args_parser().parse_known_args(list(args))[0]


def overrides_of_argv(args: Sequence[str]) -> List[str]:
    """The overrides in a command line (Hydra's flags left out)."""
    try:
        return list(_parse_argv(args).overrides)
    except SystemExit:  # a usage error: argparse has already said so
        return [a for a in args if not a.startswith("-")]


def _parsed_or_none(args: Sequence[str]):
    try:
        return _parse_argv(args)
    except SystemExit:  # a usage error: argparse has already said so
        return None


def wants_single_job(args: Sequence[str]) -> bool:
    """True when a command line asks for one job (not --help, --cfg, -m...)."""
    parsed = _parsed_or_none(args)
    if parsed is None or parsed.multirun:
        return False
    return not any(getattr(parsed, flag, None) for flag in _NO_JOB_FLAGS)


def multirun_flag(args: Sequence[str]) -> bool:
    """True when a command line has Hydra's ``-m`` (``--multirun``) flag."""
    parsed = _parsed_or_none(args)
    return parsed is not None and bool(parsed.multirun)


def wants_multirun(args: Sequence[str]) -> bool:
    """True when a command line asks for a multirun (``-m`` or ``hydra.mode=MULTIRUN``)."""
    parsed = _parsed_or_none(args)
    if parsed is None:
        return False
    mode = override_value(list(parsed.overrides), "hydra.mode")
    return bool(parsed.multirun) or (isinstance(mode, str) and mode.upper() == "MULTIRUN")


def quote_model_paths(args: Sequence[str]) -> List[str]:
    """Quote ``model=`` values that hold non-ASCII characters or start with ``~``.

    Hydra's override lexer rejects non-ASCII characters and ``~`` outside
    quotes, so ``model=./modèles/llama`` would fail with a lexer error. A value
    with no override grammar in it (no quotes, commas, brackets, ``$``...) is
    a plain path: it is passed on as ``model='./modèles/llama'``. Anything
    else is left as written.
    """
    out = []
    for arg in args:
        key, sep, value = arg.partition("=")
        if (
            sep
            and key == "model"
            and value
            and (not value.isascii() or value.startswith("~"))  # both need quotes in Hydra
            and not (_GRAMMAR & set(value))
        ):
            arg = f"model='{value}'"
        out.append(arg)
    return out


# Keys whose value may name a run as the subcommands do (``latest``, a unique prefix of its name).
RUN_REFERENCE_KEYS = ("load.adapter_path",)
_PLAIN = re.compile(r"[\w./+-]+")


def resolve_run_references(args: Sequence[str]) -> List[str]:
    """``load.adapter_path=latest`` (``latest/3_...``, a unique prefix of a run's name under
    ``outputs/``) as the absolute run directory it names (``record/latest.py: find_run``),
    before this command's own run takes ``latest`` over; the record holds that path. A value
    that is an existing path, holds override grammar or names no run is left as written."""
    from ..errors import RunDirError
    from ..record.latest import find_run

    out = []
    for arg in args:
        key, sep, value = arg.partition("=")
        if sep and key.lstrip("+") in RUN_REFERENCE_KEYS and value and not (_GRAMMAR & set(value)) \
                and not os.path.lexists(os.path.expanduser(value)):
            try:
                path = str(find_run(value).resolve())
            except RunDirError:  # validation names the path that does not exist
                path = None
            if path is not None:
                escaped = path.replace("\\", "\\\\").replace("'", "\\'")
                arg = f"{key}={path}" if _PLAIN.fullmatch(path) else f"{key}='{escaped}'"
        out.append(arg)
    return out
