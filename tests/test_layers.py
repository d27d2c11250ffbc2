"""The package's layers: every import points down, no cycle, no module past 350 lines.

Read from the code itself (AST), imports inside functions included: a
function-local import is still an edge. docs/architecture.md explains the
layers; this test is their definition.
"""

import ast
from pathlib import Path
from typing import Dict, List, Set

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "mlxhydra"

# Lowest first. A module may import its own layer's modules and those below, never above.
LAYERS: List[List[str]] = [
    ["mlxhydra.errors"],
    ["mlxhydra._upstream", "mlxhydra.file_checks", "mlxhydra.stats", "mlxhydra.progress",
     "mlxhydra.stopping",
     "mlxhydra.data", "mlxhydra.models", "mlxhydra.lm_eval_tasks"],
    ["mlxhydra.record"],
    ["mlxhydra.distributed"],
    ["mlxhydra.config"],
    ["mlxhydra.load"],
    ["mlxhydra.tasks"],
    ["mlxhydra.job"],
    ["mlxhydra.history"],
    ["mlxhydra.sweeps"],
    ["mlxhydra.tracking"],
    ["mlxhydra.cli", "mlxhydra.command", "mlxhydra.completion", "mlxhydra.api", "mlxhydra.__main__", "mlxhydra"],
]
MAX_LINES = 350


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def all_modules() -> Dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports_of(name: str, path: Path, modules: Set[str]) -> Set[str]:
    """The project's modules that ``name`` imports anywhere in its file."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]

    def known(target: str) -> str:
        while target and target not in modules:
            target = target.rsplit(".", 1)[0] if "." in target else ""
        return target

    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            targets = [known(f"{source}.{alias.name}") for alias in node.names]
        elif isinstance(node, ast.Import):
            targets = [known(alias.name) for alias in node.names]
        else:
            continue
        found.update(t for t in targets if t.startswith("mlxhydra") and t != name)
    return found


def layer_of(name: str) -> int:
    best, index = "", -1
    for i, members in enumerate(LAYERS):
        for prefix in members:
            inside = name.startswith(prefix + ".") and prefix != "mlxhydra"  # the API: itself only
            if (name == prefix or inside) and len(prefix) > len(best):
                best, index = prefix, i
    return index


def unit_of(name: str) -> str:
    """A module's package (mlxhydra.load) or, at the top, the module itself (mlxhydra.cli)."""
    return ".".join(name.split(".")[:2])


def cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """The strongly connected components with more than one node (Tarjan)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    found: List[List[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


@pytest.fixture(scope="module")
def graph() -> Dict[str, Set[str]]:
    modules = all_modules()
    return {name: imports_of(name, path, set(modules)) for name, path in modules.items()}


def test_every_module_has_a_layer(graph):
    assert [name for name in graph if layer_of(name) < 0] == []


def test_every_import_points_down(graph):
    upward = [f"{name} (layer {layer_of(name)}) imports {target} (layer {layer_of(target)})"
              for name, targets in sorted(graph.items()) for target in sorted(targets)
              if name != "mlxhydra" and layer_of(target) > layer_of(name)]
    assert upward == []


def test_no_import_cycle_between_files(graph):
    assert cycles({n: t - {"mlxhydra"} for n, t in graph.items() if n != "mlxhydra"}) == []


def test_no_import_cycle_between_packages(graph):
    packages: Dict[str, Set[str]] = {}
    for name, targets in graph.items():
        if name == "mlxhydra":  # the public API re-exports from every layer
            continue
        packages.setdefault(unit_of(name), set()).update(
            unit_of(t) for t in targets if t != "mlxhydra" and unit_of(t) != unit_of(name))
    assert cycles(packages) == []


def test_no_module_past_350_lines():
    long = {module_name(p): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_the_checker_sees_what_it_must(tmp_path):
    """A planted upward import, a function-local one and a cycle are all found."""
    assert layer_of("mlxhydra.config.overrides") < layer_of("mlxhydra.load.loader")
    assert layer_of("mlxhydra.cli") == len(LAYERS) - 1
    assert layer_of("mlxhydra.unplaced") == -1  # a new top-level module must be given a layer
    planted = tmp_path / "mlxhydra" / "config"
    planted.mkdir(parents=True)
    source = planted / "planted.py"
    source.write_text("def f():\n    from ..load import loader\n    from . import overrides\n")
    package = source.parent
    name = "mlxhydra.config.planted"
    modules = {"mlxhydra.load.loader", "mlxhydra.load", "mlxhydra.config.overrides", name}
    global ROOT
    saved, ROOT = ROOT, tmp_path
    try:
        assert module_name(source) == name and package.name == "config"
        assert imports_of(name, source, modules) == {"mlxhydra.load.loader", "mlxhydra.config.overrides"}
    finally:
        ROOT = saved
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
