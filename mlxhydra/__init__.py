"""mlxhydra: Hydra-driven experiment configuration for MLX language models.

Public API (imported on first use, so ``import mlxhydra`` stays light):

- ``load_config(path) -> dict``
- ``load_model(path, model_config=None, *, quant=None, strict=True, lazy=False,
  trust_remote_code=False) -> (model, config)``
- ``compose(overrides) -> DictConfig``

The code follows the pipeline, one layer a package (docs/architecture.md):
``config/`` (compose and check the config), ``load/`` (build and load the
model), ``tasks/`` (experiments on it), ``job/`` (one recorded job),
``history/`` and ``sweeps/`` (reading runs back, multiruns), ``tracking/``.
"""

__all__ = ["load_config", "load_model", "compose", "__version__"]

_API = {
    "load_config": "mlxhydra.load.model_config",
    "load_model": "mlxhydra.load.loader",
    "compose": "mlxhydra.config.composition",
}


# The version is written once, in pyproject.toml; a source tree that is not installed has none.
UNINSTALLED_VERSION = "0+unknown"


def __getattr__(name):
    if name == "__version__":
        from importlib import metadata

        try:
            return metadata.version("mlxhydra")
        except metadata.PackageNotFoundError:
            return UNINSTALLED_VERSION
    if name in _API:
        from importlib import import_module

        return getattr(import_module(_API[name]), name)
    raise AttributeError(f"module 'mlxhydra' has no attribute {name!r}")
