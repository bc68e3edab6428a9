"""The trial checkpoint (``state.pt`` + ``selected.pt``, :mod:`orchestration.worker.trial`):
schedules survive a restore and nothing is stored twice."""

from __future__ import annotations

import os

import pytest
import torch
from ray.train import Checkpoint

from grounding import recipes, tasks, training
from grounding.data.shards import Dataset
from orchestration.worker import trial


def test_the_trial_checkpoint_carries_the_schedule(tmp_path, yc2_tiny, make_spec):
    """orchestration.trial saves each stage's scheduler with its model; a restored run continues
    the schedule at the update it stopped at instead of restarting the warm-up."""
    td = tasks.load(Dataset.open(yc2_tiny), splits=("train", "val"))
    fixed = {"embed_dim": 16, "heads": 4, "batch_size": 4, "lr": 4e-4, "schedule": "warmup_rsqrt", "warmup_steps": 50}
    recipe, stages = recipes.plan("stvg", {}, fixed, 4, "box_micro")

    def build():
        return training.build_group(recipe, stages, td, seed=0, device="cpu", eval_batch_size=16)

    g = build()
    g.step(td)
    steps = g.runs["stvg"].scheduler.last_epoch  # updates done in the first epoch
    assert 0 < steps < 50
    lr = g.runs["stvg"].optimizer.param_groups[0]["lr"]
    assert lr == pytest.approx(1e-7 + steps * (4e-4 - 1e-7) / 50)
    trial._save(g, {}, make_spec(fixed=fixed), td, str(tmp_path))
    g2 = build()
    assert g2.runs["stvg"].optimizer.param_groups[0]["lr"] == pytest.approx(1e-7)
    assert trial._restore(Checkpoint.from_directory(str(tmp_path)), g2) == 1
    assert g2.runs["stvg"].optimizer.param_groups[0]["lr"] == pytest.approx(lr)
    assert g2.runs["stvg"].scheduler.last_epoch == steps


def test_the_trial_checkpoint_stores_nothing_twice(tmp_path, yc2_tiny, make_spec):
    """state.pt holds what resumption needs and no more: the selected weights live in selected.pt
    only, and current weights equal to them (selected at this epoch) are not stored again."""
    td = tasks.load(Dataset.open(yc2_tiny), splits=("train", "val"))
    fixed = {"embed_dim": 16, "heads": 4, "batch_size": 4, "lr": 4e-4}
    recipe, stages = recipes.plan("stvg", {}, fixed, 4, "box_micro")

    def build():
        return training.build_group(recipe, stages, td, seed=0, device="cpu", eval_batch_size=16)

    g = build()
    g.step(td)  # epoch 1 is the selected one: current weights = selected weights
    run = make_spec(fixed=fixed)
    trial._save(g, {}, run, td, str(tmp_path))
    raw = torch.load(tmp_path / trial.STATE_FILE, weights_only=True)["group"]["stages"]["stvg"]
    assert raw["model"] is None and raw["best"]["state"] is None and raw["optimizer"]["state"]
    weights = sum(v.numel() * v.element_size() for v in g.runs["stvg"].model.state_dict().values())
    # selected.pt: the weights; state.pt: Adam's two moments and small things (it held 2 more copies)
    assert os.path.getsize(tmp_path / trial.SELECTED_FILE) > weights
    assert os.path.getsize(tmp_path / trial.STATE_FILE) < 3 * weights
    full = trial.load_state(str(tmp_path))["group"]["stages"]["stvg"]
    own = g.runs["stvg"].model.state_dict()
    assert all(torch.equal(full["model"][k], own[k]) and torch.equal(full["best"]["state"][k], own[k]) for k in own)
    # a later epoch that is not selected: its current weights are stored, the selected ones are not
    g.step(td)
    g.runs["stvg"].best.epoch = 1  # as if epoch 2 had not improved
    trial._save(g, {}, run, td, str(tmp_path))
    raw = torch.load(tmp_path / trial.STATE_FILE, weights_only=True)["group"]["stages"]["stvg"]
    assert raw["model"] is not None and raw["best"]["state"] is None
    g2 = build()
    assert trial._restore(Checkpoint.from_directory(str(tmp_path)), g2) == 2
    r2, r = g2.runs["stvg"], g.runs["stvg"]
    assert all(torch.equal(r2.model.state_dict()[k], r.model.state_dict()[k]) for k in own)
    assert r2.best.epoch == 1 and all(torch.equal(r2.best.state[k], r.best.state[k]) for k in own)
