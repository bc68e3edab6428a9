"""Real sweeps: a local Ray started by the CLI, a real MLflow SQLite store, real Parquet shards."""

from __future__ import annotations

import math

import pytest
from mlflow.tracking import MlflowClient

import search_spaces
from _sweeps import run_sweep
from grounding import tasks
from grounding.models import registry


def _runs(tmp_path):
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("video-grounding")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags and r.data.tags.get("kind") != "stage"]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return client, parents, children


def parent_stage_sha(tmp_path) -> str:
    """The sha256 of the one backbone the staged causal sweep built."""
    import hashlib

    (folder,) = (tmp_path / "ray_results" / "smoke-causal" / "stages").iterdir()
    return hashlib.sha256((folder / "stage.pt").read_bytes()).hexdigest()


def _steps(client, run, key):
    return sorted(int(m.step) for m in client.get_metric_history(run.info.run_id, key))


# Every method's end-to-end smoke sweep runs in the slow stage (about 35 s each on 2 cores). The
# default suite keeps one staged causal sweep (test_stages.py) and one compare/evaluate
# (test_compare.py); the pieces these sweeps exercise have their own fast tests (test_callbacks.py,
# test_trial_loop.py, the in-process exit-2 cases).
pytestmark = pytest.mark.slow


@pytest.mark.parametrize("method", registry.names())
def test_smoke_sweep_records_parent_children_curves_and_test_metrics(tmp_path, smoke_roots, method, ray_address):
    task = tasks.get(registry.task_of(method))
    proc = run_sweep(tmp_path, f"method={method}", "smoke=true", f"data.root={smoke_roots[task.name]}",
                     f"name=smoke-{method}", f"ray.address={ray_address}")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    client, parents, children = _runs(tmp_path)

    assert len(parents) == 1 and len(children) == 2
    parent = parents[0]
    tags = parent.data.tags
    assert tags["method"] == method and tags["sweep"] == f"smoke-{method}"
    assert tags["command"].startswith("python -m orchestration.sweep") and f"method={method}" in tags["command"]
    assert len(tags["git_commit"].split("-")[0]) == 40
    assert len(tags["data_manifest_sha256"]) == 64
    assert parent.info.status == "FINISHED"
    assert parent.data.params["trials"] == "2" and parent.data.params["method"] == method
    assert tags["best_trial_id"] in {c.data.tags["trial_id"] for c in children}
    assert any(k.startswith("best/test_ood/") for k in parent.data.metrics)

    space = search_spaces.load(method)
    searched = [k for k in space.space({"T": 5, "N": 20, "L": 32, "D": 32}) if k in space.PAPER]
    assert sorted(c.data.tags["trial_number"] for c in children) == ["1", "2"]
    first = next(c for c in children if c.data.tags["trial_number"] == "1")
    for k in searched:  # the published configuration is evaluated first
        want = space.PAPER[k]
        if isinstance(want, str):  # a searched choice (causal's intervention)
            assert first.data.params[k] == want, k
        else:
            assert float(first.data.params[k]) == pytest.approx(float(want)), k
    for child in children:
        assert child.info.status == "FINISHED"
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        for k, v in getattr(space, "FIXED", {}).items():  # the sweep's fixed values are recorded too
            assert child.data.params[k] == str(v)
        for k in searched:
            assert k in child.data.params
        assert _steps(client, child, "train/loss") == [1, 2]
        selected = int(child.data.tags["selected_epoch"])
        assert child.data.tags["test_evaluated"] == "true"
        for m in task.metric_names:
            assert _steps(client, child, f"val/{m}") == [1, 2]
            assert _steps(client, child, f"epoch_val/{m}") == [1, 2]
            for split in ("test_iid", "test_ood"):
                assert _steps(client, child, f"{split}/{m}") == [selected]  # once, at the selected epoch
                assert 0.0 <= child.data.metrics[f"{split}/{m}"] <= 1.0
        assert child.data.metrics[f"val/{task.default_metric}"] == pytest.approx(
            client.get_metric_history(child.info.run_id, f"val/{task.default_metric}")[-1].value)
        assert child.data.metrics["time/startup_s"] > 0
        if method == "causal":  # staged (the default): each component's own curves and diagnostics
            m = child.data.metrics
            assert "stage/spatial/train/loss_acl_spatial" in m and "stage/spatial/train/acl_spatial_cge_step" in m
            assert "stage/temporal/train/bank_drift_frame" in m and "stage/deconf/val/box_micro" in m
            assert child.data.tags["stage.backbone.sha256"] == parent_stage_sha(tmp_path)
        if method in ("scl", "causal"):
            _assert_mechanisms(client, child, method)
        if method == "ccr":
            # the counterfactual branch's terms are trained and logged (ccr's score/rank options)
            assert {"train/loss_cf_rec", "train/loss_cf_ivc"} <= set(child.data.metrics), sorted(child.data.metrics)
        _assert_inference_grid(tmp_path, client, child, method, task)
    assert "mlflow ui --backend-store-uri sqlite:///" in proc.stdout
    assert "best trial" in proc.stdout and "OOD" in proc.stdout
    _assert_lineage_and_figures(tmp_path, client, parent, children, f"smoke-{method}", smoke_roots[task.name])


