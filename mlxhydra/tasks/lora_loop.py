"""task=lora's training loop: mlx-lm's ``train``, step for step, able to start at a checkpoint.

mlx-lm's ``mlx_lm.tuner.trainer.train`` always starts at iteration 1 and keeps its loss sums,
pending gradients and batch iterator to itself, so no run can go on from a checkpoint through
it. This is its loop (mlx-lm 0.32) around mlx-lm's own pieces (``iterate_batches``,
``evaluate``, ``default_loss``, ``grad_checkpoint``, ``average_gradients``), with the same
arithmetic in the same order: the losses and adapters are bit-identical to mlx_lm.lora's
(tests/test_lora.py compares them). What it adds: it starts from a :class:`Position`, hands
the position to ``checkpoint`` at every ``steps_per_save``, and ``stop`` ends it after a step.
"""

import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterator, Optional


@dataclass
class Position:
    """Where training stands after ``step`` iterations: what mlx-lm's loop keeps in locals."""

    step: int = 0
    losses: Any = 0  # the report window's loss sum (an mx array once a step added to it)
    n_tokens: Any = 0
    steps: int = 0  # steps in the report window
    train_time: float = 0.0
    trained_tokens: int = 0
    grad: Any = None  # gradients accumulated towards the next update (grad_accumulation_steps)


def eval_due(it: int, args: Any) -> bool:
    """mlx-lm evaluates before iteration ``it`` (reported as ``it - 1``) when this holds."""
    return it == 1 or it % args.steps_per_eval == 0 or it == args.iters


def train_batches(train_set, args: Any) -> Iterator[Any]:
    """mlx-lm's training batch iterator, as its ``train`` makes it."""
    import mlx.core as mx
    from mlx_lm.tuner.trainer import iterate_batches

    return iterate_batches(dataset=train_set, batch_size=args.batch_size,
                           max_seq_length=args.max_seq_length, loop=True,
                           comm_group=mx.distributed.init())


def replay_data_order(train_set, val_set, args: Any, steps: int) -> Iterator[Any]:
    """The training batch iterator after ``steps`` iterations, nothing computed.

    Both the training and the validation batches are shuffled with numpy's global generator,
    the training batches at each epoch and the validation batches at each evaluation, so the
    iterator is pulled once per iteration and every evaluation's shuffle is drawn again, in
    mlx-lm's order, from the generator as seeded at the start.
    """
    import mlx.core as mx
    from mlx_lm.tuner.trainer import iterate_batches

    batches = train_batches(train_set, args)
    for it in range(1, steps + 1):
        next(batches)
        if val_set and eval_due(it, args) and args.val_batches != 0:
            next(iterate_batches(dataset=val_set, batch_size=args.batch_size,
                                 max_seq_length=args.max_seq_length,
                                 comm_group=mx.distributed.init()), None)
    return batches


