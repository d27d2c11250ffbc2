"""Subcommands of ``mlxhydra`` that are not Hydra runs: ``mlxhydra NAME ARGS...``.

``cli.main`` hands argv to :func:`main_subcommand` when its first word is a
name in :data:`COMMANDS`; everything else goes to Hydra as overrides.
"""

import importlib
from typing import Callable, Dict, Sequence

# name -> "module:function"; the function takes argv (after the name) and returns the exit status.
COMMANDS: Dict[str, str] = {
    "replay": "mlxhydra.replay:main",
    "diff": "mlxhydra.diff:main",
    "summarize": "mlxhydra.sweep:summarize_main",
}


def is_subcommand(argv: Sequence[str]) -> bool:
    """True when ``argv`` (without the program name) starts with a subcommand name."""
    return bool(argv) and argv[0] in COMMANDS


def main_subcommand(argv: Sequence[str]) -> int:
    """Run ``argv[0]`` with the remaining arguments and return its exit status."""
    module, _, name = COMMANDS[argv[0]].partition(":")
    func: Callable[[Sequence[str]], int] = getattr(importlib.import_module(module), name)
    return func(list(argv[1:]))
