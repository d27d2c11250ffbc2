"""A llama whose ``sanitize`` (run while its weights load) takes as long as a test needs.

``load.model_class=slow_model:Model``, with tests/helpers on PYTHONPATH:

- ``SLOW_MODEL_MATMULS`` (default 2000) products of 2048×2048 matrices (17
  GFLOP each) are built into one graph and evaluated in a single ``mx.eval``
  call, during which Python runs no bytecode on that thread: a stand-in for a
  forward pass that takes many minutes;
- with ``SLOW_MODEL_GATE=<path>`` the load waits until that file exists (at
  most a minute), so a test can change the world at a known moment.
"""

import os
import time
from pathlib import Path

import mlx.core as mx
from mlx_lm.models.llama import Model as Llama
from mlx_lm.models.llama import ModelArgs  # noqa: F401  (load.model_class finds it here)


class Model(Llama):
    def sanitize(self, weights):
        gate = os.environ.get("SLOW_MODEL_GATE")
        if gate:
            end = time.monotonic() + 60
            while not Path(gate).exists() and time.monotonic() < end:
                time.sleep(0.02)
        x = mx.random.normal((2048, 2048))
        for _ in range(int(os.environ.get("SLOW_MODEL_MATMULS", "2000"))):
            x = (x @ x) * (1 / 2048)
        mx.eval(x)
        return super().sanitize(weights)
