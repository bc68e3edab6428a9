"""Real sweeps: a local Ray started by the CLI, a real MLflow SQLite store, real Parquet shards."""

from __future__ import annotations

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


def _steps(client, run, key):
    return sorted(int(m.step) for m in client.get_metric_history(run.info.run_id, key))


@pytest.mark.parametrize("method", registry.names())
def test_smoke_sweep_records_parent_children_curves_and_test_metrics(tmp_path, smoke_roots, method):
    task = tasks.get(registry.task_of(method))
    proc = run_sweep(tmp_path, f"method={method}", "smoke=true", f"data.root={smoke_roots[task.name]}",
                     f"name=smoke-{method}")
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
        assert float(first.data.params[k]) == pytest.approx(float(space.PAPER[k])), k
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
        if method == "causal":
            assert "train/loss_acl_spatial" in child.data.metrics and "train/acl_spatial_cge_step" in child.data.metrics
        if method == "ccr":
            # the counterfactual branch's terms are trained and logged (ccr's score/rank options)
            assert {"train/loss_cf_rec", "train/loss_cf_ivc"} <= set(child.data.metrics), sorted(child.data.metrics)
    assert "mlflow ui --backend-store-uri sqlite:///" in proc.stdout
    assert "best trial" in proc.stdout and "OOD" in proc.stdout


def test_asha_stops_weak_trials_and_leaves_nothing_running(tmp_path, smoke_root):
    proc = run_sweep(tmp_path, "method=stvg", "smoke=true", f"data.root={smoke_root}", "trials=4", "epochs=3",
                     "scheduler=asha", "concurrent=1", "name=asha")
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
