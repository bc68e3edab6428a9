"""Stages shared by a sweep's trials: the staged ``causal`` backbone is built once per sweep."""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from _sweeps import run_sweep, sweep_env
from grounding import recipes, tasks, training
from grounding.data.shards import Dataset
from orchestration.worker import stage_store as stages

FAST = ("model.J=20", "model.W=50")  # smaller banks keep the smoke sweeps short


def _runs(tmp_path):
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("video-grounding")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    kind = lambda r: r.data.tags.get("kind")  # noqa: E731
    return (client, [r for r in runs if "mlflow.parentRunId" not in r.data.tags and kind(r) != "stage"],
            [r for r in runs if "mlflow.parentRunId" in r.data.tags], [r for r in runs if kind(r) == "stage"])


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_concurrent_trials_share_one_backbone_build_and_backbone_reuses_it(tmp_path, smoke_root):
    proc = run_sweep(tmp_path, "method=causal", "smoke=true", f"data.root={smoke_root}", "trials=2", "concurrent=2",
                     "epochs=1", "name=shared", *FAST)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("stage backbone: building once for the sweep") == 1, proc.stdout[-3000:]
    client, parents, children, built = _runs(tmp_path)
    (parent,), (stage_run,) = parents, built  # exactly one build, recorded as its own run
    folders = list((tmp_path / "ray_results" / "shared" / "stages").iterdir())
    assert len(folders) == 1 and (folders[0] / "manifest.json").exists()
    digest = _sha(folders[0] / "stage.pt")
    assert json.loads((folders[0] / "manifest.json").read_text())["sha256"] == digest
    assert parent.data.tags["stage.backbone.run_id"] == stage_run.info.run_id  # linked from the parent
    assert stage_run.info.status == "FINISHED" and stage_run.data.tags["stage_sha256"] == digest
    assert [int(m.step) for m in client.get_metric_history(stage_run.info.run_id, "epoch_val/box_micro")] == [1]
    assert len(children) == 2
    a, b = children
    assert a.info.start_time < b.info.end_time and b.info.start_time < a.info.end_time  # they ran concurrently
    for c in children:  # both trials' fine-tunes started from that one checkpoint
        assert c.data.tags["stage.backbone.sha256"] == digest
        assert c.data.tags["stage.backbone.uri"] == str(folders[0])
        assert {"stage/spatial/val/box_micro", "stage/temporal/val/box_micro", "stage/deconf/val/box_micro",
                "val/box_micro", "test_ood/box_micro"} <= set(c.data.metrics)
        _assert_causal_probe(client, c)

    # a later sweep started from that backbone (by its MLflow run id) trains none
    again = run_sweep(tmp_path, "method=causal", "smoke=true", f"data.root={smoke_root}", "trials=1", "epochs=1", "name=given",
                      f"backbone={stage_run.info.run_id}", *FAST)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "building once" not in again.stdout
    _, _, children, built = _runs(tmp_path)
    assert len(built) == 1
    (c,) = [c for c in children if c.data.tags["sweep"] == "given"]
    assert c.data.tags["stage.backbone.sha256"] == digest


def _assert_causal_probe(client, child):
    """The mechanisms of every staged component are in the child run: each term's gradient norm per
    parameter group and the content-set diagnostics, finite, at every epoch."""
    m = child.data.metrics
    want = {f"stage/{stage}/train/grad/{term}/{group}"
            for stage, terms in (("spatial", ("mil", "acl_spatial")), ("temporal", ("mil", "acl_temporal")),
                                 ("deconf", ("mil",)))
            for term in terms for group in ("visual", "query", "temporal")}
    want |= {"stage/deconf/train/grad/mil/bda", "stage/spatial/train/acl_spatial_content_gt_share",
             "stage/spatial/train/acl_spatial_content_gt_recall", "stage/temporal/train/acl_temporal_content_visible"}
    assert want <= set(m), sorted(want - set(m))
    probe = [k for k in m if "/train/grad/" in k]
    assert all(math.isfinite(m[k]) and m[k] >= 0 for k in probe)
    assert m["stage/spatial/train/grad/acl_spatial/visual"] > 0 and m["stage/deconf/train/grad/mil/bda"] > 0
    epochs = sorted(int(x.step) for x in client.get_metric_history(child.info.run_id, "epoch"))
    steps = sorted(int(x.step) for x in client.get_metric_history(child.info.run_id,
                                                                  "stage/spatial/train/grad/acl_spatial/visual"))
    assert steps == epochs