PROBES = {  # (terms, parameter groups) of each WSVOG method's gradient probe (grounding.engine.grad_probe)
    "scl": (("mil_f", "mil_c", "caos", "stran", "ttran"), ("stable", "context", "gate", "visual", "temporal")),
    "causal": (("mil", "acl_spatial", "acl_temporal"), ("visual", "query", "temporal", "bda")),  # + bda_form=project: bda
}


def _assert_mechanisms(client, child, method):
    """Every term's gradient norm into every parameter group, finite, at every epoch, and the
    method's mechanism diagnostics (scl: one stage, ``train/``; causal: staged, each component's own)."""
    m = child.data.metrics
    terms, groups = PROBES[method]
    if method == "scl":
        want = {f"train/grad/{t}/{g}" for t in terms for g in groups} | {"train/caos_floor_active",
                                                                          "train/stran_top_prob"}
    else:
        # each staged component has its own switches: only the deconfounded one has the bda group
        want = {f"stage/{s}/train/grad/{t}/{g}" for s, ts in (("spatial", ("mil", "acl_spatial")),
                                                               ("temporal", ("mil", "acl_temporal")),
                                                               ("deconf", ("mil",)))
                for t in ts for g in groups if g != "bda" or s == "deconf"}
        want |= {"stage/spatial/train/acl_spatial_content_gt_share", "stage/temporal/train/acl_temporal_style_visible"}
    assert want <= set(m), sorted(want - set(m))
    assert all(math.isfinite(m[k]) and m[k] >= 0 for k in want)
    first = sorted(want)[0]
    assert _steps(client, child, first) == [1, 2]
    if method == "scl":
        assert m["train/grad/mil_f/stable"] > 0 and m["train/grad/mil_f/context"] == 0.0
        assert m["train/grad/stran/stable"] > 0 and 0 <= m["train/caos_floor_active"] <= 1
    else:
        assert m["stage/spatial/train/grad/acl_spatial/visual"] > 0 and m["stage/deconf/train/grad/mil/bda"] > 0
        assert not any(k.startswith(("stage/spatial/train/grad/", "stage/temporal/train/grad/")) and k.endswith("/bda")
                       for k in m)


def _assert_inference_grid(tmp_path, client, child, method, task):
    """A model with inference-only knobs (vcma's beta): its val metrics over the grid, at the selected
    checkpoint, as a table and a PNG in the child's Artifacts; none for a model without."""
    import json

    files = {a.path for a in client.list_artifacts(child.info.run_id, "inference_grid")}
    if not hasattr(registry.get(method), "inference_grid"):
        assert not files
        return
    from grounding.models.vcma import BETA_GRID

    assert files == {"inference_grid/beta.json", "inference_grid/beta.png"}, files
    png = open(client.download_artifacts(child.info.run_id, "inference_grid/beta.png", str(tmp_path)), "rb").read()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    table = json.load(open(client.download_artifacts(child.info.run_id, "inference_grid/beta.json", str(tmp_path))))
    cols = table["columns"]
    assert cols[0] == "beta" and set(cols[1:]) == set(task.metric_names)
    rows = [dict(zip(cols, r)) for r in table["data"]]
    assert [r["beta"] for r in rows] == list(BETA_GRID)
    assert all(0.0 <= r[m] <= 1.0 for r in rows for m in task.metric_names)
    # the row at the trial's own beta is the selected checkpoint's validation result
    trained = float(child.data.params["beta"])
    at = [r for r in rows if r["beta"] == trained]
    assert at or child.data.tags["trial_number"] != "1"  # trial 1 is the PAPER point, beta = 0.3 on the grid
    if at:
        for m in task.metric_names:
            assert at[0][m] == pytest.approx(child.data.metrics[f"val/{m}"], abs=1e-6), m
    assert child.data.metrics["time/inference_grid_s"] >= 0


