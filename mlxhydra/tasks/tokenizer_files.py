"""The tokenizer's files, checked before any weight is read: JSON of the right shape, no code without consent."""

import json
from pathlib import Path
from typing import List

from ..errors import TaskError
from ..file_checks import exists

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
    from ..config.model_source import read_json_object

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