def train(model, optimizer, train_set, val_set, args: Any, callback: Any, batches: Iterator[Any],
          position: Position, checkpoint: Callable[[Position], None],
          stop: Callable[[Position], bool] = lambda p: False) -> Position:
    """mlx-lm's training loop from ``position`` to ``args.iters`` (or until ``stop(step)``).

    Args:
        args: mlx-lm's ``TrainingArgs``.
        callback: mlx-lm's ``TrainingCallback``.
        batches: :func:`train_batches` or :func:`replay_data_order`'s iterator.
        checkpoint: Called every ``steps_per_save`` iterations, after mlx-lm's adapter files.
        stop: Asked after each step but the last (its checkpoint written): True ends training there.
    """
    import mlx.core as mx
    from mlx_lm.tuner.trainer import default_loss, evaluate, grad_checkpoint
    from mlx_lm.utils import maybe_set_recommended_wired_limit

    from .._upstream import clear_cache

    maybe_set_recommended_wired_limit()
    world = mx.distributed.init()
    if args.grad_checkpoint:
        grad_checkpoint(model.layers[0])
    step, state = compiled_step(model, optimizer, args.grad_accumulation_steps)
    model.train()
    p = position
    for it in range(p.step + 1, args.iters + 1):
        batch = next(batches)
        tic = time.perf_counter()
        if val_set and eval_due(it, args):
            tic = time.perf_counter()
            val_loss = evaluate(model=model, dataset=val_set, loss=default_loss,
                                batch_size=args.batch_size, num_batches=args.val_batches,
                                max_seq_length=args.max_seq_length)
            model.train()
            callback.on_val_loss_report({"iteration": it - 1, "val_loss": val_loss,
                                         "val_time": time.perf_counter() - tic})
            tic = time.perf_counter()
        lvalue, toks, p.grad = step(batch, p.grad, it % args.grad_accumulation_steps == 0)
        p.losses += lvalue
        p.n_tokens += toks
        p.steps += 1
        mx.eval(state, p.losses, p.n_tokens, p.grad)
        clear_cache(args.clear_cache_threshold)
        p.train_time += time.perf_counter() - tic
        p.step = it
        if it % args.steps_per_report == 0 or it == args.iters:
            report(p, args, optimizer, world.size(), callback)
        if it % args.steps_per_save == 0 and world.rank() == 0:
            save_adapters(model, args.adapter_file, it)
            checkpoint(p)
        if it < args.iters and stop(p):
            return p
    if world.rank() == 0:
        save_adapters(model, args.adapter_file)
    return p


def compiled_step(model, optimizer, accumulate: int):
    """mlx-lm's training step, compiled over its state (the model, the optimizer, mlx's random
    key): (step, state)."""
    import mlx.core as mx
    import mlx.nn as nn
    from mlx.nn.utils import average_gradients
    from mlx.utils import tree_map
    from mlx_lm.tuner.trainer import default_loss

    loss_value_and_grad = nn.value_and_grad(model, default_loss)
    state = [model.state, optimizer.state, mx.random.state]

    @partial(mx.compile, inputs=state, outputs=state)
    def step(batch, prev_grad, do_update):
        (lvalue, toks), grad = loss_value_and_grad(model, *batch)
        if prev_grad is not None:
            grad = tree_map(lambda x, y: x + y, grad, prev_grad)
        if do_update:
            grad = average_gradients(grad)
            if accumulate > 1:
                grad = tree_map(lambda x: x / accumulate, grad)
            optimizer.update(model, grad)
            grad = None
        return lvalue, toks, grad

    return step, state


def save_adapters(model, adapter_file: str, it: Optional[int] = None) -> None:
    """The trainable weights as mlx-lm saves them: ``adapter_file``, and at a save step ``it`` its
    numbered copy beside it."""
    import mlx.core as mx
    from mlx.utils import tree_flatten

    adapters = dict(tree_flatten(model.trainable_parameters()))
    mx.save_safetensors(str(adapter_file), adapters)
    if it is not None:
        mx.save_safetensors(str(Path(adapter_file).parent / f"{it:07d}_adapters.safetensors"), adapters)


def report(p: Position, args: Any, optimizer, world_size: int, callback: Any) -> None:
    """mlx-lm's training report over the window, then the window emptied."""
    import mlx.core as mx

    train_loss = mx.distributed.all_sum(p.losses, stream=mx.cpu).item()
    train_loss /= p.steps * world_size
    n_tokens = mx.distributed.all_sum(p.n_tokens, stream=mx.cpu).item()
    p.trained_tokens += n_tokens
    callback.on_train_loss_report({
        "iteration": p.step, "train_loss": train_loss,
        "learning_rate": optimizer.learning_rate.item(),
        "iterations_per_second": args.steps_per_report / p.train_time,
        "tokens_per_second": float(n_tokens) / p.train_time,
        "trained_tokens": p.trained_tokens, "peak_memory": mx.get_peak_memory() / 1e9,
    })
    p.losses, p.n_tokens, p.steps, p.train_time = 0, 0, 0, 0.0
