"""mlx-lm's lm-evaluation-harness model class (``mlx_lm.evaluate.MLXLM``) around a model in memory.

``MLXLM.__init__`` takes a path and loads the model itself with
``mlx_lm.load``; task=lm_eval must score the model mlxhydra has built
(quantized, patched, with adapters), so :class:`InMemoryMLXLM` skips that
constructor and sets the attributes it would have set. Those attribute names
(``_model``, ``_max_tokens``, ``_batch_size``, ``_sampler``) are private to
mlx-lm: they live only here, and tests/test_lm_eval.py checks that an
``MLXLM`` built from a path has exactly the same attributes, so an mlx-lm
release that renames them fails that test rather than a user's run.
Everything else — log-likelihoods, rolling log-likelihoods, batched greedy
generation, the chat template — is mlx-lm's own code, unchanged.

Importing this module imports lm-eval (mlx_lm.evaluate does).
"""

from types import MethodType
from typing import Any, Callable, Dict, Optional

from lm_eval.api.model import LM
from mlx_lm.evaluate import MLXLM, chat_template_fn


class InMemoryMLXLM(MLXLM):
    """``MLXLM`` for an already loaded model and tokenizer.

    Args:
        model: The mlx-lm model (any ``nn.Module`` mlx-lm can run).
        tokenizer: mlx-lm's ``TokenizerWrapper`` for it.
        max_tokens: Cap on generated tokens (and on the context of
            log-likelihood requests); None: each task's own ``max_gen_toks``.
        batch_size: Sequences scored or generated at once.
        use_chat_template: None: the tokenizer's chat template when it has one
            (``mlx_lm.evaluate``'s rule).
        sampler: None: greedy, as ``mlx_lm.evaluate``'s default sampler.
        chat_template_args: Extra arguments for the tokenizer's
            ``apply_chat_template`` (``mlx_lm.evaluate --chat-template-args``).
        model_info: What lm-eval's results JSON records under ``config``.
    """

    def __init__(self, model: Any, tokenizer: Any, max_tokens: Optional[int] = None,
                 batch_size: int = 8, use_chat_template: Optional[bool] = None,
                 sampler: Optional[Callable] = None,
                 chat_template_args: Optional[Dict[str, Any]] = None,
                 model_info: Optional[Dict[str, Any]] = None) -> None:
        LM.__init__(self)  # not MLXLM.__init__, which loads a model from a path
        self._model = model
        self.tokenizer = tokenizer
        self._max_tokens = max_tokens
        self._batch_size = batch_size
        self.use_chat_template = (tokenizer.chat_template is not None
                                  if use_chat_template is None else use_chat_template)
        self._sampler = sampler
        if chat_template_args:
            # mlx_lm.evaluate sets this on the class for the whole process; per instance here.
            self.apply_chat_template = MethodType(chat_template_fn(**chat_template_args), self)
        self._model_info = dict(model_info or {})

    def get_model_info(self) -> Dict[str, Any]:
        """Merged into the ``config`` entry of lm-eval's results by ``simple_evaluate``."""
        return dict(self._model_info)
