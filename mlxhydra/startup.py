"""What the command does around Hydra before a job starts.

Hydra composes the config before any run directory exists, so a bad
``model=`` path, bad JSON, an override of a key that does not exist or bad
override syntax would otherwise leave no ``run.json`` at all. The command
catches such failures (see :mod:`mlxhydra.cli`) and :func:`record_startup_failure`
writes the record Hydra would have had: ``run.json`` with status ``failed``
(or ``interrupted``), the message Hydra printed, the command, the overrides
and the versions, in the run directory the run would have used.

Also here: :func:`quote_model_paths`, which lets ``model=`` take paths with
non-ASCII characters, which Hydra's override grammar only accepts quoted.
"""

import os
import shlex
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

from . import records

# Characters that mean a model= value is meant as override grammar, not a plain path.
_GRAMMAR = set("'\"\\,[]{}()=:$")
# Hydra's own flags that print or complete instead of running a job.
_NO_JOB_FLAGS = ("help", "hydra_help", "cfg", "info", "shell_completion", "experimental_rerun")
FALLBACK_RUN_DIR = "outputs/runs/${now:%Y-%m-%d}/${now:%H-%M-%S}_${mlxhydra_token:}"
STAGE = "compose"


def quote_model_paths(args: List[str]) -> List[str]:
    """Quote ``model=`` values that hold non-ASCII characters or start with ``~``.

    Hydra's override lexer rejects non-ASCII characters and ``~`` outside quotes, so
    ``model=./modèles/llama`` would fail with a lexer error. A value with no
    override grammar in it (no quotes, commas, brackets, ``$``...) is a plain
    path: it is passed on as ``model='./modèles/llama'``. Anything else is
    left as written.
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


class OverrideSyntaxError(Exception):
    """An override that Hydra's grammar rejects, named in the message."""


GRAMMAR_DOCS = "https://hydra.cc/docs/advanced/override_grammar/basic/"


def check_override_syntax(args: List[str]) -> None:
    """Parse each override as Hydra will, naming the one that does not parse.

    Hydra's own message quotes only the token where its parser stopped
    (``no viable alternative at input '[1,'``), not the override.

    Raises:
        OverrideSyntaxError: ``override 'KEY=VALUE' is not valid ...``.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        return  # Hydra raises its own parse error, with the trace asked for
    parser = OverridesParser.create()
    for text in _overrides(args):
        try:
            parser.parse_overrides([text])
        except HydraException as e:
            detail = " ".join(str(e).split("See https://")[0].split())
            raise OverrideSyntaxError(
                f"override {text!r} is not valid Hydra override syntax: {detail} "
                f"(quote values with special characters: key='value'; see {GRAMMAR_DOCS})"
            ) from None


def wants_record(args: List[str]) -> bool:
    """True when the command line asks for one job (not --help, --cfg, -m...).

    Multirun failures are recorded by the sweep, not here.
    """
    from hydra._internal.utils import get_args_parser

    try:
        parsed, _ = get_args_parser().parse_known_args(args)
    except SystemExit:  # a usage error: argparse has already said so
        return False
    if parsed.multirun:
        return False
    return not any(getattr(parsed, flag, None) for flag in _NO_JOB_FLAGS)


def _overrides(args: List[str]) -> List[str]:
    from hydra._internal.utils import get_args_parser

    try:
        return list(get_args_parser().parse_known_args(args)[0].overrides)
    except SystemExit:
        return [a for a in args if not a.startswith("-")]


def _override_value(overrides: List[str], key: str) -> Optional[str]:
    """The value a command line gives ``key`` (last one wins), parsed as Hydra does."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    found = None
    for text in overrides:
        if text.split("=", 1)[0].lstrip("+~") != key or "=" not in text:
            continue
        try:
            override = parser.parse_override(text)
            value = override.value()
            if override.is_delete() or not isinstance(value, str):
                continue
            found = value
        except Exception:  # unparsable: Hydra reports it; take the raw text
            found = text.split("=", 1)[1]
    return found


