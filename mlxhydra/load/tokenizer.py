"""The model directory's tokenizer: its files checked before any weight is read (JSON of the right
shape, no code without consent), then loaded with mlx-lm as ``mlx_lm.load`` does.

A process loads each tokenizer once: the jobs of a sweep (and repeated API calls) get a copy
of the one loaded for the same directory, files and settings (:func:`load_tokenizer`)."""

import json
import os
import stat
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

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


# Tokenizers loaded in this process, the most recently used last (a few: each holds its vocabulary).
_loaded: "OrderedDict[str, Any]" = OrderedDict()
_loaded_lock = threading.Lock()
MAX_LOADED = 4


def _entries(folder: Path) -> List[Tuple[Any, ...]]:
    """Name, whether a folder, size, mtime, inode and device of each entry (symlinks followed)."""
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as e:
        return [("unreadable", e.errno)]
    found: List[Tuple[Any, ...]] = []
    for entry in entries:
        try:
            st = entry.stat()
        except OSError as e:
            found.append((entry.name, "unreadable", e.errno))
            continue
        found.append((entry.name, stat.S_ISDIR(st.st_mode), st.st_size, st.st_mtime_ns, st.st_ino,
                      st.st_dev))
    return found


def _file_identities(model_dir: Path) -> List[Tuple[Any, ...]]:
    """The directory's entries and those of its folders one level down: what a tokenizer may
    read (its JSON and model files, a chat template folder, code). A file changed, added or
    removed gives another list."""
    found = []
    for entry in _entries(model_dir):
        found.append(entry)
        if entry[1] is True:
            found += [(entry[0], *inner) for inner in _entries(model_dir / entry[0])]
    return found


def tokenizer_key(model_dir: Path, eos: Any, extra: Mapping[str, Any]) -> str:
    """What a loaded tokenizer depends on: the directory, its files as they are now, the model
    config's ``eos_token_id`` and the settings handed to transformers."""
    return json.dumps({"dir": os.path.realpath(model_dir), "files": _file_identities(Path(model_dir)),
                       "eos": eos, "extra": extra}, sort_keys=True, default=repr)


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
        mlx-lm's ``TokenizerWrapper``: a copy of the one this process loaded for the same
        directory, files (:func:`tokenizer_key`) and settings, sharing its vocabulary; what
        the caller changes (``add_eos_token``) stays in its copy.

    Raises:
        TaskError: the directory has no tokenizer, or it cannot be loaded.
    """
    from mlx_lm.utils import load_tokenizer as mlx_load_tokenizer

    from .._upstream import tokenizer_copy

    model_dir = Path(model_dir)
    eos = (config or {}).get("eos_token_id")
    extra: Dict[str, Any] = {**(tokenizer_config or {}), "trust_remote_code": bool(trust_remote_code)}
    if chat_template is not None:
        extra["chat_template"] = chat_template
    key = tokenizer_key(model_dir, eos, extra)
    with _loaded_lock:
        loaded = _loaded.get(key)
        if loaded is not None:
            _loaded.move_to_end(key)
    if loaded is None:  # (a tokenizer kept passed these checks, on the same files and consent)
        require_tokenizer(model_dir, trust_remote_code)
        try:
            loaded = mlx_load_tokenizer(model_dir, extra, eos_token_ids=eos)
        except Exception as e:  # transformers raises many kinds
            detail = " ".join(str(e).split())[:300]
            raise TaskError(
                f"{model_dir}: the tokenizer cannot be loaded: {type(e).__name__}: {detail}"
            ) from e
        with _loaded_lock:
            _loaded[key] = loaded
            while len(_loaded) > MAX_LOADED:
                _loaded.popitem(last=False)
    return tokenizer_copy(loaded)  # the caller may add end-of-sequence tokens to its own


def forget_tokenizers() -> None:
    """Drop the tokenizers this process keeps (tests; memory)."""
    with _loaded_lock:
        _loaded.clear()
