"""The package layout's rules, read from the source (every import, deferred ones included).

- no import cycle between modules of the project's packages (imports under
  ``if TYPE_CHECKING:`` are for annotations only and are not counted);
- nothing imports the command line (``amagi_plugin.cli``) but its own modules and the
  ``python -m amagi_plugin`` entry point;
- the lower layers (``dicom_io``, ``models``, ``db``) never import the plugin layer;
- ``dicom_io`` never imports ``db`` (``db`` stores the result types ``dicom_io`` owns).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("amagi_plugin", "dicom_io", "models", "db")


def _modules() -> dict[str, Path]:
    mods = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            rel = path.relative_to(ROOT)
            if "versions" in rel.parts:  # Alembic revisions are loaded by Alembic, not imported
                continue
            parts = rel.with_suffix("").parts
            mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return mods


def _graph() -> dict[str, set[str]]:
    mods = _modules()

    def owner(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        tree = ast.parse(path.read_text(), str(path))
        annotation_only = {id(node) for block in ast.walk(tree) if isinstance(block, ast.If)
                           and "TYPE_CHECKING" in ast.unparse(block.test)
                           for stmt in block.body for node in ast.walk(stmt)}
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(tree):
            if id(node) in annotation_only:
                continue
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                targets = [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            for target in targets:
                found = owner(target)
                if found and found != mod:
                    graph[mod].add(found)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return _graph()


def test_the_checker_sees_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles(graph) -> None:
    assert len(graph) > 50 and graph["db.store"] >= {"db.engine", "db.migrate"}
    assert _cycles(graph) == []


def test_only_the_entry_point_imports_the_command_line(graph) -> None:
    importers = sorted(m for m, targets in graph.items() if not m.startswith("amagi_plugin.cli")
                       and any(t.startswith("amagi_plugin.cli") for t in targets))
    assert importers == ["amagi_plugin.__main__"]


def test_dicom_io_never_imports_the_database(graph) -> None:
    """``db`` stores the result types ``dicom_io.results`` owns; never the other way round."""
    assert graph["db.records"] >= {"dicom_io.results"}
    assert sorted((m, t) for m, targets in graph.items() if m.split(".")[0] == "dicom_io"
                  for t in targets if t.split(".")[0] == "db") == []


def test_lower_layers_never_import_the_plugin_layer(graph) -> None:
    upward = sorted((m, t) for m, targets in graph.items()
                    if m.split(".")[0] in ("dicom_io", "models", "db")
                    for t in targets if t.split(".")[0] == "amagi_plugin")
    assert upward == []
