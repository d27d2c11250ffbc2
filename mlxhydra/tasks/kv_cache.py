"""mlx-lm's KV-cache options (``max_kv_size``, ``kv_bits``, ``kv_group_size``, ``quantized_kv_start``).

``task=generate`` hands them to mlx-lm's ``stream_generate``. ``task=perplexity``
and ``task=kl`` score each row through the same prompt cache that generation
fills (:class:`ThroughCache`), so the cost of a quantized or bounded KV cache
is measured on the same data as any other change.
"""

from typing import Any, Dict, List, Mapping, Optional, Sequence

from ..config.checks import SettingsCheck
from ..errors import TaskError

KV_BITS = (2, 3, 4, 5, 6, 8)  # what mx.quantize (QuantizedKVCache) accepts
KV_GROUP_SIZES = (32, 64, 128)


def kv_problems(task: Mapping[str, Any], step_key: Optional[str] = "prefill_step_size") -> List[str]:
    """The KV-cache settings, and the tokens per model call (``step_key``)."""
    c = SettingsCheck(task)
    if task.get("max_kv_size") is not None:
        c.integer("max_kv_size")
    bits = task.get("kv_bits")
    if bits is not None and (type(bits) is not int or bits not in KV_BITS):
        c.fail("kv_bits", f"one of {', '.join(map(str, KV_BITS))}, or null (no KV-cache quantization)")
    c.choice("kv_group_size", KV_GROUP_SIZES)
    c.integer("quantized_kv_start", minimum=0)
    if step_key is not None:
        c.integer(step_key)
    if bits is not None and task.get("max_kv_size") is not None:
        c.problems.append(
            "task.kv_bits and task.max_kv_size: mlx-lm cannot quantize a rotating KV cache "
            "(RotatingKVCache); set only one of them"
        )
    return c.problems


def kv_options(task: Mapping[str, Any]) -> Dict[str, Any]:
    """The keyword arguments of mlx-lm's ``generate_step`` for the task's KV settings."""
    return {
        "max_kv_size": task.get("max_kv_size"),
        "kv_bits": task.get("kv_bits"),
        "kv_group_size": task["kv_group_size"],
        "quantized_kv_start": task["quantized_kv_start"],
    }


def uses_cache(task: Mapping[str, Any]) -> bool:
    """True when a KV setting changes what the model computes (a bound or quantization)."""
    return task.get("kv_bits") is not None or task.get("max_kv_size") is not None


def quantization_failure(options: Mapping[str, Any], error: Exception,
                         head_sizes: Sequence[int] = ()) -> Optional[TaskError]:
    """The one-line error for mlx-lm failing to quantize the KV cache, or None for other errors.

    mlx-lm cannot quantize a rotating cache (NotImplementedError), and
    ``mx.quantize`` needs the head size (of keys and values: ``head_sizes``,
    when known) to be a multiple of the group size.
    """
    if options.get("kv_bits") is None:
        return None
    detail = " ".join(str(error).split())
    if isinstance(error, NotImplementedError):
        return TaskError(f"task.kv_bits={options['kv_bits']}: this model's KV cache cannot be "
                         f"quantized by mlx-lm ({detail})")
    if not (isinstance(error, ValueError) and "quantize" in detail):
        return None
    group = options["kv_group_size"]
    if not head_sizes:
        return TaskError(f"task.kv_group_size={group} does not fit this model's KV cache (the "
                         f"head dimension must be a multiple of it): {detail}")
    fitting = [g for g in KV_GROUP_SIZES if all(size % g == 0 for size in head_sizes)]
    fix = (f"set task.kv_group_size={' or '.join(map(str, fitting))}" if fitting else
           f"no group size mlx-lm takes ({', '.join(map(str, KV_GROUP_SIZES))}) divides it: set "
           "task.kv_bits=null")
    return TaskError(f"task.kv_group_size={group}: this model's KV cache has head size "
                     f"{'/'.join(map(str, head_sizes))}, not a multiple of {group} (mx.quantize "
                     f"quantizes each head's vectors in groups); {fix}")


