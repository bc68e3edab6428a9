"""The trial loop (:func:`orchestration.worker.trial.train_loop`) on a fake session, no Ray: it
reports every epoch with its checkpoint, a restored trial continues after its checkpoint's epoch,
and the final evaluation scores the checkpoint's selected predictor (its best-validation epoch) on
the test splits, the last epoch's beside it. How these land in MLflow: test_callbacks.py."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from ray.train import Checkpoint

from grounding import engine, tasks
from grounding.data.shards import Dataset
from grounding.models import registry
from orchestration.worker import trial
from orchestration.worker.final_eval import evaluate_selected


class FakeSession(trial.Session):
    """Rank 0 of 1; keeps each report and a copy of each checkpoint folder."""

    def __init__(self, root, restore_from=None):
        self.root, self.restore_from = root, restore_from
        self.reports: list[dict] = []
        self.folders: list[str] = []

    def checkpoint(self):
        return Checkpoint.from_directory(self.restore_from) if self.restore_from else None

    def report(self, metrics, checkpoint_dir):
        self.reports.append(dict(metrics))
        keep = self.root / f"epoch{metrics['epoch']}"
        shutil.copytree(checkpoint_dir, keep)
        self.folders.append(str(keep))


@pytest.fixture
def spec(yc2_tiny, make_spec, tmp_path):
    ds = Dataset.open(yc2_tiny)
    return make_spec(method="stvg", data_root=str(yc2_tiny), data_digest=ds.digest, epochs=3,
                     cache_dir=str(tmp_path / "cache"), fixed={"embed_dim": 16, "heads": 4, "batch_size": 8})


def test_every_epoch_is_reported_with_its_checkpoint_and_a_restore_continues(spec, tmp_path):
    first = FakeSession(tmp_path / "a")
    trial.train_loop({"lr": 1e-3}, spec, first)
    assert [r["epoch"] for r in first.reports] == [1, 2, 3]
    assert all("val/box_micro" in r and "train/loss" in r for r in first.reports)
    assert first.reports[0]["time/resumed_from_epoch"] == 0 and first.reports[0]["cluster/world_size"] == 1
    assert "time/setup_s" not in first.reports[1]  # the start-up facts come once
    for folder in first.folders:
        assert {trial.STATE_FILE, trial.SELECTED_FILE} <= {p.name for p in Path(folder).iterdir()}

    again = FakeSession(tmp_path / "b", restore_from=first.folders[0])  # a trial restarted after epoch 1
    trial.train_loop({"lr": 1e-3}, spec, again)
    assert [r["epoch"] for r in again.reports] == [2, 3] and again.reports[0]["time/resumed_from_epoch"] == 1


def test_unknown_hyperparameters_fail_the_trial(spec, tmp_path):
    with pytest.raises((KeyError, TypeError, ValueError)):
        trial.train_loop({"no_such_knob": 1}, spec, FakeSession(tmp_path))


def test_the_final_evaluation_scores_the_selected_predictor_on_both_test_splits(spec, tmp_path):
    session = FakeSession(tmp_path)
    trial.train_loop({}, spec, session)
    result = evaluate_selected(Checkpoint.from_directory(session.folders[-1]), spec)
    assert 1 <= result["selected_epoch"] <= 3 and result["last_epoch"] == 3
    for split in ("test_iid", "test_ood"):
        assert 0.0 <= result[f"{split}/box_micro"] <= 1.0 and f"last/{split}/box_micro" in result


def test_selection_on_validation_delivers_the_best_epoch_and_reports_the_last_beside_it(yc2_tiny, make_spec,
                                                                                      tmp_path):
    """A trial's test metrics are those of its best-validation epoch (the earliest of equals); the
    last epoch's are reported beside them (``last/<split>/*``); ``val/*`` is what it would deliver."""
    spec = make_spec(method="stvg", data_root=str(yc2_tiny), data_digest=Dataset.open(yc2_tiny).digest, epochs=3,
                     cache_dir=str(tmp_path / "cache"), fixed={"embed_dim": 16, "heads": 4, "batch_size": 4})
    session = FakeSession(tmp_path / "run")
    trial.train_loop({"lr": 3e-3}, spec, session)
    own = {r["epoch"]: r["epoch_val/box_micro"] for r in session.reports}
    best = max(own, key=lambda e: (own[e], -e))
    assert [r["val/box_micro"] for r in session.reports] == pytest.approx(
        [max(own[e] for e in range(1, k + 1)) for k in (1, 2, 3)])

    # every epoch's own weights, from its checkpoint, scored on the test splits here
    td = tasks.load(Dataset.open(yc2_tiny), splits=("train", "test_iid", "test_ood"))
    scored = {}
    for folder in session.folders:
        state = trial.load_state(folder)["group"]  # state.pt with the weights it shares with selected.pt
        pkg = torch.load(Path(folder) / trial.SELECTED_FILE, map_location="cpu", weights_only=True)
        model = registry.build("stvg", pkg["stages"]["stvg"]["params"], td.info)
        model.load_state_dict(state["stages"]["stvg"]["model"])
        scored[int(state["epoch"])] = {sp: engine.evaluate(model, td[sp], td.task, td.info)
                                       for sp in ("test_iid", "test_ood")}
    result = evaluate_selected(Checkpoint.from_directory(session.folders[-1]), spec)
    assert result["selected_epoch"] == best and result["last_epoch"] == 3
    for split in ("test_iid", "test_ood"):
        for k, v in scored[best][split].items():
            assert result[f"{split}/{k}"] == pytest.approx(v, abs=1e-9), (split, k)
        for k, v in scored[3][split].items():
            assert result[f"last/{split}/{k}"] == pytest.approx(v, abs=1e-9), (split, k)


def test_a_flat_validation_curve_stops_the_trial_and_the_rule_survives_a_restore(spec, tmp_path):
    """``converge.patience``: once val/<metric> has not risen above the reference by more than
    ``min_delta`` for ``patience`` epochs the trial stops, saying so in ``converge/flat``; a min_delta
    no score can beat makes the curve flat after exactly ``patience`` epochs past the first."""
    import dataclasses
    flat = dataclasses.replace(spec, epochs=6, converge_patience=2, converge_min_delta=2.0)
    s = FakeSession(tmp_path / "a")
    trial.train_loop({"lr": 1e-3}, flat, s)
    assert [r["epoch"] for r in s.reports] == [1, 2, 3]
    assert [r["converge/flat"] for r in s.reports] == [0.0, 0.0, 1.0]

    again = FakeSession(tmp_path / "b", restore_from=s.folders[1])  # restarted after epoch 2: one stale epoch kept
    trial.train_loop({"lr": 1e-3}, flat, again)
    assert [r["epoch"] for r in again.reports] == [3]

    off = FakeSession(tmp_path / "c")  # patience 0: the whole budget
    trial.train_loop({"lr": 1e-3}, dataclasses.replace(spec, converge_min_delta=2.0), off)
    assert [r["epoch"] for r in off.reports] == [1, 2, 3] and not any(r["converge/flat"] for r in off.reports)
