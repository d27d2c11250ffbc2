"""The model directory's tokenizer: its files checked before any weight is read (JSON of the right
shape, no code without consent), then loaded with mlx-lm as ``mlx_lm.load`` does."""

import json
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

from ..config.model_source import read_json_object
from ..errors import TaskError
from ..file_checks import exists, regular_file_problem

# The tokenizer's JSON files: each must hold an object (checked before any weight is read).
TOKENIZER_JSON_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                        "added_tokens.json", "chat_template.json", "vocab.json")
# Files whose auto_map can name tokenizer code of the model directory (transformers' remote code).
REMOTE_CODE_FILES = ("tokenizer_config.json", "config.json")


def tokenizer_problems(model_dir: Path, trust_remote_code: bool = False) -> List[str]:
    """What is wrong with a model directory's tokenizer files, found before any weight is read.

    Each JSON file of the tokenizer must be a regular file holding a JSON
    object; an ``auto_map`` naming tokenizer code of the directory is refused
    unless this command set ``load.trust_remote_code=true``.
    """

    problems, read = [], {}
    for name in dict.fromkeys(TOKENIZER_JSON_FILES + REMOTE_CODE_FILES):
        file = Path(model_dir) / name
        if not exists(file):
            continue
        try:
            read[name] = read_json_object(file, "a tokenizer file", TaskError, bounded=False)
        except TaskError as e:
            problems.append(str(e))
    for name in REMOTE_CODE_FILES:
        auto_map = (read.get(name) or {}).get("auto_map")
        code = {k: v for k, v in auto_map.items() if "Tokenizer" in k} if isinstance(auto_map, dict) else {}
        if code and not trust_remote_code:
            problems.append(
                f"{Path(model_dir) / name} names tokenizer code of the model directory "
                f"(auto_map {json.dumps(code)}): running it is refused; set "
                "load.trust_remote_code=true if you trust this model"
            )
    return problems


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json",
                   "spiece.model", "tiktoken.model")


def has_tokenizer(model_dir: Path) -> bool:
    """Whether a model directory has one of the tokenizer files mlx-lm reads (regular files)."""
    model_dir = Path(model_dir)
    return (any(not regular_file_problem(model_dir / f) for f in TOKENIZER_FILES)
            or bool(list(model_dir.glob("*.tiktoken"))))


def require_tokenizer(model_dir: Path, trust_remote_code: bool = False) -> None:
    """Check a model directory's tokenizer files before any weight is read.

    Raises:
        TaskError: the directory has no tokenizer, or its files cannot serve (every problem).
    """
    model_dir = Path(model_dir)
    if not has_tokenizer(model_dir):
        raise TaskError(
            f"{model_dir}: no tokenizer (expected tokenizer.json or tokenizer_config.json "
            "next to config.json); this task needs one"
        )
    problems = tokenizer_problems(model_dir, trust_remote_code)
    if problems:
        raise TaskError("; ".join(problems))


def load_tokenizer(model_dir: Path, config: Optional[dict] = None,
                   chat_template: Optional[str] = None, *, trust_remote_code: bool = False,
                   tokenizer_config: Optional[Mapping[str, Any]] = None):
    """Load the model directory's tokenizer with mlx-lm, as ``mlx_lm.load`` does.

    Args:
        model_dir: The model directory.
        config: The model config; its ``eos_token_id`` is passed on as mlx-lm does.
        chat_template: A Jinja chat template that replaces the tokenizer's (passed
            as mlx-lm's server passes ``--chat-template``).
        trust_remote_code: This command's ``load.trust_remote_code``, handed to
            transformers (which never asks again, and never runs code without it).
        tokenizer_config: Extra settings for transformers' tokenizer, as
            ``mlx_lm.load(tokenizer_config=...)`` passes them (``eos_token``...);
            its ``trust_remote_code`` gives way to ``trust_remote_code``.

    Returns:
        mlx-lm's ``TokenizerWrapper``.

    Raises:
        TaskError: the directory has no tokenizer, or it cannot be loaded.
    """
    from mlx_lm.utils import load_tokenizer as mlx_load_tokenizer

    model_dir = Path(model_dir)
    require_tokenizer(model_dir, trust_remote_code)
    eos = (config or {}).get("eos_token_id")
    try:
        extra: Dict[str, Any] = {**(tokenizer_config or {}), "trust_remote_code": bool(trust_remote_code)}
        if chat_template is not None:
            extra["chat_template"] = chat_template
        return mlx_load_tokenizer(model_dir, extra, eos_token_ids=eos)
    except Exception as e:  # transformers raises many kinds
        detail = " ".join(str(e).split())[:300]
        raise TaskError(
            f"{model_dir}: the tokenizer cannot be loaded: {type(e).__name__}: {detail}"
        ) from e
