"""Issue 26: first use is safe under concurrency. Two generations of the same benchmark at once
(two processes, a fresh folder) both succeed with one valid dataset; a half-written one is never
taken as complete."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from grounding.data import benchmarks, locking
from grounding.data.manifest import DataError
from grounding.data.shards import Dataset

REPO = Path(__file__).resolve().parents[2]
SMOKE = dict(benchmarks.get("charades").smoke)  # the smallest smoke benchmark

GENERATOR = """
import sys, time
from pathlib import Path
sys.path.insert(0, {repo!r})
from grounding.data import benchmarks
root, go = sys.argv[1], Path(sys.argv[2])
while not go.exists():
    time.sleep(0.01)
ds = benchmarks.ensure(root, "charades", {smoke!r}, log=lambda m: print(m, file=sys.stderr))
ds.verify()
print(ds.digest)
"""


def test_two_generations_at_once_give_one_dataset(tmp_path):
    script, go, root = tmp_path / "gen.py", tmp_path / "go", tmp_path / "data" / "charades-smoke"
    script.write_text(GENERATOR.format(repo=str(REPO), smoke=SMOKE))
    procs = [subprocess.Popen([sys.executable, str(script), str(root), str(go)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    time.sleep(0.3)
    go.touch()
    outs = [p.communicate(timeout=240) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [e[-3000:] for _, e in outs]
    assert outs[0][0] == outs[1][0]  # the same dataset (digest)
    errs = "".join(e for _, e in outs)
    assert errs.count("(first use)") == 1, errs  # one generation; the other waited and reused it
    assert errs.count("waiting for another process") <= 1, errs
    # nothing left but the dataset and its lock file
    assert sorted(p.name for p in root.parent.iterdir()) == [".charades-smoke.lock", "charades-smoke"]


def test_a_half_written_generation_is_not_taken_as_complete(tmp_path):
    root = tmp_path / "charades-smoke"
    (root / "train").mkdir(parents=True)  # what a killed overwrite leaves: shards, no manifest
    (root / "train" / "part-00000.parquet").write_bytes(b"truncated")
    stale = tmp_path / ".charades-smoke.partial-deadbeef"  # a killed writer's staging folder
    (stale / "val").mkdir(parents=True)
    ds = benchmarks.ensure(root, "charades", SMOKE, log=lambda m: None)
    ds.verify()
    assert not stale.exists()
    assert Dataset.open(str(root)).digest == ds.digest


def test_a_folder_with_other_files_is_not_removed(tmp_path):
    root = tmp_path / "mine"
    root.mkdir()
    (root / "notes.txt").write_text("keep me")
    with pytest.raises(DataError, match="holds files but no manifest.json"):
        benchmarks.ensure(root, "charades", SMOKE, log=lambda m: None)
    assert (root / "notes.txt").read_text() == "keep me"


def test_the_lock_is_reentrant_in_a_process(tmp_path):
    with locking.exclusive(tmp_path / "x"):
        with locking.exclusive(tmp_path / "x"):
            pass
    assert locking.lock_path(tmp_path / "x") == tmp_path / ".x.lock"
