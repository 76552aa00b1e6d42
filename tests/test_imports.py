"""The package has no import cycles, counting imports inside functions too: each module's place in the house
(DESIGN.md) is one-way. One module reads run folders (runs.py); one runs trials (trials.py)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "vitdist"


def imports() -> dict[str, set[str]]:
    """module -> the package modules it imports (`from .x import ...`, `from . import x`, `import vitdist.x`)."""
    modules = {p.stem for p in PACKAGE.glob("*.py")}
    graph = {}
    for path in PACKAGE.glob("*.py"):
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                found |= {node.module.split(".")[0]} if node.module else {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("vitdist."):
                found.add(node.module.split(".")[1])
            elif isinstance(node, ast.Import):
                found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("vitdist.")}
        graph[path.stem] = (found & modules) - {path.stem}
    return graph


def cycle_through(graph: dict[str, set[str]], start: str) -> list[str] | None:
    """A path start -> ... -> start, or None."""
    stack, seen = [(start, [start])], set()
    while stack:
        node, path = stack.pop()
        for nxt in sorted(graph.get(node, ())):
            if nxt == start:
                return path + [start]
            if nxt not in seen:
                seen.add(nxt)
                stack.append((nxt, path + [nxt]))
    return None


def test_no_module_imports_itself_back():
    graph = imports()
    assert {"runs", "trials", "train", "diagnose", "plots"} <= set(graph)
    cycles = [" -> ".join(c) for m in sorted(graph) if (c := cycle_through(graph, m))]
    assert not cycles, cycles


def test_the_cycle_finder_finds_one():
    assert cycle_through({"a": {"b"}, "b": {"c"}, "c": {"a"}}, "a") == ["a", "b", "c", "a"]
    assert cycle_through({"a": {"b"}, "b": set()}, "a") is None