def _resolve(pattern: str) -> str:
    from hydra.core.utils import setup_globals
    from omegaconf import OmegaConf

    from ._resolvers import register_resolvers

    setup_globals()  # Hydra's ${now:...}
    register_resolvers()
    return str(OmegaConf.to_container(OmegaConf.create({"dir": pattern}), resolve=True)["dir"])


def _default_run_dir_pattern() -> str:
    from omegaconf import OmegaConf

    config = Path(__file__).resolve().parent / "conf" / "config.yaml"
    try:
        return str(OmegaConf.load(config).hydra.run.dir)
    except Exception:
        return FALLBACK_RUN_DIR


def startup_run_dir(overrides: List[str], cwd: Optional[str] = None) -> Path:
    """The run directory the job would have had.

    A ``hydra.run.dir=`` on the command line is respected; one that cannot be
    resolved without the composed config (``${model_dir}``...) falls back to
    the default pattern of ``config.yaml``.
    """
    cwd = cwd or os.getcwd()
    patterns = [_override_value(overrides, "hydra.run.dir"), _default_run_dir_pattern(),
                FALLBACK_RUN_DIR]
    for pattern in patterns:
        if not pattern:
            continue
        try:
            path = Path(_resolve(pattern))
        except Exception:
            continue
        return path if path.is_absolute() else Path(cwd) / path
    raise RuntimeError("no run directory pattern could be resolved")


def error_message(error: BaseException) -> str:
    """The message Hydra printed for ``error`` (without its trace)."""
    from hydra.errors import CompactHydraException
    from omegaconf.errors import OmegaConfBaseException

    if isinstance(error, CompactHydraException):
        message = str(error)
        if isinstance(error.__cause__, OmegaConfBaseException):
            message += "\n" + str(error.__cause__)
        return message.strip()
    return f"{type(error).__name__}: {error}".strip()


def record_startup_failure(
    error: Optional[BaseException], args: List[str], started: str
) -> Optional[Path]:
    """Write ``run.json`` for a command that failed before its job started.

    Args:
        error: What was raised (Hydra's reported exception, an
            Interrupted or a KeyboardInterrupt); None when unknown.
        args: The command-line arguments (``sys.argv[1:]``).
        started: When the command started (:func:`records.now`).

    Returns:
        The run directory written, or None when no record applies (--help,
        --cfg, multirun) or none could be written (said on stderr).
    """
    from .errors import Interrupted, interruption_message

    if not wants_record(args):
        return None
    overrides = _overrides(args)
    data: Dict[str, Any] = {"status": "failed", "started": started, "ended": None}
    if isinstance(error, (KeyboardInterrupt, Interrupted)):
        data.update(status="interrupted", error=interruption_message(error))
    elif error is not None:
        data.update(error=error_message(error), error_type=type(error).__name__)
    else:
        data.update(error="failed before the job started (no message)", error_type=None)
    try:
        run_dir = startup_run_dir(overrides)
        model = _override_value(overrides, "model")
        model_dir = None
        if model:
            from .model_source import resolve_model_dir

            model_dir = str(resolve_model_dir(model))
        data.update(
            stage=STAGE,
            run_dir=str(run_dir),
            command=shlex.join(getattr(sys, "orig_argv", sys.argv)),
            overrides=overrides,
            job_num=None,
            cwd=os.getcwd(),
            model_dir=model_dir,
            versions=records.versions(),
            git=records.git_state(Path(os.getcwd())),
            ended=records.now(),
        )
        run_dir.mkdir(parents=True, exist_ok=True)
        records.write_json_atomic(run_dir / records.RUN_RECORD, data)
        return run_dir
    except Exception as e:  # never hide the original error behind this one
        sys.stderr.write(f"mlxhydra: could not write the run record: {e}\n")
        return None
