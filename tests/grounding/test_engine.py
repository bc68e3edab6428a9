"""The training engine: seeded determinism, epoch bookkeeping, and 2-process (gloo) runs."""

from __future__ import annotations

import math
import socket
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from grounding import engine, tasks
from grounding.data.shards import Dataset
from grounding.models import registry

HERE = Path(__file__).resolve().parent
SMALL = {"embed_dim": 32, "heads": 4}
CAUSAL = {**SMALL, "J": 16, "W": 16}


@pytest.fixture(scope="module")
def td(yc2_tiny):
    return tasks.load(Dataset.open(yc2_tiny), splits=("train", "val"))


def _run(td, name, params, seed, epochs=1, batch_size=8):
    engine.seed_everything(seed)
    model = registry.build(name, params, td.info)
    cfg = engine.OptimConfig(lr=1e-3, batch_size=batch_size)
    opt = engine.make_optimizer(model, cfg)
    logs = [engine.train_one_epoch(model, opt, td["train"], cfg, epoch=e, seed=seed) for e in range(epochs)]
    for log in logs:
        log.pop("samples_per_s")
    return model, logs


def test_seeded_runs_are_identical(td):
    a, logs_a = _run(td, "causal", CAUSAL, seed=3, epochs=2)
    b, logs_b = _run(td, "causal", CAUSAL, seed=3, epochs=2)
    assert logs_a == logs_b
    assert {k for k in logs_a[0] if k.startswith("loss")} == {"loss", "loss_mil", "loss_acl_spatial",
                                                            "loss_acl_temporal"}  # bda_form=code: BDA is in L_MIL
    assert "steps" in logs_a[0] and 0 <= logs_a[0]["acl_spatial_cge_step"] <= 1
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert engine.evaluate(a, td["val"], td.task, td.info) == engine.evaluate(b, td["val"], td.task, td.info)
    _, logs_c = _run(td, "causal", CAUSAL, seed=4, epochs=2)
    assert logs_c != logs_a


def test_epoch_bookkeeping(td):
    # 32 training rows in batches of 10: 3 steps, the last 2 rows dropped
    model, logs = _run(td, "stvg", SMALL, seed=0, batch_size=10)
    assert logs[0]["steps"] == 3
    assert logs[0]["loss"] == pytest.approx(logs[0]["loss_mil"])  # stvg: the loss is L_MIL alone
    cfg = engine.OptimConfig(batch_size=64)
    with pytest.raises(ValueError, match="cannot fill one batch"):
        engine.train_one_epoch(model, engine.make_optimizer(model, cfg), td["train"], cfg, 0, 0)


def test_logged_loss_is_the_mean_over_steps(td):
    """The epoch's ``loss`` is the mean of the per-step losses, and the steps visit the rows of a
    permutation seeded by (seed, epoch, rank), 8 at a time."""
    engine.seed_everything(1)
    model = registry.build("stvg", SMALL, td.info)
    cfg = engine.OptimConfig(lr=1e-3, batch_size=8)
    opt = engine.make_optimizer(model, cfg)
    losses, feats = [], []
    forward = model.forward

    def spy(batch):
        out = forward(batch)
        losses.append(float(out[0].detach()))
        feats.append(batch["features"])
        return out

    model.forward = spy
    out = engine.train_one_epoch(model, opt, td["train"], cfg, epoch=2, seed=1)
    assert len(losses) == out["steps"] == 4
    assert out["loss"] == pytest.approx(sum(losses) / 4)
    order = np.random.default_rng([1, 2, 0]).permutation(32)
    for s, f in enumerate(feats):
        expected = torch.from_numpy(td["train"].features[order[8 * s:8 * s + 8]].astype(np.float32))
        assert torch.equal(f, expected)


