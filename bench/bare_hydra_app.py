"""The smallest Hydra application: the start-up baseline of ``bench_load.py``.

    python bench/bare_hydra_app.py --help
"""

import hydra
from omegaconf import DictConfig


@hydra.main(config_path=None, config_name=None, version_base="1.3")
def main(cfg: DictConfig) -> None:
    print(cfg)


if __name__ == "__main__":
    main()
