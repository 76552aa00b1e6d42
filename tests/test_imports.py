"""The house by its rooms (issue 18): imports run one way, down the layers the README's map names,

    core (vitdist/*.py) <- data/ <- scale/ <- train/ <- after/ <- checklist/ <- cli

counting imports inside functions too, and no module imports itself back through others. The package's face
(vitdist/__init__.py) may name anything; the two public old paths (vitdist/evaluate.py, vitdist/export.py) stand
with after/, which they re-export."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "vitdist"
LAYERS = ["core", "data", "scale", "train", "after", "checklist", "cli"]
TOP_LEVEL = {"cli": "cli", "__main__": "cli", "evaluate": "after", "export": "after"}  # vitdist/*.py not in the core


def module_name(path: Path, package: Path = PACKAGE) -> str:
    """vitdist/train/run.py -> 'train.run'; vitdist/data/__init__.py -> 'data'."""
    parts = list(path.relative_to(package).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts) or "__init__"


def layer(module: str) -> str:
    head = module.split(".")[0]
    if head in LAYERS:
        return head
    return TOP_LEVEL.get(head, "core")


def imports(package: Path = PACKAGE) -> dict[str, set[str]]:
    """module -> the package's modules it imports (relative or absolute, at module level or inside a function)."""
    modules = {module_name(p, package): p for p in package.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        here = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = here[:len(here) - (node.level - 1)]
                if node.module:
                    found.add(".".join(base + node.module.split(".")))
                else:
                    found |= {".".join(base + [a.name]) for a in node.names}
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("vitdist."):
                found.add(node.module.removeprefix("vitdist."))
            elif isinstance(node, ast.Import):
                found |= {a.name.removeprefix("vitdist.") for a in node.names if a.name.startswith("vitdist.")}
        graph[name] = {m for m in found if m in modules and m != name}
    return graph


def upward(graph: dict[str, set[str]]) -> list[str]:
    """Every import of a module from a higher layer (the face excepted)."""
    return [f"{m} ({layer(m)}) imports {d} ({layer(d)})" for m, deps in sorted(graph.items()) if m != "__init__"
            for d in sorted(deps) if LAYERS.index(layer(d)) > LAYERS.index(layer(m))]


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


def test_every_import_runs_down_the_layers():
    graph = imports()
    assert {"train.run", "train.step", "data.sources", "checklist.tune", "after.load", "config"} <= set(graph)
    assert not upward(graph), upward(graph)


def test_no_module_imports_itself_back():
    graph = imports()
    cycles = [" -> ".join(c) for m in sorted(graph) if m != "__init__" and (c := cycle_through(graph, m))]
    assert not cycles, cycles


def test_each_room_says_what_lives_there_and_what_it_may_import():
    for folder in ("data", "scale", "train", "after", "checklist"):
        doc = ast.get_docstring(ast.parse((PACKAGE / folder / "__init__.py").read_text()))
        assert doc and "Imports" in doc, folder


def test_the_checks_find_what_they_look_for(tmp_path):
    """An upward import and a cycle, planted in a copy of the layout, are found."""
    for path in ("data/__init__.py", "data/sources.py", "train/__init__.py", "train/run.py", "config.py"):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / "data" / "__init__.py").write_text("")
    (tmp_path / "train" / "__init__.py").write_text("")
    (tmp_path / "config.py").write_text("")
    (tmp_path / "train" / "run.py").write_text("from ..data.sources import x\nfrom ..config import y\n")
    (tmp_path / "data" / "sources.py").write_text("def f():\n    from ..train.run import train\n")
    graph = imports(tmp_path)
    assert graph["data.sources"] == {"train.run"} and graph["train.run"] == {"data.sources", "config"}
    assert upward(graph) == ["data.sources (data) imports train.run (train)"]
    assert cycle_through(graph, "train.run") == ["train.run", "data.sources", "train.run"]


MAX_FUNCTION_LINES = 100  # "no function in the package passes about 100 lines" (issue 18)
MAX_MODULE_LINES = 400  # ... "no module passes about 400 lines unless it holds one idea (say which in its docstring)"


def long_functions(package: Path = PACKAGE) -> list[str]:
    return [f"{module_name(p, package)}.{node.name}: {node.end_lineno - node.lineno + 1} lines"
            for p in sorted(package.rglob("*.py")) for node in ast.walk(ast.parse(p.read_text()))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]


def long_modules(package: Path = PACKAGE) -> list[str]:
    return [f"{module_name(p, package)}: {len(text.splitlines())} lines" for p in sorted(package.rglob("*.py"))
            if len((text := p.read_text()).splitlines()) > MAX_MODULE_LINES
            and "One idea" not in (ast.get_docstring(ast.parse(text)) or "")]


def test_rooms_stay_small_and_train_reads_on_one_screen():
    assert not long_functions(), long_functions()
    assert not long_modules(), long_modules()
    tree = ast.parse((PACKAGE / "train" / "run.py").read_text())
    train = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "train")
    assert train.end_lineno - train.lineno + 1 <= 60  # its phases, one call each


def test_the_size_checks_find_what_they_look_for(tmp_path):
    body = "".join(f"    x{i} = {i}\n" for i in range(MAX_FUNCTION_LINES))
    (tmp_path / "big.py").write_text(f'"""A module."""\n\n\ndef f():\n{body}' + "\n" * MAX_MODULE_LINES)
    (tmp_path / "whole.py").write_text('"""One idea: kept whole."""\n' + "\n" * MAX_MODULE_LINES)
    assert long_functions(tmp_path) == [f"big.f: {MAX_FUNCTION_LINES + 1} lines"]
    assert long_modules(tmp_path) == [f"big: {MAX_MODULE_LINES + MAX_FUNCTION_LINES + 4} lines"]
