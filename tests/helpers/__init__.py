"""Test helpers: small random models built with mlx-lm's own classes (random_models)."""
