"""``task=lora``: LoRA, DoRA or full fine-tuning with mlx-lm's trainer, as ``mlx_lm.lora`` trains.

The steps are mlx_lm.lora's ``run`` and ``train_model``, on the model mlxhydra loaded (a
quantized base gives QLoRA): numpy and mlx seeded with the run's seed, the base frozen, its
layers converted by mlx-lm's ``linear_to_lora_layers`` (or the last ``num_layers`` blocks
unfrozen for ``full``), mlx-lm's optimizer and ``build_schedule``, then mlx-lm's ``train`` on
its datasets. Settings: :mod:`.lora_settings`; data: :mod:`.lora_data`; reports:
:mod:`.lora_log`; files: :mod:`.lora_outputs`.
"""

import contextlib
import copy
import logging
import math
import signal
import time
import types
from dataclasses import replace
from pathlib import Path
from typing import Any, Dict, List

from .. import stopping
from ..errors import ConfigError, Interrupted, TaskError
from ..load.tokenizer import load_tokenizer
from ..progress import progress
from . import lora_checkpoint, lora_data, lora_log, lora_loop, lora_outputs
from .common import Metrics, TaskInput
from .lora_settings import OWN_KEYS, Resolved, resolve
from .lora_settings import settings_problems as _settings_problems

log = logging.getLogger("mlxhydra")

# The tokenizer's files are checked with the settings, before any weight is read.
USES_TOKENIZER = True

FEATURE_DEFAULTS = {"text_feature": "text", "prompt_feature": "prompt",
                    "completion_feature": "completion", "chat_feature": "messages"}


def settings_problems(task: Dict[str, Any]) -> List[str]:
    """Every problem of task=lora's settings (see :mod:`.lora_settings`)."""
    return _settings_problems(task)


def problems_with_model(task: Dict[str, Any], model_config: Dict[str, Any], model_dir: Path,
                        load: Dict[str, Any]) -> List[str]:
    """The sound settings against the model: its depth, its adapters, and the data's rows
    tokenized by its tokenizer. No weight is read."""
    s = resolve(task).settings
    problems = []
    layers = model_config.get("num_hidden_layers")
    if type(layers) is int and s["num_layers"] > layers:
        problems.append(f"task.num_layers={s['num_layers']}: the model has {layers} layers "
                        "(expected at most that, or -1 for all)")
    if load.get("adapter_path") and not load.get("fuse"):
        problems.append("task=lora with load.adapter_path needs load.fuse=true (training on top of "
                        "adapters trains the model they are fused into)")
    try:
        tokenizer = load_tokenizer(model_dir, model_config,
                                   trust_remote_code=load.get("trust_remote_code") is True)
    except TaskError:  # named where the tokenizer files are checked
        return problems
    problems += lora_data.data_problems(s, tokenizer)
    if problems or not s.get("resume_from"):
        return problems
    return lora_checkpoint.resume_problems(s["resume_from"], s, lora_data.fingerprints(s))


def mlx_lm_arguments(job: TaskInput, resolved: Resolved) -> Dict[str, Any]:
    """mlx_lm.lora's arguments for these settings: what its ``adapter_config.json`` holds."""
    from .._upstream import lora_config_defaults

    s = resolved.settings
    args = copy.deepcopy(lora_config_defaults)
    args.update({k: copy.deepcopy(v) for k, v in s.items()
                 if k not in OWN_KEYS and k not in FEATURE_DEFAULTS})
    args.update({k: s[k] for k, v in FEATURE_DEFAULTS.items() if s[k] != v})
    if s["fine_tune_type"] == "full":
        args["lora_parameters"] = None  # as mlx_lm.lora's train_model sets it
    elif args["lora_parameters"].get("keys") is None:
        args["lora_parameters"].pop("keys", None)
    args.update(model=str(job.model_dir), data=str(Path(s["data"]).expanduser().absolute()),
                adapter_path=str(job.run_dir), seed=job.seed, train=True,
                config=str(resolved.config_file) if resolved.config_file else None,
                trust_remote_code=job.trust_remote_code)
    return args


def prepare_model(model, args: types.SimpleNamespace) -> int:
    """mlx_lm.lora's ``train_model`` up to the trainer: seed, freeze, convert; trainable parameters."""
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm.tuner.utils import linear_to_lora_layers

    mx.random.seed(args.seed)
    model.freeze()
    if args.fine_tune_type == "full":
        for layer in model.layers[-max(args.num_layers, 0):]:
            layer.unfreeze()
    else:
        linear_to_lora_layers(model, args.num_layers, args.lora_parameters,
                              use_dora=args.fine_tune_type == "dora")
    return sum(v.size for _, v in tree_flatten(model.trainable_parameters()))