def test_optim_config_validation():
    with pytest.raises(ValueError, match="batch_size"):
        engine.OptimConfig(batch_size=1)
    with pytest.raises(ValueError, match="lr"):
        engine.OptimConfig(lr=0.0)
    with pytest.raises(ValueError, match="weight_decay"):
        engine.OptimConfig(weight_decay=-1.0)
    assert engine.OPTIM_KEYS[:4] == ("lr", "weight_decay", "batch_size", "grad_clip")


@pytest.mark.parametrize("clip", [0.0, 0.01])
def test_grad_clip_bounds_the_gradient_norm_at_each_step(td, clip):
    engine.seed_everything(0)
    model = registry.build("stvg", SMALL, td.info)
    cfg = engine.OptimConfig(lr=1e-3, batch_size=16, grad_clip=clip)
    opt = engine.make_optimizer(model, cfg)
    norms = []
    step = opt.step

    def spy(*a, **kw):
        norms.append(float(torch.sqrt(sum((p.grad ** 2).sum() for p in model.parameters() if p.grad is not None))))
        return step(*a, **kw)

    opt.step = spy
    engine.train_one_epoch(model, opt, td["train"], cfg, 0, 0)
    assert len(norms) == 2
    if clip:
        assert all(n <= clip * (1 + 1e-4) for n in norms)
    else:
        assert all(n > 0.01 for n in norms)  # unclipped gradients are larger than the clip above


@pytest.mark.parametrize("name,params,terms,groups", [
    ("causal", CAUSAL, {"mil", "acl_spatial", "acl_temporal"}, {"visual", "query", "temporal", "bda"}),
    ("scl", SMALL, {"mil_f", "mil_c", "caos", "stran", "ttran"}, {"stable", "context", "gate", "visual", "temporal"}),
    ("stvg", SMALL, {"mil"}, {"visual", "query", "temporal"}),
])
def test_the_gradient_probe_is_logged_every_epoch_and_changes_nothing(td, name, params, terms, groups, monkeypatch):
    _, logs = _run(td, name, params, seed=5, epochs=2)
    for log in logs:
        grads = {k: v for k, v in log.items() if k.startswith("grad/")}
        assert set(grads) == {f"grad/{t}/{g}" for t in terms for g in groups}
        assert all(math.isfinite(v) and v >= 0 for v in grads.values())
        mil = "mil_f" if name == "scl" else "mil"
        assert grads[f"grad/{mil}/visual"] > 0  # L_MIL (L^f_MIL) trains the visual encoder
    assert logs[0] != logs[1]  # the probe batch is fixed, the weights moved
    if name == "causal":  # its content sets, counted over the epoch's steps
        assert 0 <= logs[0]["acl_spatial_content_gt_share"] <= logs[0]["acl_spatial_content_gt_recall"] <= 1
        assert 0 <= logs[0]["acl_temporal_content_visible"] <= 1
    if name == "scl":
        assert 0 < logs[0]["caos_floor_active"] <= 1  # the share of CAOS's class terms on the eps_clust floor
        assert 1 / td.info.dims["N"] < logs[0]["stran_top_prob"] < 1
    # training without the probe is the same training: same losses, same weights
    model, logs_with = _run(td, name, params, seed=5, epochs=2)
    monkeypatch.setattr(engine, "_probe_epoch", lambda *a, **k: {})
    bare, logs_without = _run(td, name, params, seed=5, epochs=2)
    assert [{k: v for k, v in log.items() if not k.startswith("grad/")} for log in logs_with] == logs_without
    sa, sb = model.state_dict(), bare.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


# --------------------------------------------------------------- distributed
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_ranks(yc2_tiny, tmp_path_factory):
    """Run ``_distributed.worker`` on 2 gloo processes once; return each rank's results."""
    import torch.multiprocessing as mp

    if str(HERE) not in sys.path:  # spawned children import the worker by module name
        sys.path.insert(0, str(HERE))
    from _distributed import worker

    out = tmp_path_factory.mktemp("ranks")
    mp.spawn(worker, args=(2, str(yc2_tiny), str(out), _free_port()), nprocs=2, join=True)
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]


