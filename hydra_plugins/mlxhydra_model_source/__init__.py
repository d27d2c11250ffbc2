"""Hydra plugins: serve model directories as ``model=PATH`` (see mlxhydra.config.model_source)."""

from mlxhydra.config.model_source import ModelDirConfigSource, ModelDirSearchPath
from mlxhydra.config.resolvers import register_resolvers

register_resolvers()

__all__ = ["ModelDirConfigSource", "ModelDirSearchPath"]
