"""The import graph of src/ircr: no circles between modules, no import from a lower layer to a
higher one (docs/architecture.md, "Layers"). Parsed with ``ast``, nothing is imported.

Every import counts, also the ones inside functions and ``if TYPE_CHECKING:`` blocks: a lazy
import hides a dependency from Python's import machinery, not from the design.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

# lowest first; a package may import itself and packages of LOWER layers only (two packages
# in one layer are independent of each other). "ircr" is the package's public façade
# (src/ircr/__init__.py: ircr.load_model over engine).
LAYERS: list[set[str]] = [
    {"_version", "errors", "compat", "plugins"},
    {"io", "executor"},
    {"config"},
    {"data"},
    {"models", "postproc", "metrics", "features", "losses"},
    {"ssl"},
    {"inference"},
    {"train"},
    {"engine"},
    {"ircr"},
    {"experiment", "demo"},
    {"cli"},
    {"__main__"},
]
RANK = {name: i for i, layer in enumerate(LAYERS) for name in layer}

# No circle is tolerated (the train config <-> methods one went with issue 10 point 4: the
# method registry sits below the config, the contract above it).
KNOWN_CYCLE: set[str] = set()


def module_name(path: Path, src: Path) -> str:
    parts = list(path.relative_to(src).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def import_graph(src: Path = SRC, package: str = "ircr") -> dict[str, set[str]]:
    """module -> the package's modules it imports (``from pkg import submodule`` resolved)."""
    files = {module_name(p, src): p for p in (src / package).rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in files}
    for mod, path in files.items():
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative import
                    anchor = mod.split(".")[: len(mod.split(".")) - node.level + is_pkg]
                    base = ".".join([*anchor, base] if base else anchor)
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base
                           for a in node.names]
            for t in targets:
                while t and t not in files:  # ircr.x.y.attr -> ircr.x.y
                    t = t.rpartition(".")[0]
                if t and t != mod:
                    graph[mod].add(t)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(comp)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def group(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """``a -> b`` for every import whose target's layer is not below the importer's."""
    bad = []
    for a, targets in graph.items():
        for b in targets:
            ga, gb = group(a), group(b)
            if ga != gb and RANK[gb] >= RANK[ga]:
                bad.append(f"{a} -> {b}")
    return sorted(bad)


def test_every_top_level_module_has_a_layer() -> None:
    groups = {group(m) for m in import_graph()}
    assert groups - set(RANK) == set(), "add the new module to LAYERS (and the docs)"


def test_no_import_runs_up_or_sideways() -> None:
    assert upward_imports(import_graph()) == []


def test_no_circles() -> None:
    found = [c for c in cycles(import_graph()) if not c <= KNOWN_CYCLE]
    assert found == []


@pytest.mark.parametrize("case", ["cycle", "up", "sideways"])
def test_the_checks_catch_a_bad_graph(tmp_path: Path, case: str) -> None:
    """The checker itself: a planted circle or upward import in a copy-sized fake package."""
    pkg = tmp_path / "ircr"
    for sub in ("engine", "train", "models", "losses"):
        (pkg / sub).mkdir(parents=True)
        (pkg / sub / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "engine" / "a.py").write_text("from ircr.train import b\n")
    (pkg / "train" / "b.py").write_text("import ircr.models.c\n")
    (pkg / "models" / "c.py").write_text("x = 1\n")
    graph = import_graph(tmp_path)
    assert graph["ircr.engine.a"] == {"ircr.train.b"} and cycles(graph) == []
    assert upward_imports(graph) == []
    if case == "cycle":
        (pkg / "train" / "d.py").write_text("def f():\n    from ircr.train.b import y\n")
        (pkg / "train" / "b.py").write_text("from . import d\n")
        assert cycles(import_graph(tmp_path)) == [{"ircr.train.b", "ircr.train.d"}]
    elif case == "up":
        (pkg / "models" / "c.py").write_text("from ircr.engine.a import z\n")
        assert upward_imports(import_graph(tmp_path)) == ["ircr.models.c -> ircr.engine.a"]
    else:
        (pkg / "models" / "c.py").write_text("from ircr.losses import w\n")
        assert upward_imports(import_graph(tmp_path)) == ["ircr.models.c -> ircr.losses"]
