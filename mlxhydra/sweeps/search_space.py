"""Conditional parts of the Optuna search of ``+experiment=quant_search``.

hydra-optuna-sweeper calls :func:`per_layer_rules` for each trial after the
preset's ``params`` are drawn (its ``custom_search_space`` hook); every value
drawn here becomes an override of the trial, named by its parameter.
"""

from typing import Any

# Per-layer rules a round-to-nearest trial chooses from (Hydra override values):
# none; more bits for the embedding and lm_head; for v_proj and down_proj (as mlx-lm's
# mixed recipes do); for the first block.
RULE_SETS = (
    "[]",
    "[{pattern: 'lm_head|embed_tokens', bits: 8}]",
    "[{pattern: 'v_proj|down_proj', bits: 6}]",
    "[{pattern: 'layers[.]0[.]', bits: 8}]",
)


def per_layer_rules(cfg: Any, trial: Any) -> None:
    """Round-to-nearest trials draw ``quant.rules`` too; calibrated methods take none."""
    if trial.params.get("quant.method", "rtn") == "rtn":
        trial.suggest_categorical("quant.rules", list(RULE_SETS))
