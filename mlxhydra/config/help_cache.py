"""A faster ``mlxhydra --help`` (and ``--hydra-help``): the same text, printed sooner.

To list the options of every config group, Hydra calls
``ConfigLoaderImpl.get_group_options`` about five times per group. Each call
deep-copies the whole config repository, registered structured configs
included, to answer a question it has already answered. mlxhydra's tree has
five groups more than a bare app, so this was most of the extra start-up time
of ``--help``: about 80 copies, 0.4 s of CPU.

:func:`install` caches the answers for the rest of the process. The caller
installs it only for the help flags, after which the process prints and
exits. The config tree does not change while the help is printed, so every
cached answer is the one Hydra would compute again. If Hydra's internals
differ from what this expects, nothing is patched and Hydra works as usual.
"""

import sys
from typing import List, Optional, Sequence

HELP_FLAGS = ("--help", "-h", "--hydra-help")


def wants_help(args: Sequence[str]) -> bool:
    """True when the command line asks Hydra for its help text."""
    return any(a in HELP_FLAGS for a in args)


def install() -> bool:
    """Cache the config-group listings of this process; True when installed."""
    from hydra.core.object_type import ObjectType

    from .. import _upstream
    from ..errors import UpstreamError

    try:
        ConfigLoaderImpl = _upstream.ConfigLoaderImpl
    except UpstreamError:
        return False
    original = getattr(ConfigLoaderImpl, "get_group_options", None)
    if original is None or getattr(original, "_mlxhydra_cached", False):
        return False
    answers = {}

    def get_group_options(
        self,
        group_name: str,
        results_filter: Optional[ObjectType] = ObjectType.CONFIG,
        config_name: Optional[str] = None,
        overrides: Optional[List[str]] = None,
    ) -> List[str]:
        key = (id(self), group_name, results_filter, config_name, tuple(overrides or ()))
        if key not in answers:
            answers[key] = original(self, group_name, results_filter, config_name, overrides)
        return list(answers[key])

    get_group_options._mlxhydra_cached = True
    ConfigLoaderImpl.get_group_options = get_group_options
    return True


def install_for(args: Optional[Sequence[str]] = None) -> bool:
    """Install the cache when ``args`` (default: the command line) ask for help."""
    return wants_help(sys.argv[1:] if args is None else args) and install()