def require_servable_cache(model, options: Mapping[str, Any]) -> None:
    """The KV settings must suit this model's cache, whether or not a run reaches
    ``quantized_kv_start``: one rule for every task that takes them.

    The model is called lazily on one token through mlx-lm's prompt cache (the
    cache learns its shapes, nothing is computed) and each cache entry is
    converted as ``maybe_quantize_kv_cache`` converts it: mlx-lm's and
    ``mx.quantize``'s own conditions, checked before any token is computed.

    Raises:
        TaskError: ``max_kv_size`` for a model with its own cache, a cache mlx-lm
            cannot quantize, or a head size that is not a multiple of ``kv_group_size``.
    """
    require_bounded_cache(model, options)
    if options.get("kv_bits") is None:
        return
    import mlx.core as mx
    from mlx_lm.models.cache import make_prompt_cache

    cache = make_prompt_cache(model, max_kv_size=options.get("max_kv_size"))
    model(mx.array([[0]]), cache=cache)
    for entry in cache:
        if not hasattr(entry, "to_quantized"):
            continue  # mlx-lm leaves such an entry as it is
        try:
            entry.to_quantized(group_size=options["kv_group_size"], bits=options["kv_bits"])
        except (NotImplementedError, ValueError) as e:
            sizes = sorted({a.shape[-1] for a in (getattr(entry, "keys", None),
                                                  getattr(entry, "values", None))
                            if hasattr(a, "shape")})
            raise (quantization_failure(options, e, sizes) or e) from e


def quantize_cache(cache, options: Mapping[str, Any]) -> None:
    """mlx-lm's ``maybe_quantize_kv_cache``, with its failures named.

    Raises:
        TaskError: the model's cache cannot be quantized with these settings.
    """
    from mlx_lm.generate import maybe_quantize_kv_cache

    try:
        maybe_quantize_kv_cache(cache, options["quantized_kv_start"], options["kv_group_size"],
                                options["kv_bits"])
    except (NotImplementedError, ValueError) as e:
        raise (quantization_failure(options, e) or e) from e


def require_bounded_cache(model, options: Mapping[str, Any]) -> None:
    """``max_kv_size`` works only for models without their own cache layout.

    mlx-lm's ``make_prompt_cache`` uses a model's ``make_cache`` when it has
    one and then ignores ``max_kv_size``; that is refused here instead.

    Raises:
        TaskError: ``max_kv_size`` set for such a model.
    """
    if options.get("max_kv_size") is not None and hasattr(model, "make_cache"):
        raise TaskError(
            f"task.max_kv_size={options['max_kv_size']}: {type(model).__module__} makes its own "
            "KV cache (make_cache), which mlx-lm uses instead of a bounded one; max_kv_size "
            "would have no effect: set it to null"
        )


class ThroughCache:
    """Calls ``model(tokens)`` as generation does: through mlx-lm's prompt cache, in steps.

    Each row is fed ``step`` tokens at a time into a cache made by mlx-lm's
    ``make_prompt_cache`` (a ``RotatingKVCache`` with ``max_kv_size``); after
    each step the cache is quantized once it holds ``quantized_kv_start``
    tokens, as in ``mlx_lm.generate.generate_step``. With ``step=1`` every
    token after the first sees the cache exactly as a generated token would.
    The logits of all steps are returned together, like ``model(tokens)``.
    """

    def __init__(self, model, task: Mapping[str, Any], step_key: str = "prefill_step_size"):
        self.model = model
        self.options = kv_options(task)
        require_servable_cache(model, self.options)
        self.step = int(task.get(step_key) or 1)

    def __call__(self, inputs):
        import mlx.core as mx
        from mlx_lm.models.cache import make_prompt_cache

        cache = make_prompt_cache(self.model, max_kv_size=self.options["max_kv_size"])
        outputs = []
        for start in range(0, inputs.shape[1], self.step):
            logits = self.model(inputs[:, start:start + self.step], cache=cache)
            quantize_cache(cache, self.options)
            mx.eval(logits, [c.state for c in cache])
            outputs.append(logits)
        return mx.concatenate(outputs, axis=1)
