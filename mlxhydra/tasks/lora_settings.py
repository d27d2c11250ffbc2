"""task=lora's settings: conf/task/lora.yaml, an mlx_lm.lora YAML config on top
(``task.config_file``), the command line's ``task.*`` overrides on top of both; each checked.

The keys are mlx_lm.lora's, with its defaults (written once, in conf/task/lora.yaml). A
config file is read as mlx_lm.lora reads it (its YAML loader: ``1e-5`` is a float) and each of
its top-level keys replaces the shipped value, as mlx_lm.lora's defaults are replaced; a key the
command line sets (``task.iters=100``, ``task.lora_parameters.rank=16``) wins over the file's.
"""

import copy
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Set, Tuple

from ..config.checks import SettingsCheck
from ..config.overrides import override_texts
from ..errors import ConfigError
from ..file_checks import regular_file_problem
from ..load.adapters import FINE_TUNE_TYPES
from ..load.data_files import file_sha256

# mlxhydra's own keys of task=lora; every other key is an mlx_lm.lora argument.
OWN_KEYS = ("name", "config_file", "fuse", "resume_from")
OPTIMIZERS = ("adam", "adamw", "muon", "sgd", "adafactor")
SPLITS = ("train", "valid", "test")
# mlx_lm.lora config keys that mlxhydra takes from elsewhere: not read from a config file.
ELSEWHERE = {
    "model": "the model is model=PATH",
    "adapter_path": "the outputs go to the run directory",
    "seed": "the run's seed=N seeds training",
    "trust_remote_code": "consent is this command's load.trust_remote_code",
    "report_to": "trackers are logger=[mlflow,tensorboard,csv]",
    "project_name": "trackers are logger=[mlflow,tensorboard,csv]",
    "train": "task=lora always trains",
    "config": "task.config_file names the file",
    "clear_cache_threshold": "mlx_lm.lora does not pass it to the trainer",
}
# Keys of a config file that this version cannot honour.
REFUSED = {
    "resume_adapter_file": "it restores the adapters alone; task.resume_from=RUN_DIR goes on from a "
                           "task=lora run's checkpoint (or load.adapter_path with load.fuse=true "
                           "trains on top of fused adapters)",
    "hf_dataset": "Hugging Face datasets are not supported yet; set data to a directory",
}


@dataclass
class Resolved:
    """The settings training uses: the task node with a config file's keys merged in."""

    settings: Dict[str, Any]
    config_file: Optional[Path] = None
    config_file_sha256: Optional[str] = None
    from_file: List[str] = field(default_factory=list)  # keys whose value came from the file
    not_used: Dict[str, str] = field(default_factory=dict)  # file key -> why it is not used


