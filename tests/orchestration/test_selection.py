"""Selection on validation: a trial's test metrics are those of its best-validation epoch, once; the
last epoch's are reported beside them (``last/<split>/*``)."""

from __future__ import annotations

import pytest
import torch
from mlflow.tracking import MlflowClient

from _sweeps import run_sweep
from grounding import engine, tasks
from grounding.data.shards import Dataset
from grounding.models import registry
from orchestration.worker import trial


@pytest.mark.slow  # a whole sweep; test_trial_loop.py scores a selected checkpoint in seconds
def test_reported_test_metrics_belong_to_the_best_validation_epoch(tmp_path, smoke_root):
    # keep every epoch's checkpoint, so each epoch's model can be scored independently afterwards
    proc = run_sweep(tmp_path, "method=stvg", "smoke=true", f"data.root={smoke_root}", "trials=1", "epochs=3",
                     "checkpoints.keep=3", "optim.lr=3e-3", "name=sel")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("video-grounding")
    (child,) = [r for r in client.search_runs([exp.experiment_id]) if "mlflow.parentRunId" in r.data.tags]
    hist = {int(m.step): m.value for m in client.get_metric_history(child.info.run_id, "epoch_val/box_micro")}
    assert sorted(hist) == [1, 2, 3]
    best = max(hist, key=lambda e: (hist[e], -e))  # strictly better wins; the earliest of equals
    assert child.data.tags["selected_epoch"] == str(best)
    delivered = [m.value for m in sorted(client.get_metric_history(child.info.run_id, "val/box_micro"),
                                         key=lambda m: m.step)]
    assert delivered == pytest.approx([max(hist[e] for e in range(1, k + 1)) for k in (1, 2, 3)])

    # every epoch's own weights, from the trial's checkpoints, scored on the test splits here
    td = tasks.load(Dataset.open(smoke_root), splits=("train", "test_iid", "test_ood"))
    ckpts = sorted((tmp_path / "ray_results" / "sel").glob("*/checkpoint_*"))
    assert len(ckpts) == 3
    scored = {}
    for c in ckpts:
        state = trial.load_state(str(c))["group"]  # state.pt with the weights it shares with selected.pt
        pkg = torch.load(c / "selected.pt", map_location="cpu", weights_only=True)
        model = registry.build("stvg", pkg["stages"]["stvg"]["params"], td.info)
        model.load_state_dict(state["stages"]["stvg"]["model"])
        scored[int(state["epoch"])] = {sp: engine.evaluate(model, td[sp], td.task, td.info) for sp in ("test_iid", "test_ood")}
    for split in ("test_iid", "test_ood"):
        logged = client.get_metric_history(child.info.run_id, f"{split}/box_micro")
        assert [int(m.step) for m in logged] == [best]  # evaluated once, recorded at the selected epoch
        for k, v in scored[best][split].items():
            assert child.data.metrics[f"{split}/{k}"] == pytest.approx(v, abs=1e-9), (split, k)
        # the last epoch's predictor is reported beside it (never selected), at its own step
        assert child.data.tags["last_epoch"] == "3"
        last = client.get_metric_history(child.info.run_id, f"last/{split}/box_micro")
        assert [int(m.step) for m in last] == [3]
        for k, v in scored[3][split].items():
            assert child.data.metrics[f"last/{split}/{k}"] == pytest.approx(v, abs=1e-9), (split, k)
