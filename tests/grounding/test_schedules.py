"""Learning-rate schedules and optimiser options of the shared engine (``OptimConfig``)."""

from __future__ import annotations

import math

import pytest
import torch

from grounding import engine, tasks
from grounding.data.shards import Dataset
from grounding.models import registry

SMALL = {"embed_dim": 32, "heads": 4}


def _lrs(cfg: engine.OptimConfig, steps: int, steps_per_epoch: int = 1, epochs: int = 1) -> list[float]:
    """The learning rate the optimiser holds before update 0, 1, ..., ``steps`` (a real torch
    scheduler over a real Adam)."""
    p = torch.nn.Parameter(torch.zeros(3))
    opt = torch.optim.Adam([p], lr=cfg.lr)
    sched = engine.make_scheduler(opt, cfg, steps_per_epoch, epochs)
    out = [opt.param_groups[0]["lr"]]
    for _ in range(steps):
        p.grad = torch.ones(3)
        opt.step()
        sched.step()
        out.append(opt.param_groups[0]["lr"])
    return out


def test_warmup_rsqrt_at_steps_0_400_1600_matches_the_closed_form():
    """fairseq inverse_sqrt as the CPL/CCR runners use it: linear from 1e-7 over 400 updates to
    4e-4, then 4e-4 * sqrt(400 / s)."""
    cfg = engine.OptimConfig(lr=4e-4, schedule="warmup_rsqrt", warmup_steps=400, warmup_init_lr=1e-7)
    lrs = _lrs(cfg, 1600)
    assert lrs[0] == pytest.approx(1e-7, rel=1e-9)
    assert lrs[200] == pytest.approx(1e-7 + 200 * (4e-4 - 1e-7) / 400, rel=1e-9)
    assert lrs[400] == pytest.approx(4e-4, rel=1e-9)
    assert lrs[1600] == pytest.approx(4e-4 * math.sqrt(400 / 1600), rel=1e-9) == pytest.approx(2e-4)
    assert max(lrs) == pytest.approx(4e-4)
    assert all(a < b for a, b in zip(lrs[:400], lrs[1:401]))  # rises during the warm-up
    assert all(a > b for a, b in zip(lrs[400:-1], lrs[401:]))  # decays after it


def test_step_schedule_multiplies_by_gamma_every_step_epochs():
    cfg = engine.OptimConfig(lr=8e-4, schedule="step", step_epochs=2, step_gamma=0.1)
    lrs = _lrs(cfg, 5 * 3, steps_per_epoch=3, epochs=5)  # 5 epochs of 3 updates
    per_epoch = [lrs[3 * e] for e in range(5)]
    assert per_epoch == pytest.approx([8e-4, 8e-4, 8e-5, 8e-5, 8e-6])
    assert lrs[5] == pytest.approx(8e-4) and lrs[6] == pytest.approx(8e-5)  # changes at the boundary


def test_warmup_linear_decays_to_zero_at_the_last_update():
    cfg = engine.OptimConfig(lr=1e-3, schedule="warmup_linear", warmup_steps=4, warmup_init_lr=0.0)
    total = 10 * 2
    lrs = _lrs(cfg, total, steps_per_epoch=10, epochs=2)
    assert lrs[0] == 0.0 and lrs[2] == pytest.approx(5e-4) and lrs[4] == pytest.approx(1e-3)
    assert lrs[12] == pytest.approx(1e-3 * (total - 12) / (total - 4))
    assert lrs[total - 1] == pytest.approx(1e-3 / (total - 4))  # the last update's rate
    assert lrs[total] == 0.0


def test_constant_schedule_keeps_the_rate():
    assert _lrs(engine.OptimConfig(lr=3e-4), 50) == [3e-4] * 51


def test_adamw_is_decoupled_weight_decay():
    model = torch.nn.Linear(2, 2)
    assert type(engine.make_optimizer(model, engine.OptimConfig())) is torch.optim.Adam
    opt = engine.make_optimizer(model, engine.OptimConfig(optimizer="adamw", weight_decay=0.01))
    assert type(opt) is torch.optim.AdamW and opt.param_groups[0]["weight_decay"] == 0.01


@pytest.mark.parametrize("kw, match", [
    ({"optimizer": "sgd"}, "optimizer='sgd' is unknown; allowed: adam, adamw"),
    ({"schedule": "cosine"}, "schedule='cosine' is unknown; allowed: constant, step, warmup_rsqrt, warmup_linear"),
    ({"schedule": "warmup_rsqrt"}, "warmup_steps=0 is out of range; allowed: >= 1 with schedule=warmup_rsqrt"),
    ({"warmup_steps": -1}, "warmup_steps=-1 is out of range; allowed: >= 0"),
    ({"warmup_init_lr": -1e-7}, "warmup_init_lr"),
    ({"schedule": "step"}, "step_epochs=0 is out of range; allowed: >= 1 with schedule=step"),
    ({"step_gamma": 0.0}, "step_gamma=0.0 is out of range"),
    ({"grad_clip": -1.0}, "grad_clip=-1.0 is out of range"),
])
def test_bad_values_are_named_in_one_line(kw, match):
    with pytest.raises(ValueError, match="^" + match.replace("(", r"\(").replace(")", r"\)")) as e:
        engine.OptimConfig(**kw)
    assert "\n" not in str(e.value)


@pytest.fixture(scope="module")
def td(yc2_tiny):
    return tasks.load(Dataset.open(yc2_tiny), splits=("train", "val"))


