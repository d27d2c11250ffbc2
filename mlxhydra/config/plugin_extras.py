"""Which pip extra each optional launcher, sweeper and logger needs, checked before Hydra starts.

Without hydra-joblib-launcher, ``hydra/launcher=parallel`` makes Hydra print
its config search path; without MLflow, ``logger=mlflow`` would only fail at
the first job. :func:`missing_extras` reads the command line's choices and
names the extra to install instead, before anything runs.
"""

import importlib.util
from typing import Dict, List, Sequence, Tuple

from .overrides import parse_overrides

# group -> option -> (module that must be importable, extra, what it is)
EXTRAS: Dict[str, Dict[str, Tuple[str, str, str]]] = {
    "hydra/launcher": {
        **{o: ("hydra_plugins.hydra_joblib_launcher", "joblib", "hydra-joblib-launcher")
           for o in ("joblib", "parallel")},
        **{o: ("hydra_plugins.hydra_submitit_launcher", "slurm", "hydra-submitit-launcher")
           for o in ("submitit_slurm", "submitit_local", "slurm")},
        **{o: ("hydra_plugins.hydra_ray_launcher", "ray", "hydra-ray-launcher")
           for o in ("ray", "ray_aws", "ray_local")},
        "rq": ("hydra_plugins.hydra_rq_launcher", "rq", "hydra-rq-launcher"),
    },
    "hydra/sweeper": {
        o: ("hydra_plugins.hydra_optuna_sweeper", "search", "hydra-optuna-sweeper")
        for o in ("optuna", "quant_search")
    },
    "logger": {
        "mlflow": ("mlflow", "mlflow", "MLflow"),
        "tensorboard": ("tensorboardX", "tensorboard", "tensorboardX"),
    },
}
# Extras that are not in pyproject.toml: the package itself is named.
NOT_AN_EXTRA = {"rq"}


def installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _options(value) -> List[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)):
        return [v for v in value if isinstance(v, str)]
    return []


def install_hint(extra: str, package: str) -> str:
    return f"pip install {package}" if extra in NOT_AN_EXTRA else f"pip install 'mlxhydra[{extra}]'"


def missing_extras(overrides: Sequence[str]) -> List[str]:
    """One line per chosen launcher, sweeper or logger whose package is not installed."""
    problems = []
    for o in parse_overrides(overrides):
        table = EXTRAS.get(o.key.split("@")[0])
        if table is None or o.is_delete or o.is_sweep:
            continue
        for option in _options(o.value):
            if option in table and not installed(table[option][0]):
                module, extra, package = table[option]
                problems.append(f"{o.key}={option} needs {package}, which is not installed: "
                                f"{install_hint(extra, package)}")
    return problems
