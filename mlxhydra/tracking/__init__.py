"""Experiment trackers: Hydra callbacks (the ``logger`` group) that copy each job's record into MLflow, TensorBoard or a CSV file."""
