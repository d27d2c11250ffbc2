"""The Python API for notebooks and scripts: :func:`load`, as ``mlx_lm.load``, and :func:`run`, one job.

Both go the command's way: the same overrides, composition, validation, loading
function (``load/loader.build_model``) and one-line errors. :func:`run` leaves
the process as it found it (working directory, ``sys.argv``, logging, the
environment, signal handlers, Hydra's global state), so it can run again.
"""

import functools
import logging
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

# Kept as the process had them: the command sets them for its own run.
_ENVIRONMENT = ("HYDRA_FULL_ERROR", "MLXHYDRA_DEFER_MODEL_ERRORS")


def _one_line_errors(func):
    """mlxhydra's own errors (bad input) raised without the trace through Hydra and the job, as
    the command shows them: one line (the whole trace with ``HYDRA_FULL_ERROR=1``). Any other
    error keeps its trace."""
    @functools.wraps(func)
    def shown(*args, **kwargs):
        from .errors import MlxhydraError

        try:
            return func(*args, **kwargs)
        except MlxhydraError as e:
            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            raise e.with_traceback(None) from None
    return shown


@_one_line_errors
def load(
    path_or_hf_repo: Union[str, os.PathLike],
    *overrides: str,
    tokenizer_config: Optional[Mapping[str, Any]] = None,
    model_config: Optional[Mapping[str, Any]] = None,
    adapter_path: Optional[Union[str, os.PathLike]] = None,
    lazy: bool = False,
    return_config: bool = False,
    revision: Optional[str] = None,
    trust_remote_code: bool = False,
) -> Tuple[Any, ...]:
    """Load a model and its tokenizer as ``mlx_lm.load`` does, through mlxhydra's checks.

    Args:
        path_or_hf_repo: A model directory, or a Hugging Face id ``org/name`` (also
            ``org/name@REVISION``) when no file or directory of that name exists,
            or mlxhydra's ``tiny`` and presets.
        overrides: The command line's overrides (``"quant.bits=4"``, ``"patch=long_context"``,
            ``"load.dtype=float16"``), composed as the command composes them.
        tokenizer_config: Extra settings for the tokenizer, as in mlx-lm; its
            ``trust_remote_code: True`` lets the tokenizer's own code run.
        model_config: Merged on top of the composed model config (config.json,
            patches, overrides) with ``dict.update``: shallow, as in mlx-lm.
        adapter_path: LoRA/DoRA adapters (``load.adapter_path``).
        lazy: Leave the weights unevaluated (``load.lazy``).
        return_config: Also return the model config (with its quantization entry).
        revision: A branch, tag or commit of a Hugging Face id (ignored for a local
            path, as in mlx-lm).
        trust_remote_code: Let the model directory's code run (``load.trust_remote_code``).
            A keyword given here wins over the same setting in ``overrides``.

    Returns:
        ``(model, tokenizer)``, or ``(model, tokenizer, config)``; the tokenizer is
        mlx-lm's ``TokenizerWrapper``.

    Raises:
        ConfigError, ModelDirError, HubError, WeightsError, TaskError: the command's
        one-line errors (:mod:`mlxhydra.errors`), before any weight is read where possible.
    """
    from .job.pipeline import prepare
    from .job.validation import validate
    from .load.tokenizer import load_tokenizer, require_tokenizer

    texts = [model_override(path_or_hf_repo, revision), *_checked_overrides(overrides, "load")]
    cfg = _composed(texts)
    _set_keywords(cfg, model_config, adapter_path, lazy, trust_remote_code)
    settings = validate(cfg)
    model_dir = Path(settings.model_dir)
    trust = settings.loading.trust_remote_code or (tokenizer_config or {}).get("trust_remote_code") is True
    model, report = prepare(cfg, settings, on_checked=lambda: require_tokenizer(model_dir, trust))
    config = report.model_config
    tokenizer = load_tokenizer(model_dir, config, trust_remote_code=trust, tokenizer_config=tokenizer_config)
    return (model, tokenizer, config) if return_config else (model, tokenizer)


