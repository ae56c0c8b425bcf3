"""The architecture of kl_utils, checked: its layers (kl_utils.LAYERS, lowest first: core, data, ...)
import only from themselves and the layers below, and no module imports itself back through others.

The graph is read from the source with `ast` (nothing is imported): every import of a kl_utils
module, at module level or inside a function (an import deferred for torch is still an edge), and
every string that names a kl_utils module exactly (what importlib would load). The top level
(kl_utils/__init__.py, cli.py, __main__.py) is above every layer.
"""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "kl_utils"
TOP_MODULES = {"kl_utils", "kl_utils.cli", "kl_utils.__main__"}


class Edge(tuple):
    """(importer, imported, line, in a function or not)."""
    def __new__(cls, src: str, dst: str, line: int, deferred: bool):
        return super().__new__(cls, (src, dst, line, deferred))

    def __str__(self):
        src, dst, line, deferred = self
        return f"{src} -> {dst} (line {line}{', inside a function' if deferred else ''})"


def declared_layers(package: Path = PACKAGE) -> tuple[str, ...]:
    """LAYERS of kl_utils/__init__.py, read without importing it."""
    for node in ast.parse((package / "__init__.py").read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "LAYERS" for t in node.targets):
            return tuple(ast.literal_eval(node.value))
    raise AssertionError("kl_utils/__init__.py declares no LAYERS")


def modules(package: Path = PACKAGE) -> dict[str, Path]:
    """Dotted name -> file of every module of the package (a package is its __init__.py)."""
    out = {}
    for path in sorted(package.rglob("*.py")):
        parts = [package.name, *path.relative_to(package).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _deferred_lines(tree: ast.AST) -> set[int]:
    """Line numbers of the statements inside function bodies."""
    lines = set()
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            for node in ast.walk(fn):
                if hasattr(node, "lineno") and node is not fn:
                    lines.add(node.lineno)
    return lines


def edges_of(name: str, path: Path, known: dict[str, Path]) -> list[Edge]:
    """The kl_utils modules `name` imports (or names in a string), each with its line."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    deferred = _deferred_lines(tree)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    root = next(iter(known)).split(".")[0] if known else "kl_utils"
    found = []
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from . import x, from ..core import y
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in known and "." in node.value:
            targets = [node.value]  # importlib.import_module("kl_utils....") and the like
        for target in targets:
            if target.split(".")[0] != root:
                continue
            while target not in known and "." in target:  # import kl_utils.a.b.attr -> the module
                target = target.rpartition(".")[0]
            if target != name:
                found.append(Edge(name, target, node.lineno, node.lineno in deferred))
    return found


def import_graph(package: Path = PACKAGE) -> list[Edge]:
    known = modules(package)
    return [e for name, path in known.items() for e in edges_of(name, path, known)]


def layer_index(module: str, layers: tuple[str, ...], top: set[str] = TOP_MODULES) -> int:
    """The position of a module's layer in `layers`; the top level is above them all."""
    if module in top:
        return len(layers)
    parts = module.split(".")
    if len(parts) < 2 or parts[1] not in layers:
        raise KeyError(module)
    return layers.index(parts[1])


def _graph(edges) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for src, dst, *_ in edges:
        graph.setdefault(src, set()).add(dst)
        graph.setdefault(dst, set())
    return graph


def cyclic_groups(edges) -> list[set[str]]:
    """The strongly connected groups of modules that hold a cycle (Tarjan's algorithm)."""
    graph = _graph(edges)
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def visit(v):  # the graph is small: recursion is fine
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = set()
            while not group or v not in group:
                w = stack.pop()
                on_stack.discard(w)
                group.add(w)
            if len(group) > 1 or v in graph[v]:
                groups.append(group)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return groups


def shortest_cycle(edges, group: set[str]) -> list[str]:
    """A shortest cycle through the group's first module (it repeated at the end)."""
    graph, start = _graph(edges), min(group)
    paths, frontier = {start: [start]}, [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & group):
                if w == start:
                    return paths[v] + [start]
                if w not in paths:
                    paths[w] = paths[v] + [w]
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"no cycle in {group}")