def test_ranks_read_disjoint_halves(two_ranks, td):
    assert two_ranks[0]["val_ids"] + two_ranks[1]["val_ids"] == td["val"].segment_ids
    assert two_ranks[0]["train_ids"] + two_ranks[1]["train_ids"] == td["train"].segment_ids
    assert len(two_ranks[0]["val_ids"]) == len(two_ranks[1]["val_ids"]) == 16


def test_distributed_evaluate_equals_a_single_process(two_ranks, td):
    engine.seed_everything(0)
    stvg = registry.build("stvg", SMALL, td.info)
    single = engine.evaluate(stvg, td["val"], td.task, td.info, batch_size=64)
    assert two_ranks[0]["stvg_metrics"] == single
    assert two_ranks[1]["stvg_metrics"] == single
    # and not trivially: the model scores differently from random on this split
    assert 0 < single["box_micro"] < 1


def test_ddp_training_keeps_ranks_in_step(two_ranks, td):
    r0, r1 = two_ranks
    # every rank logs the same all-reduced losses, with the same number of steps
    assert r0["train"] == [{**t, "samples_per_s": r0["train"][i]["samples_per_s"]} for i, t in enumerate(r1["train"])]
    assert [t["steps"] for t in r0["train"]] == [4, 4]
    # the gradient probe (each rank's own first rows, averaged over ranks) is there on both
    assert r0["train"][0]["grad/acl_spatial/visual"] > 0 and "grad/mil/bda" in r1["train"][1]
    assert all(math.isfinite(t["loss"]) for t in r0["train"])
    # parameters (DDP-averaged gradients) and memory banks (all-reduced updates) agree
    for k in r0["state"]:
        assert torch.equal(r0["state"][k], r1["state"][k]), k
    for bank in ("region", "frame"):
        assert torch.equal(r0["bank"][bank], r1["bank"][bank]), bank
        assert not torch.equal(r0["bank"][bank], r0["bank_init"][bank]), bank  # they were updated
    # the trained model evaluates identically split over 2 ranks and in one process
    model = registry.build("causal", CAUSAL, td.info)
    model.load_state_dict(r0["state"])
    single = engine.evaluate(model, td["val"], td.task, td.info)
    assert r0["causal_metrics"] == r1["causal_metrics"] == single


def test_collectives_put_their_tensors_where_the_backend_needs_them(monkeypatch):
    """NCCL has no CPU path: every reduction of per-rank statistics (steps, losses, metric counts,
    diagnostics) goes through models.base.reduce_over_ranks, which moves the tensor to the current
    CUDA device under NCCL and back to its own device afterwards (two ranks faked here)."""
    import inspect

    from grounding import engine
    from grounding.models import base

    monkeypatch.setattr(base.torch.cuda, "current_device", lambda: 3)
    monkeypatch.setattr(base.dist, "get_backend", lambda: "nccl")
    assert base.collective_device() == torch.device("cuda", 3)
    monkeypatch.setattr(base.dist, "get_backend", lambda: "gloo")
    assert base.collective_device() == torch.device("cpu")

    seen = []
    monkeypatch.setattr(base.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(base.dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(base, "collective_device", lambda: seen.append("asked") or torch.device("cpu"))
    monkeypatch.setattr(base.dist, "all_reduce", lambda buf, op=None: seen.append(op) or buf.mul_(2))
    t = torch.tensor([1.0, 2.5], dtype=torch.float64)
    out = base.reduce_over_ranks(t)
    assert out.tolist() == [2.0, 5.0] and out.device == t.device
    assert seen == ["asked", base.dist.ReduceOp.SUM]
    assert base.sum_over_ranks([1.0, 4.0]) == [2.0, 8.0]
    # the engine has no collective of its own that could bypass the device rule
    assert "dist.all_reduce" not in inspect.getsource(engine)
