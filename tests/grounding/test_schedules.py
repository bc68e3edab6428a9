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
