"""mlxhydra: Hydra-driven experiment configuration for MLX language models.

Public API (imported on first use, so ``import mlxhydra`` stays light;
docs/configuration.md, "Python API"):

- ``load(path_or_hf_repo, *overrides, tokenizer_config=None, model_config=None,
  adapter_path=None, lazy=False, return_config=False, revision=None,
  trust_remote_code=False) -> (model, tokenizer)``: as ``mlx_lm.load``, through
  the command's composition, checks, quantization and strict loading
- ``run(*overrides) -> dict``: one job in this process, as ``mlxhydra OVERRIDES``;
  its ``run.json`` (raises the job's error after recording it)
- ``load_config(path) -> dict``
- ``load_model(path, model_config=None, *, quant=None, strict=True, lazy=False,
  trust_remote_code=False) -> (model, config)``; ``path`` may be a Hugging Face id
- ``compose(overrides) -> DictConfig``
- ``runs(outputs="outputs") -> list[dict]`` (the rows of ``mlxhydra runs --json``)

``mlxhydra.load`` is also the package ``mlxhydra/load/`` (the loader): that
module object is callable, so both ``mlxhydra.load(...)`` and
``mlxhydra.load.loader`` work.

The code follows the pipeline, one layer a package (docs/architecture.md):
``config/`` (compose and check the config), ``load/`` (build and load the
model), ``tasks/`` (experiments on it), ``job/`` (one recorded job),
``history/`` and ``sweeps/`` (reading runs back, multiruns), ``tracking/``.
"""

import sys
from types import ModuleType

__all__ = ["load", "run", "runs", "load_config", "load_model", "compose", "__version__"]

# name -> the module that defines it, imported on first use.
_API = {
    "run": "mlxhydra.api",
    "load_config": "mlxhydra.load.model_config",
    "load_model": "mlxhydra.load.loader",
    "compose": "mlxhydra.config.composition",
    "runs": "mlxhydra.history.rows",
}


class _CallablePackage(ModuleType):
    """``mlxhydra.load``: the loader's package, which is also the API's ``load`` when called.

    The name is both: Python sets ``mlxhydra.load`` to the subpackage whenever one of its
    modules is imported, so the function cannot be the attribute; the module answers the call.
    """

    def __call__(self, *args, **kwargs):
        """``mlxhydra.load(path_or_hf_repo, *overrides, ...) -> (model, tokenizer)``: see mlxhydra.api.load."""
        from .api import load

        return load(*args, **kwargs)

    @property
    def __signature__(self):  # what inspect.signature and a notebook's help show for the call
        import inspect

        from .api import load

        return inspect.signature(load)


class _Package(ModuleType):
    """This package: its ``load`` attribute is the subpackage made callable, imported on first use
    (``import mlxhydra`` imports nothing more)."""

    @property
    def load(self):
        if "load" not in self.__dict__:
            from importlib import import_module

            import_module("mlxhydra.load")  # the import system sets the attribute: see the setter
        return self.__dict__["load"]

    @load.setter
    def load(self, value):
        if type(value) is ModuleType and value.__name__ == f"{__name__}.load":
            value.__class__ = _CallablePackage
        self.__dict__["load"] = value

    @load.deleter
    def load(self):
        del self.__dict__["load"]


sys.modules[__name__].__class__ = _Package


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
