"""OmegaConf resolvers used by the config tree (import-light, like model_source)."""

import os
import re
import secrets
from typing import Optional, Tuple

from omegaconf import OmegaConf

# One token per command: hydra resolves the run directory more than once and
# every resolution must name the same folder, while two processes started in
# the same second must not share one (nor two runs of the Python API: see renew_run_token).
# (pid, token): made on first use, and again in a process forked after it (a fork inherits it).
_RUN_TOKEN: Optional[Tuple[int, str]] = None
_UNSAFE = re.compile(r"[^\w.=,+-]+")  # \w: letters and digits of any script, and _
MAX_NAME = 120


def run_token() -> str:
    """A short name part that is unique to this process (to this run of the Python API)."""
    if _RUN_TOKEN is None or _RUN_TOKEN[0] != os.getpid():
        return renew_run_token()
    return _RUN_TOKEN[1]


def renew_run_token() -> str:
    """A new token for the next run of this process: ``mlxhydra.run()`` twice in one second
    must name two run directories."""
    global _RUN_TOKEN
    _RUN_TOKEN = (os.getpid(), f"{os.getpid():x}{secrets.token_hex(3)}")
    return _RUN_TOKEN[1]


def safe_name(text: object) -> str:
    """Make an override string usable as one directory name.

    Path separators and other unsafe characters become ``_`` so that
    ``model=./a`` stays one folder; long names are cut to MAX_NAME characters.
    """
    name = _UNSAFE.sub("_", str(text)).strip("._") or "default"
    return name[:MAX_NAME]


def question_marks() -> str:
    """``???``: how a config.json string ``"???"`` stays a string, not a missing value."""
    return "???"


def data_file(name: str) -> str:
    """The path of a data file shipped in the package (``mlxhydra/data/NAME``)."""
    from importlib import resources

    return str(resources.files("mlxhydra") / "data" / str(name))


def register_resolvers() -> None:
    """Register mlxhydra's resolvers (token, safe, question_marks, data) once per process."""
    if not OmegaConf.has_resolver("mlxhydra_question_marks"):
        OmegaConf.register_new_resolver("mlxhydra_question_marks", question_marks)
    if not OmegaConf.has_resolver("mlxhydra_token"):
        # use_cache: the value is kept in the config, and Hydra copies that
        # cache to each sweep job, so launchers that run jobs in other
        # processes (joblib, submitit, ray) put them in the parent's sweep dir.
        OmegaConf.register_new_resolver("mlxhydra_token", run_token, use_cache=True)
    if not OmegaConf.has_resolver("mlxhydra_safe"):
        OmegaConf.register_new_resolver("mlxhydra_safe", safe_name)
    if not OmegaConf.has_resolver("mlxhydra_data"):
        OmegaConf.register_new_resolver("mlxhydra_data", data_file)