@_one_line_errors
def run(*overrides: str) -> Dict[str, Any]:
    """Run one job in this process, as ``mlxhydra OVERRIDES`` runs it; return its record.

    The run directory is the command's (``outputs/runs/<date>/<time>_<token>`` under
    the working directory; ``hydra.run.dir=...`` chooses another).

    Returns:
        The job's ``run.json`` as a dict: ``status`` (completed), ``metrics``, ``run_dir``...

    Raises:
        The error that ended the job, after it was recorded (its ``run.json`` says failed or
        interrupted): mlxhydra's one-line errors, KeyboardInterrupt. The error carries
        ``run_dir`` (a Path, None when no record could be written) and ``record`` (that
        run.json as a dict, or None).
    """
    from .command import _Command
    from .config.resolvers import register_resolvers, renew_run_token
    from .record.environment import called_as
    from .record.schema import read_record

    texts = _checked_overrides(overrides, "run")
    call = f"mlxhydra.run({', '.join(repr(t) for t in texts)})"
    with _process_kept(), called_as(call):
        _prepare_process()
        register_resolvers()
        renew_run_token()  # two runs within a second: two directories
        command = _Command(texts)
        try:
            error = command.refused()
            if error is not None:
                raise error
            command.run_raising()
        except BaseException as e:
            reported = _user_error(e)
            reported.run_dir, reported.record = command.job.run_dir, _read_back(command.job.run_dir)
            if reported.record is not None and hasattr(reported, "add_note"):  # Python 3.11+
                reported.add_note(f"recorded in {command.job.run_dir / 'run.json'}")
            if reported is e:
                raise
            raise reported from e
    return dict(read_record(command.job.run_dir / "run.json", missing_ok=False))


def model_override(value: Union[str, os.PathLike], revision: Optional[str] = None) -> str:
    """The ``model=`` override of a path or Hugging Face id, read as ``mlx_lm.load`` reads it.

    A file or directory of that name here comes first (as an absolute path, whatever its
    characters); otherwise the value is a Hugging Face id (with ``revision``) or a name.

    Raises:
        TypeError: not a string or path.
        ConfigError: a revision for something that is no Hugging Face id, or given twice.
    """
    from .config.hub import split_hub_id
    from .config.recorded import quoted
    from .errors import ConfigError

    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"mlxhydra.load: expected a model directory or a Hugging Face id, got {value!r}")
    text = os.fspath(value)
    local = Path(text).expanduser()
    if text and (local.exists() or local.is_symlink()):
        return "model=" + quoted(str(local.absolute()))
    if revision is not None:
        parts = split_hub_id(text)
        if parts is None:
            raise ConfigError(f"revision={revision!r}: {text} is neither a local path nor a Hugging Face "
                              "id 'org/name'")
        if parts[1] is not None:
            raise ConfigError(f"revision={revision!r}: {text} names its revision already")
        text = f"{text}@{revision}"
    return "model=" + quoted(text)


def _checked_overrides(overrides: Sequence[Any], where: str) -> List[str]:
    """The overrides as strings; flags, multiruns and (for load) a second model refused."""
    from .config.overrides import parse_overrides, wants_multirun
    from .errors import ConfigError

    texts = []
    for item in overrides:
        if not isinstance(item, str):
            hint = " (tokenizer_config= and model_config= are keywords)" if isinstance(item, Mapping) else ""
            raise TypeError(f"mlxhydra.{where}: overrides are strings such as 'quant.bits=4', "
                            f"got {item!r}{hint}")
        if item.startswith("-"):
            raise ConfigError(f"{item}: mlxhydra.{where}() takes overrides, not the command's options "
                              "(for a sweep, --help or --cfg run the mlxhydra command)")
        texts.append(item)
    if where == "run" and wants_multirun(texts):
        raise ConfigError("hydra.mode=MULTIRUN: mlxhydra.run() runs one job (for a sweep run "
                          "the mlxhydra command with -m)")
    if where == "load":
        for o in parse_overrides(texts):
            if o.key.split("@", 1)[0] == "model":
                raise ConfigError(f"{o.text}: the model is mlxhydra.load()'s first argument")
    return texts


def _composed(texts: List[str]):
    """The composed config, with the command's checks first; Hydra's errors as one-line ConfigErrors."""
    from .config.composition import compose
    from .config.model_source import require_model_path
    from .config.overrides import override_value, require_override_syntax

    require_override_syntax(texts)
    require_model_path(override_value(texts, "model"))
    try:
        with _hydra_kept():
            return compose(texts)
    except Exception as e:
        raise _user_error(e) from e


