"""The ``mlxhydra`` command: Hydra wired to :func:`mlxhydra.run.run`."""

import sys
import time

import hydra
from omegaconf import DictConfig

from . import run as run_module
from ._resolvers import register_resolvers
from .errors import Interrupted


@hydra.main(config_path="pkg://mlxhydra.conf", config_name="config", version_base="1.3")
def hydra_main(cfg: DictConfig) -> None:
    run_module.run(cfg)


def main() -> None:
    """Entry point of ``python -m mlxhydra`` and the ``mlxhydra`` script."""
    run_module.STARTED_AT = time.perf_counter()
    register_resolvers()
    try:
        hydra_main()
    except KeyboardInterrupt:
        sys.stderr.write("mlxhydra: interrupted (SIGINT)\n")
        sys.exit(130)
    except Interrupted as e:
        sys.stderr.write(f"mlxhydra: interrupted (signal {e.signum})\n")
        sys.exit(128 + e.signum)
