"""The import graph of `ichdet` (docs/architecture.md): every module imports only from its own
package or from packages in lower layers, and no chain of imports (at module level or inside a
function) leads back to where it started."""
from __future__ import annotations

import ast
from pathlib import Path

import ichdet

SRC = Path(ichdet.__file__).resolve().parent
# lowest first; a package may import from its own and from lower ranks only
LAYERS = {
    "__init__": 0, "errors": 0,  # `ichdet` itself: __version__, and the public API resolved lazily by name
    "fileio": 1, "metrics": 1, "workers": 1,
    "io": 2, "preprocess": 3, "datasets": 4, "synth": 5, "models": 5, "measure": 5, "engine": 6, "report": 7, "evaluation": 8,
    "inference": 9, "server": 10, "demo": 11, "cli": 12,
}


def _modules() -> dict[str, Path]:
    out = {}
    for path in SRC.rglob("*.py"):
        parts = path.relative_to(SRC.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _imports(modules: dict[str, Path]) -> dict[str, set[str]]:
    """{module: the ichdet modules it imports anywhere in its file}."""
    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "ichdet":
                found |= {resolve(f"{node.module}.{a.name}") or resolve(node.module) for a in node.names}
            elif isinstance(node, ast.Import):
                found |= {resolve(a.name) for a in node.names if a.name.split(".")[0] == "ichdet"}
        graph[name] = {m for m in found if m and m != name}
    return graph


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_every_package_has_a_layer():
    assert {_package(m) for m in _modules()} == set(LAYERS)


def test_no_module_imports_from_a_higher_layer():
    graph = _imports(_modules())
    upward = sorted(f"{m} -> {t}" for m, targets in graph.items() for t in targets
                    if _package(t) != _package(m) and LAYERS[_package(t)] >= LAYERS[_package(m)])
    assert upward == []


def _loops(graph: dict[str, set[str]]) -> list[str]:
    """Every import chain that returns to a module on it, as "a -> b -> a"."""
    loops, state = [], {}

    def visit(m: str, stack: list[str]) -> None:
        state[m] = "open"
        for t in sorted(graph[m]):
            if state.get(t) == "open":
                loops.append(" -> ".join(stack[stack.index(t):] + [t]))
            elif t not in state:
                visit(t, stack + [t])
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    return loops


def test_loops_are_found():
    assert _loops({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a -> b -> c -> a"]
    assert _loops({"a": {"b"}, "b": set()}) == []


def test_no_import_loops():
    assert _loops(_imports(_modules())) == []


def test_import_ichdet_imports_nothing_else():
    """`ichdet/__init__.py` names its public API lazily, so any module may read `ichdet.__version__`."""
    assert _imports(_modules())["ichdet"] == set()


def test_the_top_level_holds_only_the_cli_the_demo_and_the_public_api():
    assert sorted(p.name for p in SRC.glob("*.py")) == ["__init__.py", "cli.py", "demo.py", "errors.py", "fileio.py",
                                                        "metrics.py", "workers.py"]