def _set_keywords(cfg, model_config: Optional[Mapping[str, Any]], adapter_path: Any, lazy: bool,
                  trust_remote_code: bool) -> None:
    """mlx-lm's keywords on the composed config: model_config on the model node (shallow), the rest
    on the load node when given."""
    from omegaconf import open_dict
    from omegaconf.errors import OmegaConfBaseException

    from .config.model_source import escape_interpolations
    from .errors import ConfigError

    if model_config is not None and not isinstance(model_config, Mapping):
        raise ConfigError(f"model_config={model_config!r}: expected a dict of model config keys")
    with open_dict(cfg):
        for key, value in (model_config or {}).items():
            if not isinstance(key, str):
                raise ConfigError(f"model_config: the key {key!r} is not a string")
            try:
                cfg.model[key] = escape_interpolations(value)  # replaces a nested node: shallow
            except OmegaConfBaseException as e:
                raise ConfigError(f"model_config[{key!r}]={value!r}: "
                                  f"{str(e).splitlines()[0]}") from None
        if adapter_path is not None:
            cfg.load.adapter_path = escape_interpolations(os.fspath(adapter_path))
        if lazy:
            cfg.load.lazy = True
        if trust_remote_code:
            cfg.load.trust_remote_code = True


def _user_error(error: BaseException) -> BaseException:
    """Hydra's and OmegaConf's errors as the command's one line (a ConfigError); others unchanged."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from .errors import ConfigError, MlxhydraError, one_line_message

    if isinstance(error, (HydraException, OmegaConfBaseException)) and not isinstance(error, MlxhydraError):
        return ConfigError(one_line_message(error))
    return error


def _read_back(run_dir: Optional[Path]) -> Optional[Dict[str, Any]]:
    from .errors import MlxhydraError
    from .record.schema import read_record

    if run_dir is None:
        return None
    try:
        return dict(read_record(run_dir / "run.json", missing_ok=False))
    except MlxhydraError:
        return None


def _prepare_process() -> None:
    """What the command sets before Hydra runs, for this run only (:func:`_process_kept` restores it)."""
    from . import _upstream
    from .config.model_source import DEFER_ERRORS_ENV

    os.environ.pop(DEFER_ERRORS_ENV, None)  # one job: a bad model= is its error, raised
    logging.raiseExceptions = False  # a log file that cannot be written: the run's error says so
    _upstream.quiet_basic_sweeper_schema_warning()


@contextmanager
def _process_kept() -> Iterator[None]:
    """The working directory, ``sys.argv``, the command's environment variables and logging,
    as they were (Hydra configures logging for the job and sets ``sys.argv``)."""
    argv, cwd = list(sys.argv), os.getcwd()
    environment = {key: os.environ.get(key) for key in _ENVIRONMENT}
    raise_exceptions = logging.raiseExceptions
    try:
        with _logging_kept(), _hydra_kept():
            yield
    finally:
        sys.argv[:] = argv
        if os.getcwd() != cwd:
            os.chdir(cwd)
        for key, value in environment.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        logging.raiseExceptions = raise_exceptions


@contextmanager
def _hydra_kept() -> Iterator[None]:
    """The caller's own Hydra (``hydra.initialize(...)`` in a notebook) as it was: mlxhydra clears
    Hydra's global state to compose its config tree."""
    from hydra.core.global_hydra import GlobalHydra

    own = GlobalHydra.instance().hydra
    GlobalHydra.instance().clear()
    try:
        yield
    finally:
        GlobalHydra.instance().clear()
        GlobalHydra.instance().hydra = own


@contextmanager
def _logging_kept() -> Iterator[None]:
    """Every existing logger's level, handlers and flags as they were; the handlers the job's
    logging configuration added to them (its console and its log file) flushed and closed."""
    manager = logging.Logger.manager
    loggers = [logging.getLogger()] + [lg for lg in list(manager.loggerDict.values())
                                       if isinstance(lg, logging.Logger)]
    saved = [(lg, lg.level, list(lg.handlers), lg.propagate, lg.disabled) for lg in loggers]
    try:
        yield
    finally:
        for lg, level, handlers, propagate, disabled in saved:
            for handler in [h for h in lg.handlers if h not in handlers]:
                handler.flush()
                handler.close()
            lg.handlers[:] = handlers
            lg.propagate, lg.disabled = propagate, disabled
            lg.setLevel(level)
