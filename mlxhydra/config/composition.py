"""Composition with the package's config tree, and the conversion to plain Python."""

from typing import Any, Dict, Iterable, List

from omegaconf import DictConfig, OmegaConf

from .. import _upstream
from .resolvers import register_resolvers

CONFIG_MODULE = "mlxhydra.conf"
CONFIG_NAME = "config"


def compose(overrides: Iterable[str] = (), *, return_hydra_config: bool = False) -> DictConfig:
    """Compose mlxhydra's config as the command line would.

    Args:
        overrides: Hydra overrides, e.g. ``["model=./llama", "quant.bits=4"]``.
            Relative model paths are taken from the current directory.
        return_hydra_config: Keep the ``hydra`` node.

    Returns:
        The composed DictConfig (struct mode, as in a run).
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    from ..errors import ConfigError
    from .overrides import group_choice_problems

    overrides = list(overrides)
    problems = group_choice_problems(overrides)
    if problems:
        raise ConfigError(problems)
    register_resolvers()
    _upstream.quiet_basic_sweeper_schema_warning()
    GlobalHydra.instance().clear()
    with initialize_config_module(CONFIG_MODULE, version_base="1.3"):
        return hydra_compose(
            CONFIG_NAME, overrides=list(overrides), return_hydra_config=return_hydra_config
        )


def to_plain(node: Any) -> Any:
    """Resolve a config node into plain Python (dicts, lists, scalars).

    Escaped ``\\${...}`` strings from config.json come back as the literal text.
    """
    if not OmegaConf.is_config(node):
        return node
    from omegaconf.errors import OmegaConfBaseException

    try:
        return OmegaConf.to_container(node, resolve=True, throw_on_missing=True)
    except OmegaConfBaseException as e:  # ${oc.env:UNSET}, ???, a bad resolver: one clear line
        from ..errors import ConfigError

        where = getattr(e, "full_key", None)
        message = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(f"{where}: {message}" if where else message) from None


def changed_keys(config: Dict[str, Any], base: Dict[str, Any]) -> List[str]:
    """Top-level keys of ``config`` that are new or differ from ``base``."""
    return sorted(k for k in config if k not in base or config[k] != base[k])


def removed_keys(config: Dict[str, Any], base: Dict[str, Any]) -> List[str]:
    return sorted(k for k in base if k not in config)