def test_train_one_epoch_steps_the_schedule_once_per_update_and_clips(td):
    """Through the engine: every update uses the closed-form rate of its index, and with a tiny clip
    every gradient the optimiser sees has at most that norm."""
    engine.seed_everything(0)
    model = registry.build("stvg", SMALL, td.info)
    cfg = engine.OptimConfig(lr=1e-3, batch_size=8, schedule="warmup_rsqrt", warmup_steps=3,
                             warmup_init_lr=1e-5, grad_clip=0.01)
    opt = engine.make_optimizer(model, cfg)
    seen, norms = [], []

    def spy(optimizer, args, kwargs):  # runs at the start of every optimizer.step()
        seen.append(optimizer.param_groups[0]["lr"])
        norms.append(float(torch.sqrt(sum((p.grad ** 2).sum() for p in model.parameters() if p.grad is not None))))

    opt.register_step_pre_hook(spy)
    spe = engine.steps_per_epoch(td["train"], cfg)
    sched = engine.make_scheduler(opt, cfg, spe, 2)
    logs = [engine.train_one_epoch(model, opt, td["train"], cfg, e, 0, scheduler=sched) for e in range(2)]
    assert spe == 4 and len(seen) == 8
    assert seen == pytest.approx([1e-3 * engine.lr_factor(cfg, s) for s in range(8)])
    assert seen[:4] == pytest.approx([1e-5, 1e-5 + (1e-3 - 1e-5) / 3, 1e-5 + 2 * (1e-3 - 1e-5) / 3, 1e-3])
    assert logs[1]["lr"] == pytest.approx(1e-3 * math.sqrt(3 / 8))
    assert all(n <= 0.01 * (1 + 1e-4) for n in norms)


def test_the_trial_checkpoint_carries_the_schedule(tmp_path, yc2_tiny):
    """orchestration.trial saves each stage's scheduler with its model; a restored run continues
    the schedule at the update it stopped at instead of restarting the warm-up."""
    from ray.train import Checkpoint

    from grounding import recipes, tasks
    from grounding.data.shards import Dataset
    from orchestration import trial

    td = tasks.load(Dataset.open(yc2_tiny), splits=("train", "val"))
    fixed = {"embed_dim": 16, "heads": 4, "batch_size": 4, "lr": 4e-4, "schedule": "warmup_rsqrt", "warmup_steps": 50}
    recipe, stages = recipes.plan("stvg", {}, fixed, 4, "box_micro")

    def build():
        return recipes.build_group(recipe, stages, td, seed=0, device="cpu", eval_batch_size=16)

    g = build()
    g.step(td)
    steps = g.runs["stvg"].scheduler.last_epoch  # updates done in the first epoch
    assert 0 < steps < 50
    lr = g.runs["stvg"].optimizer.param_groups[0]["lr"]
    assert lr == pytest.approx(1e-7 + steps * (4e-4 - 1e-7) / 50)
    trial._save(g, {}, {"fixed": fixed, "method": "stvg"}, td, str(tmp_path))
    g2 = build()
    assert g2.runs["stvg"].optimizer.param_groups[0]["lr"] == pytest.approx(1e-7)
    assert trial._restore(Checkpoint.from_directory(str(tmp_path)), g2) == 1
    assert g2.runs["stvg"].optimizer.param_groups[0]["lr"] == pytest.approx(lr)
    assert g2.runs["stvg"].scheduler.last_epoch == steps


def test_the_trial_checkpoint_stores_nothing_twice(tmp_path, yc2_tiny):
    """state.pt holds what resumption needs and no more: the selected weights live in selected.pt
    only, and current weights equal to them (selected at this epoch) are not stored again."""
    import os

    from ray.train import Checkpoint

    from grounding import recipes, tasks
    from grounding.data.shards import Dataset
    from orchestration import trial

    td = tasks.load(Dataset.open(yc2_tiny), splits=("train", "val"))
    fixed = {"embed_dim": 16, "heads": 4, "batch_size": 4, "lr": 4e-4}
    recipe, stages = recipes.plan("stvg", {}, fixed, 4, "box_micro")

    def build():
        return recipes.build_group(recipe, stages, td, seed=0, device="cpu", eval_batch_size=16)

    g = build()
    g.step(td)  # epoch 1 is the selected one: current weights = selected weights
    run = {"fixed": fixed, "method": "stvg"}
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


def test_a_memory_bank_checkpoint_holds_its_entries_once():
    """MemoryBank's drift snapshot is not stored (the 328 MB frame bank was in every checkpoint
    twice); loading sets it from the entries, and an older checkpoint with the snapshot still loads."""
    from grounding.models.memory import MemoryBank

    bank = MemoryBank(torch.randn(6, 3, 4), alpha=0.9, pool_key=True)
    assert set(bank.state_dict()) == {"memory"}
    bank.memory.add_(1.0)
    other = MemoryBank(torch.randn(6, 3, 4), alpha=0.9, pool_key=True)
    other.load_state_dict(bank.state_dict())
    assert torch.equal(other.memory, bank.memory) and torch.equal(other.snapshot, bank.memory)
    old = {"memory": bank.memory.clone(), "snapshot": torch.zeros(6, 3, 4)}
    other.load_state_dict(old)  # strict: the old key is accepted and used
    assert torch.equal(other.snapshot, torch.zeros(6, 3, 4))
