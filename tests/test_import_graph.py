"""No import cycle among the project's own modules: ``common``, ``tools`` and every bundle's ``scripts`` package.

Every import counts, wherever it is written: at module level, inside a function or under ``TYPE_CHECKING``. A
function-level import hides a cycle from Python at import time, not from the design; shared types belong in a module
that both sides import one way. The sources are parsed with :mod:`ast`, nothing is imported.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("common/**/*.py", "tools/**/*.py", "bundles/*/scripts/**/*.py")

Graph = dict[str, dict[str, str]]
"""Module name -> {imported project module: ``path:line`` of the first such import}."""

KNOWN_CYCLE_IMPORTS: dict[tuple[str, str], str] = {}
"""Imports left out of the check because they close a cycle that is still to be removed (each entry says why)."""


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _bundle_package(name: str) -> str | None:
    """``bundles.<bundle>.scripts`` for a module of a bundle (its configs import it as ``scripts``), else ``None``."""
    parts = name.split(".")
    return ".".join(parts[:3]) if len(parts) >= 3 and parts[0] == "bundles" and parts[2] == "scripts" else None


def _imported(node: ast.Import | ast.ImportFrom, name: str, is_package: bool, modules: set[str]) -> list[str]:
    """The project modules one import statement of module ``name`` loads (the deepest one per imported name)."""
    if isinstance(node, ast.Import):
        targets = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:
            package = (name if is_package else name.rpartition(".")[0]).split(".")
            base = ".".join([*package[: len(package) - node.level + 1], *([base] if base else [])])
        targets = [f"{base}.{alias.name}" for alias in node.names]  # ``from a import b``: module a.b, or a
    bundle = _bundle_package(name)
    found = []
    for target in targets:
        if bundle and (target == "scripts" or target.startswith("scripts.")):
            target = bundle + target.removeprefix("scripts")
        while target and target not in modules:  # ``import a.b.c`` where only ``a.b`` is ours
            target = target.rpartition(".")[0]
        if target:
            found.append(target)
    return found


def import_graph(root: Path, patterns: tuple[str, ...] = PACKAGES) -> Graph:
    """Every import between the modules matched by ``patterns`` under ``root``, at any depth of the source."""
    files = {
        _module_name(path, root): path
        for pattern in patterns
        for path in sorted(root.glob(pattern))
        if "__pycache__" not in path.parts
    }
    modules = set(files)
    graph: Graph = {}
    for name, path in files.items():
        edges = graph.setdefault(name, {})
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import | ast.ImportFrom):
                for target in _imported(node, name, path.name == "__init__.py", modules):
                    if target != name:
                        edges.setdefault(target, f"{path.relative_to(root).as_posix()}:{node.lineno}")
    return graph


def find_cycle(graph: Graph) -> list[str] | None:
    """One import cycle as ``[a, b, ..., a]``, or ``None`` (depth-first search)."""
    state: dict[str, str] = {}  # "open" while on the search path, then "done"
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = "open"
        path.append(module)
        for target in sorted(graph.get(module, {})):
            if state.get(target) == "open":
                return [*path[path.index(target) :], target]
            if target not in state and (cycle := visit(target)):
                return cycle
        state[module] = "done"
        path.pop()
        return None

    for module in sorted(graph):
        if module not in state and (cycle := visit(module)):
            return cycle
    return None


def describe(cycle: list[str], graph: Graph) -> str:
    """``a -> b -> a`` with the line of each import."""
    steps = [f"{a} -> {b} ({graph[a][b]})" for a, b in zip(cycle, cycle[1:], strict=False)]
    return "import cycle: " + "; ".join(steps)


def _reaches(graph: Graph, start: str, goal: str) -> bool:
    """Whether ``goal`` is imported from ``start``, directly or through other modules."""
    seen, todo = {start}, [start]
    while todo:
        for target in graph.get(todo.pop(), {}):
            if target == goal:
                return True
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return False


def test_project_has_no_import_cycle() -> None:
    graph = import_graph(ROOT)
    assert {"common.evaluation", "tools.compare.runner", "bundles.ms_nf.scripts.network"} <= set(graph)
    for source, target in KNOWN_CYCLE_IMPORTS:
        assert _reaches(graph, target, source), f"{source} -> {target} closes no cycle: drop it from the known ones"
        graph[source].pop(target)
    cycle = find_cycle(graph)
    assert cycle is None, describe(cycle, graph)


LAYERS: dict[str, tuple[str, ...]] = {
    "common": ("tools", "bundles"),
    "bundles": ("tools",),
    "tools": ("tools.lab",),
}
"""Module prefix -> the project packages its modules never import: the library stands alone, a bundle's scripts use
only the library, and the product commands (which the wheel ships) never reach the development tooling in
``tools.lab``, which the wheel leaves out. ``tools.lab`` itself may import anything."""


def _layer(module: str) -> str | None:
    if module == "tools.lab" or module.startswith("tools.lab."):
        return None
    return next((layer for layer in LAYERS if module == layer or module.startswith(layer + ".")), None)


def layering_violations(graph: Graph) -> list[str]:
    """``a -> b (path:line)`` for each import that crosses a layer the wrong way (:data:`LAYERS`)."""
    found = []
    for source, targets in sorted(graph.items()):
        layer = _layer(source)
        for target, where in sorted(targets.items()):
            forbidden = LAYERS.get(layer, ()) if layer else ()
            if any(target == f or target.startswith(f + ".") for f in forbidden):
                found.append(f"{source} -> {target} ({where})")
    return found


def test_layers_are_kept():
    graph = import_graph(ROOT)
    assert {"tools.cli", "tools.lab.forked_runs", "tools.lab.holdout_subjects"} <= set(graph)
    assert layering_violations(graph) == []


def test_a_product_command_importing_the_lab_is_a_violation():
    graph = {"tools.demo": {"tools.lab.forked_runs": "tools/demo.py:3"}, "tools.lab.x": {"tools.demo": "y:1"}}
    assert layering_violations(graph) == ["tools.demo -> tools.lab.forked_runs (tools/demo.py:3)"]


def test_cycles_through_function_level_and_type_checking_imports_are_found(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("from . import a\n")
    (package / "a.py").write_text("def f():\n    from pkg.sub import b\n")
    (package / "sub" / "__init__.py").write_text("")
    (package / "sub" / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..a import f\nimport pkg.sub\n"
    )
    graph = import_graph(tmp_path, ("pkg/**/*.py",))
    assert graph["pkg"] == {"pkg.a": "pkg/__init__.py:1"}
    assert graph["pkg.sub.b"] == {"pkg.a": "pkg/sub/b.py:3", "pkg.sub": "pkg/sub/b.py:4"}
    cycle = find_cycle(graph)
    assert cycle == ["pkg.a", "pkg.sub.b", "pkg.a"]
    message = describe(cycle, graph)
    assert message == "import cycle: pkg.a -> pkg.sub.b (pkg/a.py:2); pkg.sub.b -> pkg.a (pkg/sub/b.py:3)"
    (package / "sub" / "b.py").write_text("import pkg.sub\n")
    assert find_cycle(import_graph(tmp_path, ("pkg/**/*.py",))) is None


def test_bundle_scripts_resolve_within_their_bundle(tmp_path: Path) -> None:
    for bundle in ("one", "two"):
        scripts = tmp_path / "bundles" / bundle / "scripts"
        scripts.mkdir(parents=True)
        (scripts / "__init__.py").write_text("from . import network\n")
        (scripts / "network.py").write_text("from scripts.loss import x\nfrom common.io import y\n")
        (scripts / "loss.py").write_text("")
    (tmp_path / "common").mkdir()
    (tmp_path / "common" / "io.py").write_text("")
    graph = import_graph(tmp_path, ("common/**/*.py", "bundles/*/scripts/**/*.py"))
    assert set(graph["bundles.two.scripts.network"]) == {"bundles.two.scripts.loss", "common.io"}
    assert set(graph["bundles.two.scripts"]) == {"bundles.two.scripts.network"}
