"""Sweeps: the multirun policy, the sweeper, summaries, plots, Pareto fronts and ``resume``."""
