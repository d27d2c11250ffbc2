"""lm-eval task YAMLs that run code: refused unless this command sets ``load.trust_remote_code=true``.

A task YAML's ``!function NAME`` (``process_docs``, metrics, filters, a custom
dataset, a task class) makes lm-eval import Python when it builds the task: a
``.py`` file next to the YAML first, else any importable module. So the YAMLs
of ``task.include_path`` and the YAML files named in ``task.tasks`` are code,
like a model directory's ``model_file``, and take the same consent. That is
lm-eval's own split: its ``--trust_remote_code`` is for code that comes with
what you point it at (datasets, models), while ``confirm_run_unsafe_code`` is
for running the code a model writes (``task.confirm_run_unsafe_code``).

Every such YAML, and each file it ``include:``s, is read with a safe loader that
records the tags instead of importing anything; this runs in the validate stage,
before lm-eval indexes the files and before any weight is read. The task files
shipped in :mod:`mlxhydra.lm_eval_tasks` (whose ``!function`` names
:func:`mlxhydra.lm_eval_tasks.load_tiny_sums`) and lm-eval's own are part of the
installed packages, trusted as their code is; a YAML that includes them is not.
"""

import importlib.util
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

from ..file_checks import regular_file_problem
from ..lm_eval_tasks import TASKS_DIR

YAML_SUFFIXES = (".yaml", ".yml")
IGNORED_DIRS = {"__pycache__", ".ipynb_checkpoints"}  # as lm-eval's index
MAX_FILES = 20_000  # lm-eval's own tasks are some 15,000 YAML files
CONSENT_HINT = "set load.trust_remote_code=true if you trust these task files"


def trusted_roots() -> Tuple[Path, ...]:
    """The installed task directories: mlxhydra's and lm-eval's own."""
    roots = [TASKS_DIR]
    spec = importlib.util.find_spec("lm_eval")
    if spec is not None and spec.origin:
        roots.append(Path(spec.origin).resolve().parent / "tasks")
    return tuple(roots)


def _trusted(path: Path, roots: Sequence[Path]) -> bool:
    return any(path == root or root in path.parents for root in roots)


def _tags(path: Path) -> Tuple[List[str], List[str]]:
    """``(code tags found, files it includes)`` of one YAML file; nothing is imported."""
    import yaml

    found: List[str] = []

    class Recorder(yaml.SafeLoader):
        """Records ``!function`` and Python tags instead of constructing them."""

    def recorder(prefix: str):
        def record(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> None:
            value = node.value if isinstance(node, yaml.ScalarNode) else "..."
            found.append(f"{prefix}{suffix} {value}")
        return record

    Recorder.add_multi_constructor("!", recorder("!"))
    Recorder.add_multi_constructor("tag:yaml.org,2002:python/", recorder("!!python/"))
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.load(f, Loader=Recorder)  # noqa: S506 (a safe loader that records tags)
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return found, []  # lm-eval cannot load it either, and says so
    includes = data.get("include") if isinstance(data, dict) else None
    includes = includes if isinstance(includes, list) else [includes] if includes else []
    return found, [str(i) for i in includes if isinstance(i, str)]


def _yaml_files(directory: Path) -> Iterator[Path]:
    for suffix in YAML_SUFFIXES:
        for path in directory.glob(f"**/*{suffix}"):
            if not any(part in IGNORED_DIRS for part in path.parts):
                yield path


def code_in(files: Sequence[Path], roots: Sequence[Path]) -> Dict[Path, List[str]]:
    """Each file (of ``files`` and what they include) whose YAML names code, with the tags."""
    found: Dict[Path, List[str]] = {}
    seen = set()
    todo = [Path(f).expanduser().absolute() for f in files]
    while todo and len(seen) < MAX_FILES:
        path = todo.pop(0)
        key = path.resolve()
        if key in seen or _trusted(key, roots) or regular_file_problem(path):
            continue
        seen.add(key)
        tags, includes = _tags(path)
        if tags:
            found[path] = tags
        todo += [Path(i).expanduser() if Path(i).expanduser().is_absolute() else path.parent / i
                 for i in includes]
    return found


def code_problems(specs: Optional[Sequence[str]], paths: Optional[Sequence[Path]],
                  trust_remote_code: bool) -> List[str]:
    """One problem per task file that names code, unless this command consents.

    Args:
        specs: ``task.tasks`` as names or YAML files (None when malformed).
        paths: ``task.include_path`` as absolute directories (None when malformed).
    """
    if trust_remote_code:
        return []
    roots = trusted_roots()
    problems, named = [], set()
    for key, files in (("task.tasks", [Path(s).expanduser() for s in specs or []
                                       if s.endswith(YAML_SUFFIXES)]),
                       ("task.include_path", [f for d in paths or [] if d.is_dir()
                                              for f in _yaml_files(d)])):
        if len(files) > MAX_FILES:
            problems.append(f"{key}: more than {MAX_FILES} YAML files to check for code; "
                            f"name fewer, or {CONSENT_HINT}")
            continue
        for path, tags in code_in(files, roots).items():
            if path in named:
                continue
            named.add(path)
            problems.append(f"{key}: {path} runs code ({', '.join(tags)}): refused; {CONSENT_HINT}")
    return problems
