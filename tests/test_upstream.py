"""mlx-lm's and Hydra's private names: all importable, and imported only in mlxhydra/_upstream.py."""

import ast
import re
from pathlib import Path

import pytest

import mlxhydra
from mlxhydra import _upstream
from mlxhydra.errors import UpstreamError

PACKAGE = Path(mlxhydra.__file__).resolve().parent
UPSTREAM_FILE = PACKAGE / "_upstream.py"
UPSTREAM_PACKAGES = ("mlx_lm", "hydra")
# Public-looking names that are nonetheless internals mlxhydra must reach through _upstream.
PRIVATE_NAMES = {"MODEL_REMAPPING", "infer_quant_config"} | {
    attribute.split(".")[0] for _, _, attribute in _upstream.NAMES.values()
}
# Text that must not appear in any other module (code or not).
PRIVATE_TEXT = [
    re.compile(r"\bmlx_lm(\.\w+)*\._[A-Za-z]"),  # mlx_lm.utils._get_classes
    re.compile(r"\bhydra\._internal\b"),
    re.compile(r"\b_eos_token_ids\b"),
]


def modules():
    files = sorted(p for p in PACKAGE.rglob("*.py") if p != UPSTREAM_FILE)
    assert len(files) > 40 and PACKAGE / "load" / "architecture.py" in files
    return files


def upstream_module(name):
    return name.split(".")[0] in UPSTREAM_PACKAGES


def private_imports(path: Path):
    """Imports in one file of a private upstream name or module, as 'line: text'."""
    found = []
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and upstream_module(node.module or ""):
            private_module = any(part.startswith("_") for part in node.module.split("."))
            names = [a.name for a in node.names
                     if a.name.startswith("_") or a.name in PRIVATE_NAMES]
            if private_module or names:
                found.append(f"{node.lineno}: from {node.module} import {', '.join(a.name for a in node.names)}")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if upstream_module(alias.name) and any(p.startswith("_") for p in alias.name.split(".")):
                    found.append(f"{node.lineno}: import {alias.name}")
        elif isinstance(node, ast.ImportFrom) and any(a.name in PRIVATE_NAMES for a in node.names):
            # MODEL_REMAPPING and friends only through mlxhydra._upstream
            source = "." * node.level + (node.module or "")
            if not (source.endswith("_upstream") or source == "mlxhydra._upstream"):
                found.append(f"{node.lineno}: from {source} import {', '.join(a.name for a in node.names)}")
    return found


def private_text(path: Path):
    found = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        for pattern in PRIVATE_TEXT:
            if pattern.search(line):
                found.append(f"{n}: {line.strip()}")
    return found


def _identity(value):
    """What names an upstream object: Hydra's plugin scan executes its plugin modules again
    (BasicSweeper.split_arguments), so a name loaded before a scan is an equal, older object."""
    named = (getattr(value, "__module__", None), getattr(value, "__qualname__", None))
    return named if named != (None, None) else id(value)


def test_every_upstream_name_imports():
    assert _upstream.missing() == []
    for name in _upstream.NAMES:
        assert _identity(getattr(_upstream, name)) == _identity(_upstream.load(name)), name


def test_a_missing_upstream_name_is_named_with_the_supported_range(monkeypatch):
    monkeypatch.setitem(_upstream.NAMES, "nope", ("mlx-lm", "mlx_lm.utils", "_no_such_name"))
    with pytest.raises(UpstreamError) as e:
        _upstream.load("nope")
    message = str(e.value)
    assert message.startswith("mlx-lm ") and "has no mlx_lm.utils._no_such_name" in message
    assert message.endswith(f"mlxhydra supports mlx-lm{_upstream.SUPPORTED['mlx-lm']}")
    assert _upstream.missing() == [message]


def test_no_other_module_uses_a_private_upstream_name():
    problems = {}
    for path in modules():
        found = private_imports(path) + private_text(path)
        if found:
            problems[str(path.relative_to(PACKAGE.parent))] = found
    assert problems == {}


def test_the_check_sees_private_imports(tmp_path):
    """The scanner itself: each form it must catch, and what it must let through."""
    bad = tmp_path / "bad.py"
    bad.write_text(
        "from mlx_lm.utils import _get_classes\n"
        "from mlx_lm.utils import (\n    load_config,\n    MODEL_REMAPPING,\n)\n"
        "from hydra._internal.utils import get_args_parser\n"
        "import hydra._internal.config_loader_impl\n"
        "from mlx_lm.utils import infer_quant_config\n"
        "from somewhere import MODEL_REMAPPING\n"
        "x = mlx_lm.utils._transform_awq_weights\n"
        "tokenizer._eos_token_ids = set()\n"
    )
    assert [f.split(":")[0] for f in private_imports(bad)] == ["1", "2", "6", "7", "8", "9"]
    assert [f.split(":")[0] for f in private_text(bad)] == ["6", "7", "10", "11"]
    good = tmp_path / "good.py"
    good.write_text(
        "from mlx_lm.utils import load_config, save_model\n"
        "from .._upstream import MODEL_REMAPPING, infer_quant_config\n"
        "from mlxhydra._upstream import get_classes\n"
        "from hydra.core.hydra_config import HydraConfig\n"
    )
    assert private_imports(good) == [] and private_text(good) == []
