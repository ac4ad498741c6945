"""Print the import graph of a package (default ``tilesegcli``) and its cycles, read with ``ast``.

An edge ``a -> b`` is an ``import`` in ``a`` of module ``b`` of the package; ``from p import n``
counts as an edge to ``p.n`` where that is a module, else to ``p``. Imports under
``if TYPE_CHECKING:`` are skipped (they never run). Function-level (lazy) imports count unless
``--top-level``: they still make two modules depend on each other, only later. A cycle is a strongly
connected component of more than one module (or a module importing itself); one shortest loop
through each is printed.

    $ python scripts/import_graph.py                 # every import
    $ python scripts/import_graph.py --top-level     # only those run at import time
    $ python scripts/import_graph.py --quiet         # only the counts and the cycles
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections import deque
from pathlib import Path


def module_names(root: Path, package: str) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` below ``root / package``."""
    out = {}
    for f in sorted((root / package).rglob("*.py")):
        parts = list(f.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = f
    return out


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.Module, top_level: bool) -> list[ast.Import | ast.ImportFrom]:
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for sub in child.orelse:
                    visit_stmt(sub)
                continue
            if top_level and isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                continue
            visit_stmt(child)

    def visit_stmt(node: ast.AST) -> None:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        else:
            visit(node)

    visit(tree)
    return found


def edges_of(name: str, path: Path, modules: dict[str, Path], top_level: bool) -> set[str]:
    is_pkg = path.name == "__init__.py"
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    out: set[str] = set()
    for node in _imports(tree, top_level):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            base = node.module or ""
            if node.level:
                pkg = name.split(".") if is_pkg else name.split(".")[:-1]
                pkg = pkg[: len(pkg) - (node.level - 1)]
                base = ".".join([*pkg, base] if base else pkg)
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                       for a in node.names]
        for t in targets:
            while t and t not in modules:  # ``import a.b.c`` of a name: the nearest module
                t = t.rpartition(".")[0]
            if t and t != name:
                out.add(t)
    return out


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative; components in discovery order, each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    comps: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            v, it = work[-1]
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    comps.append(sorted(comp))
    return comps


def shortest_loop(graph: dict[str, set[str]], comp: list[str]) -> list[str]:
    """A shortest path from ``comp[0]`` back to itself inside ``comp`` (breadth first)."""
    members, start = set(comp), comp[0]
    prev: dict[str, str] = {}
    queue = deque([start])
    while queue:
        v = queue.popleft()
        for w in sorted(graph[v] & members):
            if w == start:
                path = [v]
                while path[-1] != start:
                    path.append(prev[path[-1]])
                return [*reversed(path), start]
            if w not in prev:
                prev[w] = v
                queue.append(w)
    return [start, start]


def count_loops(graph: dict[str, set[str]], comp: list[str]) -> int:
    """How many elementary loops (no module twice) run inside ``comp``: each counted once, from
    its first module in sorted order."""
    order = {m: i for i, m in enumerate(comp)}
    n = 0
    for start in comp:
        stack = [(start, iter(sorted(graph[start])))]
        on_path = {start}
        while stack:
            v, it = stack[-1]
            for w in it:
                if w == start:
                    n += 1
                elif w in order and order[w] > order[start] and w not in on_path:
                    on_path.add(w)
                    stack.append((w, iter(sorted(graph[w]))))
                    break
            else:
                stack.pop()
                on_path.discard(v)
    return n


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1])
    ap.add_argument("--package", default="tilesegcli")
    ap.add_argument("--top-level", action="store_true", help="only imports run at import time")
    ap.add_argument("--quiet", action="store_true", help="no module and edge lists")
    args = ap.parse_args(argv)
    modules = module_names(args.root, args.package)
    graph = {m: edges_of(m, f, modules, args.top_level) for m, f in modules.items()}
    cycles = [c for c in strongly_connected(graph) if len(c) > 1]
    n_edges = sum(len(v) for v in graph.values())
    if not args.quiet:
        print(f"modules ({len(modules)}):")
        for m in sorted(modules):
            print(f"  {m}")
        print(f"edges ({n_edges}):")
        for m in sorted(graph):
            for t in sorted(graph[m]):
                print(f"  {m} -> {t}")
    loops = [count_loops(graph, c) for c in cycles]
    print(f"cycles ({len(cycles)}):")
    for c, n in zip(cycles, loops, strict=True):
        print(f"  {len(c)} modules, {n} loops; shortest: {' -> '.join(shortest_loop(graph, c))}")
        if len(c) > 2:
            print(f"    all: {', '.join(c)}")
    print(f"summary: {len(modules)} modules, {n_edges} edges, {len(cycles)} cycles "
          f"({sum(loops)} elementary loops)"
          f"{' (top-level imports only)' if args.top_level else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
