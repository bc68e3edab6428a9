"""The product's import graph, read from the source (AST; imports inside functions included):
no circles, each ``orchestration`` room imports only the rooms below it, the parsing room loads no
framework, the code that runs inside Ray never touches MLflow, ``grounding`` never imports
``orchestration``, and every function-level import says why it is lazy."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("grounding", "search_spaces", "orchestration")
HEAVY = {"ray", "mlflow", "optuna", "torch"}

# orchestration's rooms, lowest first: a module may import its own layer and those below it
LAYERS = [
    ("orchestration.cli",),  # parsing and --help
    ("orchestration.worker",),  # inside Ray processes
    ("orchestration.tracking", "orchestration.search", "orchestration.preflight"),  # MLflow I/O, the search, checks
    ("orchestration.callbacks", "orchestration.shared_stages"),  # the driver's Tune callbacks, shared stages
    ("orchestration.driver", "orchestration.sweep_outputs"),  # the driver both commands share
    ("orchestration.sweep_run", "orchestration.compare_run", "orchestration.evaluate_run"),  # what each command runs
    ("orchestration.sweep", "orchestration.compare", "orchestration.evaluate"),  # entry points
]


def _module(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[str, int, bool, str]]:
    """``(module, line, at module level, the source line)`` of every import in ``path``."""
    name = _module(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    tree = ast.parse(path.read_text(), filename=str(path))
    lines = path.read_text().splitlines()
    top = {id(n) for n in tree.body} | {id(n) for s in tree.body if isinstance(s, (ast.If, ast.Try))
                                         for n in ast.walk(s)}
    out = []
    for node in ast.walk(tree):
        mods: list[str] = []
        if isinstance(node, ast.Import):
            mods = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
            mods = [base] + [f"{base}.{a.name}" for a in node.names]
        out += [(m, node.lineno, id(node) in top, lines[node.lineno - 1]) for m in mods]
    return out


def _graph() -> dict[str, dict[str, list]]:
    """module -> {imported product module -> [(line, top level, source)]}."""
    files = [f for p in PACKAGES for f in sorted((REPO / p).rglob("*.py"))]
    modules = {_module(f): f for f in files}
    graph: dict[str, dict[str, list]] = {}
    for mod, f in modules.items():
        edges: dict[str, list] = {}
        for target, line, top, src in _imports(f):
            while target and target not in modules:  # "pkg.mod.Name" -> "pkg.mod"
                target = target.rpartition(".")[0]
            if target and target != mod and not mod.startswith(target + "."):  # a package's own __init__
                edges.setdefault(target, []).append((line, top, src))
        graph[mod] = edges
    return graph


GRAPH = _graph()


def _layer(mod: str) -> int | None:
    for i, room in enumerate(LAYERS):
        if any(mod == r or mod.startswith(r + ".") for r in room):
            return i
    return None


def test_the_graph_is_the_product():
    assert len(GRAPH) > 80
    assert {"orchestration.driver", "orchestration.worker.trial", "grounding.models.causal"} <= set(GRAPH)
    assert "orchestration.worker.trial" in GRAPH["orchestration.search.tuner"]


def test_no_import_circles():
    state: dict[str, int] = {}
    circles = []

    def visit(m, stack):
        state[m] = 1
        for t in GRAPH.get(m, {}):
            if state.get(t) == 1:
                circles.append(stack[stack.index(t):] + [t])
            elif t not in state:
                visit(t, stack + [t])
        state[m] = 2

    for m in GRAPH:
        if m not in state:
            visit(m, [m])
    assert circles == []


def test_every_orchestration_module_sits_in_a_room():
    loose = [m for m in GRAPH if m.startswith("orchestration.") and _layer(m) is None]
    assert loose == []


def test_no_module_imports_a_room_above_it():
    bad = [f"{m} -> {t}" for m, edges in GRAPH.items() if _layer(m) is not None
           for t in edges if _layer(t) is not None and _layer(t) > _layer(m)]
    assert bad == []


def test_grounding_and_search_spaces_never_import_orchestration():
    bad = [f"{m} -> {t}" for m, edges in GRAPH.items() if not m.startswith("orchestration")
           for t in edges if t.startswith("orchestration")]
    assert bad == []


def _external(prefix: str, top_only: bool) -> list[str]:
    out = []
    for f in sorted((REPO / prefix.replace(".", "/")).rglob("*.py")):
        out += [f"{f.relative_to(REPO)}:{line}: {m}" for m, line, top, _ in _imports(f)
                if (top or not top_only) and m.split(".")[0] in HEAVY]
    return out


def test_parsing_imports_no_framework_at_module_level():
    assert _external("orchestration.cli", top_only=True) == []


def test_code_inside_ray_never_touches_mlflow_or_the_driver():
    bad = [b for b in _external("orchestration.worker", top_only=False) if b.endswith((": mlflow",)) or ": mlflow." in b]
    assert bad == []
    driver_side = [f"{m} -> {t}" for m, edges in GRAPH.items() if m.startswith("orchestration.worker")
                   for t in edges if t.startswith("orchestration.") and not t.startswith(("orchestration.worker",
                                                                                        "orchestration.cli"))]
    assert driver_side == []


def test_function_level_imports_say_why():
    """An import inside a function is there because loading it lazily is the point (a fast
    ``--help``, an optional dependency, a framework only one command needs): its line says so."""
    lazy = [(_module(f), line, src) for p in PACKAGES for f in sorted((REPO / p).rglob("*.py"))
            for _, line, top, src in _imports(f) if not top]
    unexplained = sorted({f"{m}:{line}: {src.strip()}" for m, line, src in lazy if "#" not in src})
    assert unexplained == []


@pytest.mark.parametrize("source, expected", [
    ("from . import x\n", ["pkg.x"]), ("from .sub import y\n", ["pkg.sub", "pkg.sub.y"]),
    ("def f():\n    import torch  # lazy\n", ["torch"]),
])
def test_the_reader_resolves_relative_and_nested_imports(tmp_path, monkeypatch, source, expected):
    monkeypatch.setattr(__import__(__name__), "REPO", tmp_path, raising=False)
    f = tmp_path / "pkg" / "m.py"
    f.parent.mkdir()
    f.write_text(source)
    got = [m for m, *_ in _imports(f)]
    assert [m for m in got if m not in ("pkg",)] == expected


def test_orchestration_functions_are_short_and_take_few_parameters():
    """No god-functions on the driver: at most 80 lines and 9 parameters each (self excluded)."""
    long, wide = [], []
    for f in sorted((REPO / "orchestration").rglob("*.py")):
        for n in ast.walk(ast.parse(f.read_text())):
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)):
                a = n.args
                params = [*a.posonlyargs, *a.args, *a.kwonlyargs]
                count = len(params) - int(bool(params) and params[0].arg in ("self", "cls"))
                where = f"{f.relative_to(REPO)}:{n.lineno} {n.name}"
                if n.end_lineno - n.lineno + 1 > 80:
                    long.append(where)
                if count > 9:
                    wide.append(where)
    assert long == [] and wide == []