def _assert_lineage_and_figures(tmp_path, client, parent, children, name, root):
    """Where users land, the dataset of every run, the figures and the best trial's model."""
    import json

    import optuna

    from grounding.data.shards import Dataset

    exp = client.get_experiment(parent.info.experiment_id)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"  # opens on the runs
    digest = Dataset.open(root).digest
    for run in [parent, *children]:
        (inp,) = client.get_run(run.info.run_id).inputs.dataset_inputs
        tags = {t.key: t.value for t in inp.tags}
        assert inp.dataset.name == root.rstrip("/").rsplit("/", 1)[-1] and inp.dataset.digest == digest[:16]
        assert tags["manifest_sha256"] == digest and tags["splits"].startswith("train:")
        assert root in inp.dataset.source
    parent_files = {a.path for a in client.list_artifacts(parent.info.run_id, "figures")}
    assert {"figures/optimization_history.png", "figures/parallel_coordinate.png",
            "figures/iid_vs_ood.png"} <= parent_files, parent_files
    note = client.get_run(parent.info.run_id).data.tags["mlflow.note.content"]
    assert "figures/optimization_history.png" in note and "summary.txt" in note
    for child in children:
        assert "figures/learning_curves.png" in {a.path for a in client.list_artifacts(child.info.run_id, "figures")}
    best = client.get_run(parent.data.tags["best_run_id"])
    assert client.get_run(parent.info.run_id).data.tags["best_model_uri"] == f"runs:/{best.info.run_id}/model"
    assert {a.path for a in client.list_artifacts(best.info.run_id, "model")} == {"model/config.json", "model/selected.pt"}
    cfg = json.load(open(client.download_artifacts(best.info.run_id, "model/config.json", str(tmp_path))))
    assert cfg["method"] == best.data.params["method"] and cfg["data"]["manifest_sha256"] == digest
    for k, v in cfg["model"].items():
        assert str(v) == best.data.params[k]
    journal = tmp_path / "ray_results" / name / "optuna.journal"
    study = optuna.load_study(study_name=name, storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(journal))))
    assert len([t for t in study.trials if t.state.name == "COMPLETE"]) == len(children)


def test_asha_stops_weak_trials_and_leaves_nothing_running(tmp_path, smoke_root, ray_address):
    proc = run_sweep(tmp_path, "method=stvg", "smoke=true", f"data.root={smoke_root}", "trials=4", "epochs=3",
                     "scheduler=asha", "concurrent=1", "name=asha", f"ray.address={ray_address}")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    client, parents, children = _runs(tmp_path)
    assert len(children) == 4
    assert {c.info.status for c in children} <= {"FINISHED", "KILLED"}
    stopped = [c for c in children if c.data.tags["stopped_early"] == "true"]
    assert stopped, "ASHA stopped no trial"
    for c in children:
        done = _steps(client, c, "train/loss")
        assert done == list(range(1, len(done) + 1))  # no gap, no duplicate epoch
        last = done[-1]
        assert last in (1, 2, 3)  # ASHA(max_t=3, grace=1, rf=2) stops only after epoch 1 or 2
        # tested once, stopped or not, at the epoch the trial selected (no later than its last)
        assert _steps(client, c, "test_iid/box_micro") == [int(c.data.tags["selected_epoch"])]
        assert int(c.data.tags["selected_epoch"]) <= last
    assert all(int(c.data.tags["epochs_completed"]) < 3 for c in stopped)
