"""Hydra plugin: serves model directories as ``model=PATH`` (see mlxhydra.model_source)."""

from mlxhydra._resolvers import register_resolvers
from mlxhydra.model_source import ModelDirConfigSource

register_resolvers()

__all__ = ["ModelDirConfigSource"]
