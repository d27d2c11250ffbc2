"""A llama whose ``sanitize`` runs one long MLX computation: a stand-in for a slow load or
forward pass (``load.model_class=slow_model:Model``, with tests/helpers on PYTHONPATH).

``SLOW_MODEL_MATMULS`` matrix products of 512×512 are built into one graph and
evaluated in a single ``mx.eval`` call, during which Python runs no bytecode on
that thread.
"""

import os

import mlx.core as mx
from mlx_lm.models.llama import Model as Llama
from mlx_lm.models.llama import ModelArgs  # noqa: F401  (load.model_class finds it here)


class Model(Llama):
    def sanitize(self, weights):
        x = mx.random.normal((512, 512))
        for _ in range(int(os.environ.get("SLOW_MODEL_MATMULS", "100000"))):
            x = (x @ x) * (1 / 512)
        mx.eval(x)
        return super().sanitize(weights)