def build_optimizer(args: types.SimpleNamespace):
    """mlx_lm.lora's optimizer: its class by name, ``build_schedule`` when a schedule is set."""
    import mlx.optimizers as optim
    from mlx_lm.tuner.utils import build_schedule

    lr = build_schedule(args.lr_schedule) if args.lr_schedule else args.learning_rate
    name = args.optimizer.lower()
    classes = {"adam": optim.Adam, "adamw": optim.AdamW, "muon": optim.Muon, "sgd": optim.SGD,
               "adafactor": optim.Adafactor}
    return classes[name](learning_rate=lr, **args.optimizer_config.get(name, {}))


@contextlib.contextmanager
def layer_call_restored(model):
    """mlx-lm's ``grad_checkpoint`` replaces the layer class's ``__call__``: put it back after,
    so the next job of a sweep in this process runs its layers unchanged."""
    cls = type(model.layers[0])
    call = cls.__call__
    try:
        yield
    finally:
        cls.__call__ = call


def starting_point(job: TaskInput, optimizer, train_set, valid_set, training_args,
                   training_log: lora_log.TrainingLog):
    """(position, batches, what the metrics say of a resume): step 0, or ``task.resume_from``'s
    checkpoint restored with its data order replayed and its reports logged again."""
    if not job.task.get("resume_from"):
        return lora_loop.Position(), lora_loop.train_batches(train_set, training_args), {}
    file = lora_checkpoint.state_file(job.task["resume_from"])
    position, meta = lora_checkpoint.restore(file, job.model, optimizer, job.seed,
                                             lora_checkpoint.base_model(job.record))
    batches = lora_loop.replay_data_order(train_set, valid_set, training_args, position.step)
    lora_checkpoint.require_same_numpy_state(meta, file)
    training_log.replay(meta["reports"])
    log.info("lora: resuming at iteration %d of %d from %s", position.step, training_args.iters, file)
    return position, batches, {"resumed_from": str(file), "resumed_at_step": position.step,
                               "resumed_trained_tokens": position.trained_tokens}


def run_training(job: TaskInput, args: types.SimpleNamespace, splits, staging: lora_outputs.Staging,
                 training_log: lora_log.TrainingLog, trajectory: Dict[str, Any]) -> Dict[str, Any]:
    """mlx-lm's training (:mod:`.lora_loop`) with mlx_lm.lora's arguments, from
    ``task.resume_from``'s checkpoint when set; returns the seconds it took and where it started.

    mlx-lm's own progress display is not used: :mod:`mlxhydra.progress` counts the iterations
    and the reports are logged.
    """
    from mlx_lm.tuner.datasets import CacheDataset
    from mlx_lm.tuner.trainer import TrainingArgs

    training_args = TrainingArgs(
        batch_size=args.batch_size, iters=args.iters, val_batches=args.val_batches,
        steps_per_report=args.steps_per_report, steps_per_eval=args.steps_per_eval,
        steps_per_save=args.save_every, adapter_file=str(staging.adapter_file),
        max_seq_length=args.max_seq_length, grad_checkpoint=args.grad_checkpoint,
        grad_accumulation_steps=args.grad_accumulation_steps,
    )
    train_set, valid_set = CacheDataset(splits[0]), CacheDataset(splits[1])
    optimizer = build_optimizer(args)
    position, batches, resumed = starting_point(job, optimizer, train_set, valid_set, training_args,
                                                training_log)

    def checkpoint(p: lora_loop.Position) -> None:
        lora_checkpoint.save(staging.dir / lora_checkpoint.STATE, job.model, optimizer, p,
                             trajectory, job.seed, {"train": training_log.train, "val": training_log.val},
                             lora_checkpoint.base_model(job.record))

    def stop(p: lora_loop.Position) -> bool:
        """SIGTERM or SIGHUP (:mod:`mlxhydra.stopping`): a checkpoint of this step, then stop."""
        if not stopping.requested():
            return False
        if p.step % args.save_every:  # at a save step it is written already
            checkpoint(p)
        log.warning("lora: stopped at iteration %d of %d; its checkpoint is in %s", p.step,
                    args.iters, staging.dir)
        return True

    # Pulling a batch marks the one before it done (as mlx-lm's trainer pulls them).
    bar = progress(batches, args.iters - position.step, "lora", unit="iterations")
    start = time.perf_counter()
    try:
        with layer_call_restored(job.model), stopping.honoured():
            done = lora_loop.train(job.model, optimizer, train_set, valid_set, training_args,
                                   lora_log.callback(training_log), iter(bar), position,
                                   checkpoint, stop)
        if done.step < args.iters:  # the main thread records the interruption
            raise Interrupted(signal.SIGTERM)
    finally:
        close = getattr(bar, "close", None)
        if close is not None:  # the loop stops pulling after the last iteration
            close()
    return {"seconds": time.perf_counter() - start, **resumed}


