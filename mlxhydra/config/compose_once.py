"""One composition per command: the one that decides the run mode serves the job too.

For ``mlxhydra ...`` Hydra 1.3 composes the whole config twice:
``Hydra.get_mode`` composes it (as a multirun, sweep overrides not checked) only to
read ``hydra.mode``; then ``_run_app`` appends ``hydra.mode=RUN`` (``=MULTIRUN``
with ``-m``) when the mode was unset, and ``Hydra.run`` or ``Hydra.multirun``
composes it again. Each composition loads every config file of the tree.

:func:`composed_once` changes that for one command, on Hydra's instance only:
``get_mode`` composes as the command line implies (a run without ``-m``; a
multirun with it, or when a run cannot be composed), sweep overrides checked,
and keeps that config. The next composition of the same instance gets it back
when it asks for the same config name, run mode (or a multirun, see
:class:`_Kept`) and overrides, plus possibly the one ``hydra.mode=X`` that
``_run_app`` appended, applied as Hydra applies overrides; any other
composition, or a second one, composes as usual. When no composition succeeds,
Hydra's own ``get_mode`` runs and every error is Hydra's, as before.
If Hydra's internals differ from what this expects, nothing is changed.
"""

from contextlib import contextmanager
from typing import Any, Iterator, List, Optional, Sequence

# What _run_app appends when the composed config leaves hydra.mode unset (or RUN under -m).
MODE_OVERRIDES = ("hydra.mode=RUN", "hydra.mode=MULTIRUN")


class _Kept:
    """The config ``get_mode`` composed, and what it was composed from.

    A run's composition also answers a multirun's (a preset that sets ``hydra.mode``):
    run mode changes only which defaults may be missing (none, since it succeeded as a
    run) and which sweep overrides are refused (none: a run refuses them all).
    """

    def __init__(self, cfg: Any, config_name: Optional[str], overrides: List[str], run_mode: Any):
        self.cfg, self.config_name, self.overrides, self.run_mode = cfg, config_name, overrides, run_mode

    def serves(self, config_name: Optional[str], overrides: Sequence[str], run_mode: Any,
               from_shell: bool, validate_sweep_overrides: bool) -> Optional[List[str]]:
        """The overrides still to apply when this config answers that composition, else None."""
        from hydra.types import RunMode

        if (config_name != self.config_name or not from_shell or not validate_sweep_overrides
                or run_mode not in (self.run_mode, RunMode.MULTIRUN)):
            return None
        overrides = list(overrides)
        extra = overrides[len(self.overrides):]
        if overrides[:len(self.overrides)] != self.overrides or len(extra) > 1:
            return None
        if extra and extra[0] not in MODE_OVERRIDES:
            return None
        return extra


def _with_overrides(cfg: Any, extra: List[str]) -> Any:
    """``cfg`` with hydra overrides applied as ``ConfigLoaderImpl._load_configuration_impl``
    applies the last ones of its list: set, then recorded in ``hydra.overrides.hydra``."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from .. import _upstream

    parsed = OverridesParser.create().parse_overrides(overrides=extra)
    _upstream.ConfigLoaderImpl._apply_overrides_to_config(parsed, cfg)
    for override in parsed:
        cfg.hydra.overrides.hydra.append(override.input_line)
    return cfg


def _install(hydra: Any, multirun: bool) -> None:
    """Make ``hydra.get_mode`` keep its composition for the next ``load_configuration``."""
    from hydra.types import RunMode

    loader = hydra.config_loader
    original_get_mode, original_load = hydra.get_mode, loader.load_configuration
    kept: List[_Kept] = []

    def get_mode(config_name: Optional[str], overrides: List[str]) -> Any:
        # Without -m, a preset's hydra.mode=MULTIRUN may still make it a multirun: sweep
        # overrides then fail the run's composition (at once, before any file is read).
        for run_mode in [RunMode.MULTIRUN] if multirun else [RunMode.RUN, RunMode.MULTIRUN]:
            try:
                cfg = hydra.compose_config(config_name=config_name, overrides=overrides,
                                           run_mode=run_mode, with_log_configuration=False,
                                           validate_sweep_overrides=True)
                mode = cfg.hydra.mode
            except Exception:
                continue
            kept[:] = [_Kept(cfg, config_name, list(overrides), run_mode)]
            return mode
        # Hydra's own way; the job's composition reports the error as before.
        return original_get_mode(config_name=config_name, overrides=overrides)

    def load_configuration(config_name: Optional[str], overrides: List[str], run_mode: Any,
                           from_shell: bool = True, validate_sweep_overrides: bool = True) -> Any:
        candidate = kept.pop() if kept else None  # the next composition only, and once
        extra = None if candidate is None else candidate.serves(
            config_name, overrides, run_mode, from_shell, validate_sweep_overrides)
        if extra is not None:
            try:
                return _with_overrides(candidate.cfg, extra)
            except Exception:  # composing anew reports it as Hydra does
                pass
        return original_load(config_name=config_name, overrides=overrides, run_mode=run_mode,
                             from_shell=from_shell, validate_sweep_overrides=validate_sweep_overrides)

    hydra.get_mode = get_mode
    loader.load_configuration = load_configuration


@contextmanager
def composed_once(multirun: bool) -> Iterator[None]:
    """While the command runs: the Hydra instance it creates composes its config once.

    Args:
        multirun: The command line has ``-m`` (``--multirun``).
    """
    from .. import _upstream
    from ..errors import UpstreamError

    try:
        Hydra = _upstream.Hydra
        create = Hydra.__dict__["create_main_hydra2"]
        _upstream.ConfigLoaderImpl._apply_overrides_to_config
    except (UpstreamError, KeyError, AttributeError):
        yield
        return

    def create_main_hydra2(cls, task_name: str, config_search_path: Any) -> Any:
        hydra = create.__func__(cls, task_name, config_search_path)
        if callable(getattr(hydra, "get_mode", None)) and callable(
                getattr(hydra.config_loader, "load_configuration", None)):
            _install(hydra, multirun)
        return hydra

    Hydra.create_main_hydra2 = classmethod(create_main_hydra2)
    try:
        yield
    finally:
        Hydra.create_main_hydra2 = create
