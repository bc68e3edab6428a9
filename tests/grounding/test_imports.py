"""The ``grounding`` core stays free of ray and mlflow (orchestration is the only place for them)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import grounding

PACKAGE_DIR = Path(grounding.__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parent
FORBIDDEN = {"ray", "mlflow"}

_IMPORT_EVERYTHING = r"""
import importlib, json, pkgutil, sys
import grounding
names, failed = ["grounding"], {}
for info in pkgutil.walk_packages(grounding.__path__, "grounding."):
    if info.name.rsplit(".", 1)[-1] == "__main__":
        continue  # a CLI entry point runs on import; it is covered by the static check below
    try:
        importlib.import_module(info.name)
        names.append(info.name)
    except Exception as e:  # report every failure, not just the first
        failed[info.name] = f"{type(e).__name__}: {e}"
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("ray", "mlflow"))
print(json.dumps({"imported": names, "failed": failed, "forbidden_loaded": loaded}))
"""


def test_every_module_imports_without_ray_or_mlflow():
    proc = subprocess.run([sys.executable, "-c", _IMPORT_EVERYTHING], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["failed"] == {}
    assert report["forbidden_loaded"] == []
    # the walk really visited the package (guards against an empty walk passing vacuously)
    for expected in ("grounding.engine", "grounding.tasks", "grounding.losses", "grounding.models.causal",
                     "grounding.models.stvg", "grounding.metrics.wsvog", "grounding.data.shards",
                     "grounding.data.benchmarks.youcook2", "grounding.data.benchmarks"):
        assert expected in report["imported"]


def _forbidden_imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    bad = []
    for node in ast.walk(tree):
        mods: list[str] = []
        if isinstance(node, ast.Import):
            mods = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            mods = [node.module]
        elif isinstance(node, ast.Call):  # importlib.import_module("ray") / __import__("mlflow")
            fn = node.func
            fname = fn.attr if isinstance(fn, ast.Attribute) else getattr(fn, "id", "")
            if fname in ("import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant) \
                    and isinstance(node.args[0].value, str):
                mods = [node.args[0].value]
        bad += [f"{path.relative_to(REPO_ROOT)}:{node.lineno}: {m}" for m in mods
                if m.split(".")[0] in FORBIDDEN]
    return bad


def test_no_source_file_imports_ray_or_mlflow():
    files = sorted(PACKAGE_DIR.rglob("*.py"))
    assert len(files) >= 15
    bad = [b for f in files for b in _forbidden_imports(f)]
    assert bad == []


def test_static_check_detects_forbidden_imports(tmp_path, monkeypatch):
    """The checker itself flags every spelling it is meant to catch (and nothing else)."""
    monkeypatch.setattr(sys.modules[__name__], "REPO_ROOT", tmp_path)
    src = tmp_path / "m.py"
    src.write_text("import os\nimport ray.train\nfrom mlflow import log_metric\n"
                   "def f():\n    import importlib\n    return importlib.import_module('ray')\n"
                   "x = __import__('mlflow.tracking')\nimport rayon\n")
    assert sorted(b.rsplit(": ", 1)[1] for b in _forbidden_imports(src)) == \
        ["mlflow", "mlflow.tracking", "ray", "ray.train"]


def _grounding_imports(path: Path) -> set[str]:
    """The ``grounding.*`` modules ``path`` imports (relative imports resolved)."""
    package = ".".join(path.relative_to(REPO_ROOT).with_suffix("").parts[:-1])
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([node.module] if node.module else []))
            out |= {base} | {f"{base}.{a.name}" for a in node.names}
    return {m for m in out if m.split(".")[0] == "grounding"}


def test_layering_of_recipes():
    """Models declare (grounding.models.recipe) and never import the layers above them: resolution
    (grounding.recipes) and execution (grounding.training); resolution never imports execution."""
    above = {"grounding.recipes", "grounding.training"}
    bad = [f"{f.relative_to(REPO_ROOT)}: {m}" for f in sorted((PACKAGE_DIR / "models").rglob("*.py"))
           for m in _grounding_imports(f) if m in above]
    assert bad == []
    assert "grounding.training" not in _grounding_imports(PACKAGE_DIR / "recipes.py")
    assert "grounding.models.recipe" in _grounding_imports(PACKAGE_DIR / "models" / "causal.py")