def training_metrics(training_log: lora_log.TrainingLog, trained: Dict[str, Any], iters: int,
                     trainable: int) -> Metrics:
    """The final figures; tokens/s counts this run's own tokens (not a checkpoint's)."""
    seconds = trained.pop("seconds")
    metrics: Metrics = {**training_log.final(), "iterations": iters, "seconds": seconds,
                        "trainable_parameters": trainable}
    tokens = metrics["trained_tokens"] - trained.pop("resumed_trained_tokens", 0)
    metrics["tokens_per_second"] = tokens / seconds if seconds > 0 else None
    return {**metrics, **trained}


def test_loss(model, args: types.SimpleNamespace, test_set) -> float:
    """mlx_lm.lora's ``evaluate_model``: the loss on the test split."""
    from mlx_lm.tuner.datasets import CacheDataset
    from mlx_lm.tuner.trainer import evaluate

    return evaluate(model=model, dataset=CacheDataset(test_set), batch_size=args.batch_size,
                    num_batches=args.test_batches, max_seq_length=args.max_seq_length)


def write_fused(job: TaskInput) -> str:
    """The fused model as mlx_lm.fuse writes it, through task=save (atomic, with a model card)."""
    from . import save

    fused = lora_outputs.fuse(job.model)
    target = job.run_dir / lora_outputs.FUSED
    save.execute(replace(job, task={"name": "save", "path": str(target)}))
    log.info("lora: fused %d adapted layers into %s", fused, target)
    return str(target)


def execute(job: TaskInput) -> Metrics:
    """Train, then write the adapters, the log, the loss curve (and the fused model).

    Returns:
        Metrics: final_train_loss, final_val_loss, initial_val_loss, trained_tokens,
        iterations, tokens_per_second, seconds, peak_memory_gb, trainable_parameters, data,
        data_sha256 (per split), config_file, config_file_sha256, config_file_keys, adapters,
        (test_loss, test_perplexity with test=true; fused_model with fuse=true; resumed_from,
        resumed_at_step with resume_from).
    """
    import numpy as np

    try:
        resolved = resolve(job.task)
    except ConfigError as e:  # checked before loading; the file may have changed since
        raise TaskError(e.problems[0]) from None
    s = resolved.settings
    for key, why in resolved.not_used.items():
        log.warning("lora: task.config_file's %s is not used: %s", key, why)
    args = types.SimpleNamespace(**mlx_lm_arguments(job, resolved))
    tokenizer = load_tokenizer(job.model_dir, job.model_config, trust_remote_code=job.trust_remote_code)
    train_set, valid_set, test_set = lora_data.load_splits(s, tokenizer)
    np.random.seed(job.seed % 2**32)  # mlx_lm.lora's run(): the order of the batches
    trainable = prepare_model(job.model, args)
    log.info("lora: %s fine-tuning, %s trainable parameters, %d iterations of %d rows",
             args.fine_tune_type, f"{trainable:,}", args.iters, args.batch_size)
    training_log = lora_log.TrainingLog(job.run_dir / lora_outputs.TRAIN_LOG, args.iters)
    data_sha256 = lora_data.fingerprints(s)
    try:
        with lora_outputs.Staging(job.run_dir) as staging:
            trained = run_training(job, args, (train_set, valid_set), staging, training_log,
                                   lora_checkpoint.trajectory(s, data_sha256))
            staging.publish(vars(args))
    finally:
        training_log.close()
    job.model.eval()
    metrics = training_metrics(training_log, trained, args.iters, trainable)
    if s["test"]:
        metrics["test_loss"] = test_loss(job.model, args, test_set)
        metrics["test_perplexity"] = math.exp(metrics["test_loss"])
    fig = lora_log.loss_figure(training_log.train, training_log.val)
    if fig is not None:
        lora_outputs.save_figure(fig, job.run_dir / lora_outputs.LOSS_FIGURE)
    from ..load.weight_files import fingerprint

    metrics.update(
        adapters=str(job.run_dir / lora_outputs.ADAPTERS),
        adapters_fingerprint=fingerprint(job.run_dir / lora_outputs.ADAPTERS, "full"),
        data=args.data, data_sha256=data_sha256,
        config_file=str(resolved.config_file) if resolved.config_file else None,
        config_file_sha256=resolved.config_file_sha256, config_file_keys=resolved.from_file,
    )
    if s["fuse"]:
        metrics["fused_model"] = write_fused(job)
    log.info("lora: final train loss %.4f, validation loss %s, %d tokens in %.1f s; adapters in %s",
             metrics["final_train_loss"], "%.4f" % metrics["final_val_loss"]
             if metrics["final_val_loss"] is not None else "-", metrics["trained_tokens"],
             metrics["seconds"], job.run_dir)
    return metrics
