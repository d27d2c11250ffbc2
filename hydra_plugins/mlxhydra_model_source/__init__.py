"""Hydra plugins: serve model directories as ``model=PATH`` (see mlxhydra.model_source)."""

from mlxhydra._resolvers import register_resolvers
from mlxhydra.model_source import ModelDirConfigSource, ModelDirSearchPath

register_resolvers()

__all__ = ["ModelDirConfigSource", "ModelDirSearchPath"]
