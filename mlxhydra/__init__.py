"""mlxhydra: Hydra-driven experiment configuration for MLX language models.

Public API (imported on first use, so ``import mlxhydra`` stays light):

- ``load_config(path) -> dict``
- ``load_model(path, model_config=None, *, quant=None, strict=True, lazy=False,
  trust_remote_code=False) -> (model, config)``
- ``compose(overrides) -> DictConfig``
"""

__version__ = "0.1.0"
__all__ = ["load_config", "load_model", "compose", "__version__"]

# Bound now (it needs only omegaconf): a lazy ``compose`` would be shadowed by
# the submodule mlxhydra.compose as soon as anything imported that module.
from .compose import compose  # noqa: E402


def __getattr__(name):
    if name in ("load_config", "load_model"):
        from . import loading

        return getattr(loading, name)
    raise AttributeError(f"module 'mlxhydra' has no attribute {name!r}")
