"""``task=save``: write the composed (overridden, quantized) model as an mlx-lm model directory."""

import copy
import logging
import shutil
import stat
from pathlib import Path
from typing import Any, Dict, List

from ..errors import TaskError, WeightsError
from ..file_checks import exists, first_non_directory, regular_file_problem, stat_path
from ..load.tokenizer import has_tokenizer, load_tokenizer
from ..record.atomic import atomic_directory
from .common import Metrics, TaskInput
from .model_card import write_model_card

log = logging.getLogger("mlxhydra")

# The tokenizer's files are checked with the settings, before any weight is read.
USES_TOKENIZER = True

# Copied from the source directory when present, as mlx_lm.convert copies generation_config.json
# and *.py (model code); and the default data files of task=perplexity/kl/accuracy. The tokenizer
# is not copied: it is saved by its own save_pretrained, as mlx_lm.convert saves it.
COPIED = ("eval.txt", "accuracy.jsonl", "generation_config.json")
COPIED_GLOBS = ("*.py",)


def copy_side_files(src: Path, dst: Path) -> List[str]:
    """Copy the non-weight files above; returns their names.

    Only regular files are copied (a FIFO is never opened), contents only: the
    copies get the permissions of any new file (the umask), as mlx_lm.convert's do.
    """
    names = [n for n in COPIED if not regular_file_problem(src / n)]
    names += sorted({p.name for g in COPIED_GLOBS for p in src.glob(g)
                     if not regular_file_problem(p)})
    for name in names:
        shutil.copyfile(src / name, dst / name)
    return names


def save_tokenizer(job: TaskInput, dst: Path) -> bool:
    """Save the job's tokenizer (loaded as mlx_lm.load loads it) with its ``save_pretrained``.

    Returns False, saving nothing, for a model directory without a tokenizer
    (``mlx_lm.load`` then needs one added to the saved directory).
    """
    if not has_tokenizer(job.model_dir):
        log.warning("save: %s has no tokenizer; the saved model has none either", job.model_dir)
        return False
    tokenizer = load_tokenizer(job.model_dir, job.model_config, trust_remote_code=job.trust_remote_code)
    tokenizer.save_pretrained(str(dst))
    return True


def target_problems(value: Any) -> List[str]:
    """Problems with an explicit ``task.path`` (the default in the run directory is always new)."""
    if value in (None, ""):
        return []
    if not isinstance(value, str):
        return [f"task.path={value!r}: expected a directory path or null"]
    path = Path(value).expanduser().absolute()
    if exists(path):
        return [f"task.path={path}: already exists; refusing to overwrite it"]
    why = stat_path(path)[1]
    if why.startswith("has a name too long"):
        return [f"task.path={path} {why}"]
    info, why = stat_path(path.parent)
    if info is None and why != "does not exist":
        return [f"task.path={path}: {path.parent} {why}"]
    if info is not None and not stat.S_ISDIR(info.st_mode):
        return [f"task.path={path}: {path.parent} is not a directory"]
    blocked = first_non_directory(path.parent)
    if blocked is not None:
        return [f"task.path={path}: {blocked} is not a directory"]
    return []


def settings_problems(task: Dict[str, Any]) -> List[str]:
    """Every problem of task=save's settings."""
    return target_problems(task.get("path"))


def execute(job: TaskInput) -> Metrics:
    """Write what ``mlx_lm.convert`` writes: the weights and config.json (mlx-lm's ``save_model``,
    ``save_config``), the tokenizer (its ``save_pretrained``), README.md (a model card) and the
    side files; see :func:`~mlxhydra.tasks.model_card.write_model_card`.

    Everything is written into a temporary directory next to the target, which
    is renamed into place at the end: on error no partial directory is left.

    Returns:
        Metrics: path, bytes, files, weights_fingerprint, quantization (the
        config's entry or None), tokenizer (whether one was saved).

    Raises:
        TaskError: the target exists (or appeared while saving).
    """
    from mlx_lm.utils import save_config, save_model

    from ..load.weight_files import (
        combined_fingerprint,
        describe_files,
        find_weight_files,
        require_sound_headers,
    )

    value = job.task.get("path")
    problems = target_problems(value)
    if problems:  # checked before loading; it may have appeared since
        raise TaskError(problems[0])
    target = job.run_dir / "model" if value in (None, "") else Path(value).expanduser().absolute()
    config = job.model_config
    try:
        with atomic_directory(target) as tmp:
            tokenizer = save_tokenizer(job, tmp)  # a tokenizer that cannot load: before the weights
            save_model(tmp, job.model)
            save_config(copy.deepcopy(config), tmp / "config.json")
            copy_side_files(job.model_dir, tmp)
            write_model_card(tmp, target.name, job.model_dir, config, job.record)
            require_sound_headers(find_weight_files(tmp))  # whole files, before they are the target
    except FileExistsError:
        raise TaskError(f"task.path={target}: appeared while saving; refusing to overwrite it") from None
    except (OSError, RuntimeError, WeightsError) as e:
        # A read-only place, a full disk (mlx: "[write] Unable to write N bytes"): named by
        # the target, never by the temporary copy, which is removed.
        reason = e.strerror if isinstance(e, OSError) and e.strerror else " ".join(str(e).split())
        raise TaskError(f"task.path={target}: cannot be written: {reason} "
                        "(nothing was left behind)") from e
    files = sorted(p.name for p in target.iterdir())
    described = describe_files(find_weight_files(target), "full")
    metrics = {
        "path": str(target),
        "bytes": sum(p.stat().st_size for p in target.iterdir() if p.is_file()),
        "files": files,
        "weights_fingerprint": combined_fingerprint(described),
        "quantization": config.get("quantization"),
        "tokenizer": tokenizer,
    }
    log.info("save: wrote %s (%d files, %.1f MB)", target, len(files), metrics["bytes"] / 1e6)
    return metrics
