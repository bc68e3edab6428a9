"""A clone is the whole product: ``git clone`` of HEAD into a folder with nothing beside it (no
``shared/``, no ``GROUNDING_ANNOTATIONS``), the project installed (non-editable) into a fresh venv
there, and the README's first command at smoke size in that clone generates its benchmark from the
packaged annotation files and finishes with exit 0.

The fresh venv borrows this environment's installed dependencies (a ``.pth`` line naming its
site-packages, whose own ``.pth`` files, the editable install of this checkout among them, are not
processed), so that the test measures the project's packaging, not pip's download of the stack."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def _env(home: Path) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("GROUNDING_", "MLFLOW_", "RAY_ADDRESS", "PYTHON", "VIRTUAL_ENV"))}
    env.update(HOME=str(home), GROUNDING_CACHE_DIR=str(home / "cache"), PYTHONUNBUFFERED="1",
               RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S="300", PATH=os.environ.get("PATH", ""))
    return env


def test_a_clone_with_nothing_beside_it_runs_the_first_command(tmp_path):
    if subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True).returncode:
        pytest.skip("not a git checkout")
    root = tmp_path / "alone"  # nothing else in this folder: no shared/ beside the clone
    root.mkdir()
    clone = root / "repo"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True, timeout=300)
    assert not (root / "shared").exists() and not (clone.parent / "shared").exists()

    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    (site / "_borrowed_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = _env(root)
    pip = subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                          "--disable-pip-version-check", str(clone)], env=env, capture_output=True, text=True,
                         timeout=600)
    assert pip.returncode == 0, pip.stderr[-3000:]

    # the non-editable install carries the annotation files and reads them, from an unrelated folder
    probe = subprocess.run([str(py), "-c", (
        "from grounding.data import annotations as a; from grounding.data.benchmarks import youcook2;"
        "print(a.annotations_dir()); print(youcook2.YC2Annotations.load().digests['train_dict.json'])")],
        cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert probe.returncode == 0, probe.stderr[-3000:]
    where, digest = probe.stdout.split()
    assert where.startswith(str(site)) and digest == "50f9f991d7d8fcdb"

    # the README's first command, at smoke size, in the clone
    sweep = subprocess.run([str(py), "-m", "orchestration.sweep", "method=causal", "smoke=true"], cwd=clone,
                           env=env, capture_output=True, text=True, timeout=1500)
    assert sweep.returncode == 0, (sweep.stdout[-3000:], sweep.stderr[-3000:])
    assert "generating the youcook2 benchmark" in sweep.stdout + sweep.stderr
    assert (clone / "mlflow.db").is_file() and any((clone / "data").iterdir())