def command_line_paths() -> Set[Tuple[str, ...]]:
    """The task keys this job's overrides set: ``task.a.b=1`` -> ``("a", "b")`` (none outside Hydra)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return set()
    texts = [str(t) for t in HydraConfig.get().overrides.task]
    return {tuple(k.split(".")[1:]) for k in override_texts(texts) if k.startswith("task.")}


def read_config_file(value: str) -> Tuple[Path, Dict[str, Any]]:
    """An mlx_lm.lora YAML config as mlx_lm.lora reads it.

    Raises:
        ConfigError: naming the file, when it cannot be read or is not a mapping.
    """
    import yaml

    from .._upstream import lora_yaml_loader

    path = Path(value).expanduser().absolute()
    problem = regular_file_problem(path)
    if problem:
        raise ConfigError(f"task.config_file={value}: {path} {problem}")
    try:
        content = yaml.load(path.read_text(encoding="utf-8"), lora_yaml_loader)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise ConfigError(f"task.config_file={value}: {path} is not readable YAML: "
                          f"{' '.join(str(e).split())}") from None
    if not isinstance(content, dict):
        raise ConfigError(f"task.config_file={value}: {path} holds {type(content).__name__}, "
                          "expected a mapping of mlx_lm.lora settings")
    return path, content


def _set_path(target: Dict[str, Any], path: Tuple[str, ...], source: Mapping[str, Any]) -> None:
    """Copy ``source``'s value at ``path`` into ``target`` (making the mappings on the way)."""
    value: Any = source
    for part in path:
        if not isinstance(value, Mapping) or part not in value:
            return
        value = value[part]
    node = target
    for part in path[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[path[-1]] = copy.deepcopy(value)


def resolve(task: Mapping[str, Any], cli: Optional[Set[Tuple[str, ...]]] = None) -> Resolved:
    """The task's settings with ``task.config_file`` merged in (the command line on top).

    Raises:
        ConfigError: the config file cannot be read, or holds a key this version refuses
            or does not know (each one line).
    """
    settings = copy.deepcopy(dict(task))
    value = task.get("config_file")
    if value in (None, ""):
        return Resolved(settings)
    path, content = read_config_file(value)
    cli = command_line_paths() if cli is None else cli
    resolved = Resolved(settings, path, file_sha256(path))
    problems = []
    for key, file_value in content.items():
        if key in ELSEWHERE:
            resolved.not_used[key] = ELSEWHERE[key]
        elif key in REFUSED:
            if file_value not in (None, False, ""):
                problems.append(f"task.config_file={value}: {key}: {REFUSED[key]}")
        elif key in OWN_KEYS or key not in task:
            known = ", ".join(sorted(set(task) - set(OWN_KEYS) | set(ELSEWHERE)))
            problems.append(f"task.config_file={value}: {key}: not an mlx_lm.lora setting that "
                            f"task=lora takes (expected one of {known})")
        elif (key,) not in cli:
            settings[key] = copy.deepcopy(file_value)
            resolved.from_file.append(key)
            for p in sorted(p for p in cli if len(p) > 1 and p[0] == key):
                _set_path(settings, p, task)  # task.lora_parameters.rank=16 on the file's mapping
    if problems:
        raise ConfigError(problems)
    return resolved


def _lora_parameter_problems(lora: Any) -> List[str]:
    if not isinstance(lora, dict):
        return [f"task.lora_parameters={lora!r}: expected a mapping with rank, scale and dropout"]
    c = SettingsCheck(lora, "task.lora_parameters")
    c.integer("rank")
    c.number("scale", -math.inf, expected="a finite number")
    dropout = lora.get("dropout")
    if not (isinstance(dropout, (int, float)) and not isinstance(dropout, bool) and 0 <= dropout < 1):
        c.fail("dropout", "a number from 0 to below 1")
    keys = lora.get("keys")
    if keys is not None and not (isinstance(keys, list) and keys
                                 and all(isinstance(k, str) and k for k in keys)):
        c.fail("keys", "a list of module paths (self_attn.q_proj, ...) or null")
    return c.problems


def optimizer_problems(s: Mapping[str, Any]) -> List[str]:
    """The optimizer's name and keyword arguments (those its class takes)."""
    import inspect

    import mlx.optimizers as optim

    name = s.get("optimizer")
    if not isinstance(name, str) or name.lower() not in OPTIMIZERS:
        return [f"task.optimizer={name!r}: expected one of {', '.join(OPTIMIZERS)}"]
    configs = s.get("optimizer_config")
    if not isinstance(configs, dict) or not all(isinstance(v, dict) for v in configs.values()):
        return [f"task.optimizer_config={configs!r}: expected a mapping of optimizer name -> "
                "its keyword arguments"]
    kwargs = configs.get(name.lower(), {})
    cls = {"adam": optim.Adam, "adamw": optim.AdamW, "muon": optim.Muon, "sgd": optim.SGD,
           "adafactor": optim.Adafactor}[name.lower()]
    taken = set(inspect.signature(cls.__init__).parameters) - {"self", "learning_rate"}
    return [f"task.optimizer_config.{name.lower()}.{k}: not an argument of mlx.optimizers."
            f"{cls.__name__} (expected one of {', '.join(sorted(taken))})"
            for k in sorted(set(kwargs) - taken, key=str)]


def schedule_problems(schedule: Any) -> List[str]:
    """``lr_schedule``: null, or what mlx-lm's ``build_schedule`` builds without an error."""
    if schedule is None:
        return []
    from mlx_lm.tuner.utils import build_schedule

    shown = f"task.lr_schedule={schedule!r}"
    if not (isinstance(schedule, dict) and isinstance(schedule.get("name"), str)
            and isinstance(schedule.get("arguments"), list) and schedule["arguments"]):
        return [f"{shown}: expected null or {{name: <mlx.optimizers.schedulers function>, "
                "arguments: [initial_lr, ...], warmup: N, warmup_init: LR}"]
    try:
        build_schedule(schedule)
    except (AttributeError, TypeError, ValueError) as e:
        return [f"{shown}: mlx-lm cannot build it: {' '.join(str(e).split())}"]
    return []


def data_dir_problems(s: Mapping[str, Any]) -> List[str]:
    """``data``: a directory holding train.jsonl and valid.jsonl (test.jsonl with test=true)."""
    value = s.get("data")
    if not isinstance(value, str) or not value:
        return [f"task.data={value!r}: expected a directory with train.jsonl and valid.jsonl "
                "(mlx-lm's --data)"]
    path = Path(value).expanduser().absolute()
    if not path.is_dir():
        what = "does not exist" if not path.exists() else "is not a directory"
        return [f"task.data={value}: {path} {what} (expected a directory with train.jsonl and "
                "valid.jsonl)"]
    wanted = SPLITS if s.get("test") is True else SPLITS[:2]
    problems = []
    for split in wanted:
        problem = regular_file_problem(path / f"{split}.jsonl")
        if problem:
            why = " (task.test=true evaluates on it)" if split == "test" else ""
            problems.append(f"task.data={value}: {path / f'{split}.jsonl'} {problem}{why}")
    return problems


def resolved_problems(s: Mapping[str, Any]) -> List[str]:
    """Every problem of the resolved settings (the data directory's files: only that they exist)."""
    c = SettingsCheck(s)
    c.choice("fine_tune_type", FINE_TUNE_TYPES)
    c.integer("num_layers", allow_negative_one=True)
    for key in ("batch_size", "iters", "steps_per_report", "steps_per_eval", "save_every",
                "grad_accumulation_steps"):
        c.integer(key)
    c.integer("max_seq_length", minimum=2)
    c.integer("val_batches", allow_negative_one=True)
    c.integer("test_batches", allow_negative_one=True)
    c.number("learning_rate", 0.0, expected="a number >= 0")
    for key in ("test", "grad_checkpoint", "mask_prompt", "fuse"):
        c.boolean(key)
    for key in ("text_feature", "prompt_feature", "completion_feature", "chat_feature"):
        if not isinstance(s.get(key), str) or not s.get(key):
            c.fail(key, "a field name")
    if s.get("fine_tune_type") in ("lora", "dora"):
        c.problems += _lora_parameter_problems(s.get("lora_parameters"))
    c.problems += optimizer_problems(s)
    c.problems += schedule_problems(s.get("lr_schedule"))
    c.problems += data_dir_problems(s)
    return c.problems


def settings_problems(task: Dict[str, Any]) -> List[str]:
    """Every problem of task=lora's settings, a config file's included (no tokenizer needed)."""
    value = task.get("config_file")
    if value is not None and (not isinstance(value, str) or not value):
        return [f"task.config_file={value!r}: expected an mlx_lm.lora YAML file or null"]
    value = task.get("resume_from")
    if value is not None and (not isinstance(value, str) or not value):
        return [f"task.resume_from={value!r}: expected a task=lora run directory (or its "
                "checkpoints/) to go on from, or null"]
    try:
        resolved = resolve(task)
    except ConfigError as e:
        return e.problems
    return resolved_problems(resolved.settings)