def import_cycles(edges) -> list[str]:
    """One line per group of modules that import each other: a cycle, and the whole group when it
    is larger than that cycle."""
    out = []
    for group in cyclic_groups(edges):
        cycle = shortest_cycle(edges, group)
        more = f" (one cycle among {len(group)} modules: {', '.join(sorted(group))})" if len(group) >= len(cycle) else ""
        out.append(f"import cycle: {' -> '.join(cycle)}{more}")
    return out


def problems(edges, layers: tuple[str, ...], top: set[str] = TOP_MODULES) -> list[str]:
    """Readable lines: each import cycle, each import of a higher layer, each module in no layer."""
    out = import_cycles(edges)
    names = {m for e in edges for m in e[:2]}
    for m in sorted(names):
        try:
            layer_index(m, layers, top)
        except KeyError:
            out.append(f"{m} is in no layer of kl_utils.LAYERS {layers} (put it in one of their folders)")
    for e in edges:
        try:
            src, dst = layer_index(e[0], layers, top), layer_index(e[1], layers, top)
        except KeyError:
            continue
        if dst > src:
            out.append(f"upward import: {e}: layer {layers[src]} may not import layer "
                       f"{layers[dst] if dst < len(layers) else 'top (kl_utils, cli)'}")
    return out


def test_kl_utils_has_no_cycle_and_no_upward_import():
    found = problems(import_graph(), declared_layers())
    assert not found, "the import graph of kl_utils breaks its layers:\n  " + "\n  ".join(found)


def test_every_module_is_in_a_declared_layer_folder():
    layers = declared_layers()
    folders = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    assert folders == set(layers), f"subpackages {sorted(folders)} != kl_utils.LAYERS {sorted(layers)}"
    for name in modules():
        assert name in TOP_MODULES or layer_index(name, layers) >= 0
    doc = ast.get_docstring(ast.parse((PACKAGE / "__init__.py").read_text()))
    assert all(f"{layer}/" in doc for layer in layers), "kl_utils/__init__.py's docstring maps every layer"


def test_the_graph_is_read_and_deferred_imports_count():
    edges = import_graph()
    assert len(edges) > 100
    deferred = [e for e in edges if e[3]]
    assert deferred, "imports inside functions are edges too"
    assert any(e[0] == "kl_utils.cli" and e[1] == "kl_utils.protocol.run" for e in edges)  # VERBS strings


def test_the_checker_fails_on_a_cycle_and_on_an_upward_import(tmp_path):
    """A tiny package with the two faults: core.a -> data.b -> core.a (a cycle, and core importing
    data), and a module outside every layer."""
    pkg = tmp_path / "toy"
    for folder in ("core", "data"):
        (pkg / folder).mkdir(parents=True)
        (pkg / folder / "__init__.py").write_text('"""A layer."""\n')
    (pkg / "__init__.py").write_text('"""core/ data/"""\nLAYERS = ("core", "data")\n')
    (pkg / "core" / "a.py").write_text("def f():\n    from toy.data import b\n")
    (pkg / "core" / "ok.py").write_text("import os\n")
    (pkg / "data" / "b.py").write_text("from toy.core import a, ok\n")
    (pkg / "stray.py").write_text("from .core import ok\n")
    edges = import_graph(pkg)
    assert set(edges) >= {("toy.core.a", "toy.data.b", 2, True), ("toy.data.b", "toy.core.a", 1, False),
                          ("toy.data.b", "toy.core.ok", 1, False), ("toy.stray", "toy.core.ok", 1, False)}
    found = problems(edges, declared_layers(pkg), top={"toy"})
    assert "import cycle: toy.core.a -> toy.data.b -> toy.core.a" in found
    assert any(p.startswith("upward import: toy.core.a -> toy.data.b (line 2, inside a function)") for p in found)
    assert any(p.startswith("toy.stray is in no layer") for p in found)
    assert len(found) == 3
    # and without the faults, nothing is found
    (pkg / "core" / "a.py").write_text("import os\n")
    (pkg / "stray.py").unlink()
    assert problems(import_graph(pkg), ("core", "data"), top={"toy"}) == []
