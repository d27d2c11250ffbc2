"""Composing the config: the model-directory config source, composition and plain-dict conversion, resolvers, command-line overrides and validation."""