@pytest.fixture(scope="module")
def small_backbone(tmp_path_factory, smoke_root):
    """A real backbone stage folder of the smoke data, 32-d (the sweep's backbone is 128-d)."""
    td = tasks.load(Dataset.open(smoke_root), splits=("train", "val"))
    recipe, st = recipes.plan("causal", {}, {"embed_dim": 32, "heads": 4}, 1, "box_micro")
    res = training.train_stage(st["backbone"], td, seed=0, device="cpu")
    uri = str(tmp_path_factory.mktemp("stage") / "backbone-small")
    stages.write_stage(uri, res, {"stage": "backbone", "key": "k" * 64, "method": "causal",
                                  "params": st["backbone"].params, "data_digest": td.digest})
    return uri


@pytest.mark.parametrize("case", ["dims", "digest", "missing", "no-backbone-stage"])
def test_an_incompatible_backbone_exits_2_before_ray_starts(tmp_path, smoke_root, small_backbone, case, sweep):
    method, value = "causal", small_backbone
    if case == "digest":
        value = str(tmp_path / "other")
        shutil.copytree(small_backbone, value)
        man = json.loads(Path(value, "manifest.json").read_text())
        Path(value, "manifest.json").write_text(json.dumps({**man, "data_digest": "0" * 64}))
    elif case == "missing":
        value = str(tmp_path / "nothing-here")
    elif case == "no-backbone-stage":
        method = "stvg"
    code, lines, _ = sweep(f"method={method}", "smoke=true", f"data.root={smoke_root}", f"backbone={value}")
    assert code == 2 and len(lines) == 1 and lines[0].startswith(f"error: backbone={value}: "), lines
    expected = {"dims": "the given one has embed_dim=32", "digest": "trained on dataset 000000000000",
                "missing": "no stage manifest", "no-backbone-stage": "trains no backbone stage"}[case]
    assert expected in lines[0]  # the fixture also checks: no Ray, nothing written


def _logged_epochs(db: Path) -> int:
    import sqlite3

    if not db.exists():
        return 0
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
        (n,) = con.execute("select count(*) from metrics m join tags t on t.run_uuid = m.run_uuid "
                           "where m.key = 'train/loss' and t.key = 'trial_id'").fetchone()
        con.close()
        return int(n)
    except sqlite3.Error:
        return 0


@pytest.mark.slow
def test_a_resumed_sweep_reuses_its_backbone(tmp_path, smoke_root):
    env = sweep_env(tmp_path, TUNE_GLOBAL_CHECKPOINT_S="1")
    args = ["method=causal", "smoke=true", f"data.root={smoke_root}", "trials=2", "concurrent=1", "epochs=3",
            "name=resumed", *FAST]
    proc = subprocess.Popen([sys.executable, "-m", "orchestration.sweep", *args], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    t0 = time.time()
    while _logged_epochs(tmp_path / "mlflow.db") < 1:  # the backbone is built and trial 1 has reported
        assert proc.poll() is None, proc.communicate()
        assert time.time() - t0 < 600, "no trial epoch within 600 s"
        time.sleep(0.5)
    time.sleep(1.5)
    os.kill(proc.pid, signal.SIGKILL)
    first, _ = proc.communicate()
    assert first.count("stage backbone: building once") == 1
    time.sleep(3)
    done = run_sweep(tmp_path, "resume=resumed", env=env)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert "building once" not in done.stdout and "stage backbone: reusing" in done.stdout
    client, parents, children, built = _runs(tmp_path)
    assert len(parents) == 1 and len(built) == 1 and len(children) == 2
    (folder,) = (tmp_path / "ray_results" / "resumed" / "stages").iterdir()
    for c in children:
        assert c.info.status == "FINISHED" and c.data.tags["test_evaluated"] == "true"
        assert c.data.tags["stage.backbone.sha256"] == _sha(folder / "stage.pt")
