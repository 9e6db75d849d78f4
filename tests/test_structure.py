"""The layers stay layers: imports in src/accord point down only, without cycles.

    _core                                           neutral: no backend, no share
    backends/                                       each backend: one folder
    share/                                          Share, proxies, Link, aio
    spawn/, work/, cli                              beside share, on the core

Parsed from the source (ast), every import counted -- those inside
functions too, so a deferred import cannot hide a cycle.  What the seam
still lacks is listed in KNOWN_DEBTS, each edge by name: the test fails on
any new edge that breaks a rule, and on a listed edge that is gone (strike it).
"""

from __future__ import annotations

import ast
from pathlib import Path

import accord

SRC = Path(accord.__file__).parent
CORE = ("accord._core",)

KNOWN_DEBTS: set[tuple[str, str]] = set()


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _exists(name: str) -> bool:
    rel = Path(*name.split("."))
    return (SRC.parent / rel).with_suffix(".py").is_file() or (SRC.parent / rel).is_dir()


def _type_checking_lines(tree: ast.Module) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def import_graph() -> dict[str, set[str]]:
    """{module: accord modules it imports} (imports for type checkers only excluded)."""
    graph: dict[str, set[str]] = {}
    for path in SRC.rglob("*.py"):
        name = _module_name(path)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        tree = ast.parse(path.read_text())
        typing_only = _type_checking_lines(tree)
        found: set[str] = set()
        for node in ast.walk(tree):
            if getattr(node, "lineno", None) in typing_only:
                continue
            if isinstance(node, ast.Import):
                found.update(a.name for a in node.names if a.name.startswith("accord"))
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                if not target.startswith("accord"):
                    continue
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    found.add(sub if _exists(sub) else target)
        found.discard(name)
        graph[name] = found
    return graph


def _layer(module: str) -> str:
    if module.startswith(CORE):
        return "core"
    for layer in ("backends", "share", "spawn", "work"):
        if module.startswith(f"accord.{layer}"):
            return layer
    return "top"  # accord, accord.cli, accord._cli_coordinator


def _breaks_a_rule(importer: str, imported: str) -> bool:
    low, high = _layer(importer), _layer(imported)
    if low == "core":
        return high != "core"
    if low == "backends":
        return high not in ("core", "backends")
    if low == "share":
        # a backend only through the registry / protocol modules
        return high not in ("core", "share") and imported not in (
            "accord.backends",
            "accord.backends._protocol",  # the seam
            "accord.backends._registry",  # which backend a backend= value names
            "accord.backends._replies",  # its client-side reply bookkeeping
        )
    if low in ("spawn", "work"):
        return high not in ("core", low)
    return False


def test_layers_import_downwards_only():
    graph = import_graph()
    broken = {(a, b) for a, deps in graph.items() for b in deps if _breaks_a_rule(a, b)}
    assert broken - KNOWN_DEBTS == set(), "imports that break the layering"
    assert KNOWN_DEBTS - broken == set(), "debts paid: strike them from KNOWN_DEBTS"


def test_no_backend_imports_the_share_layer():
    graph = import_graph()
    assert not {
        (a, b)
        for a, deps in graph.items()
        if a.startswith("accord.backends")
        for b in deps
        if b.startswith("accord.share")
    }


def test_no_import_cycles():
    graph = import_graph()
    # Packages' __init__ re-export their modules; an edge into a package is an
    # edge into its __init__ only, which is what Python runs.
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        path.append(module)
        for dep in sorted(graph.get(module, ())):
            if state.get(dep) == 1:
                cycle = path[path.index(dep) :] + [dep]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep)
        path.pop()
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)


def test_the_checker_sees_what_it_must():
    # A rule that cannot fail proves nothing: the parser finds known edges.
    graph = import_graph()
    assert "accord._core._coordinator" in graph["accord.backends.redis._coordinator"]
    assert "accord._core._slots" in graph["accord.share._link"]
    assert _breaks_a_rule("accord.backends.shm._client", "accord.share._link")
    assert _breaks_a_rule("accord._core._coordinator", "accord.backends.shm._server")
