"""Every registered method trains and evaluates on its task's default benchmark.

Parametrised over ``registry.names()``, so a method added later (e.g. a moment method on the
``charades`` benchmark) is covered with no change here; a method is skipped only while the
benchmark its task family trains on is not registered yet.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from grounding import engine, tasks
from grounding.data import benchmarks
from grounding.data.shards import Dataset
from grounding.models import registry
from grounding.models.base import GroundingModel, ModelConfig

# Small sizes, passed only to methods whose Config has the field.
SMALL = {"embed_dim": 32, "hidden_dim": 32, "d_model": 32, "heads": 4, "num_heads": 4, "J": 16, "W": 16}

# Shape of a task family's predictions for one batch, as its Task documents it (None: any size;
# families not listed: finite tensors only).
PREDICTION_SHAPE = {
    # proposal scores [B, Kq, T, N]
    "wsvog": lambda batch, dims: (batch["features"].shape[0], batch["queries"].shape[1], dims["T"], dims["N"]),
    # ranked (start, end) proposals [B, K, 2], one row per query (the "proposals" of a
    # {"proposals", "top1"} prediction, whose top1 is [B, 2])
    "moment": lambda batch, dims: (batch["moments"].shape[0], None, 2),
}


def small_params(name: str) -> dict:
    fields = registry.config_fields(name)
    return {k: v for k, v in SMALL.items() if k in fields}


def _tensors(x):
    if torch.is_tensor(x):
        yield x
    elif isinstance(x, dict):
        for v in x.values():
            yield from _tensors(v)
    elif isinstance(x, (list, tuple)):
        for v in x:
            yield from _tensors(v)


@pytest.fixture(scope="module")
def method_data(benchmark_root):
    """``method_data(name)`` -> (task data, eval split name); skips if the benchmark is missing."""
    cache: dict[str, tuple] = {}

    def get(name: str):
        task = registry.task_of(name)
        bench = benchmarks.DEFAULT_FOR_TASK.get(task)
        if bench is None or bench not in benchmarks.BENCHMARKS:
            pytest.skip(f"no benchmark registered for task family {task!r} (method {name}) yet")
        if bench not in cache:
            ds = Dataset.open(benchmark_root(bench))
            assert ds.manifest.task == task
            evals = [sp for sp in tasks.EVAL_SPLITS if sp in ds.manifest.splits]
            assert evals, f"{bench} has no evaluation split"
            cache[bench] = (tasks.load(ds, splits=("train", evals[0])), evals[0])
        return cache[bench]

    return get


def test_registry_lists_the_core_methods():
    names = registry.names()
    assert {"stvg", "causal"} <= set(names)
    for name in names:
        cls = registry.get(name)
        assert issubclass(cls, GroundingModel) and cls.method == name
        assert issubclass(cls.Config, ModelConfig)
        assert isinstance(registry.task_of(name), str)
    with pytest.raises(KeyError, match="unknown method"):
        registry.get("no_such_method")
    with pytest.raises(KeyError, match="allowed: embed_dim"):
        registry.make_config("stvg", {"embed_dim": 8, "nonsense": 1})


@pytest.mark.parametrize("name", registry.names())
def test_method_trains_and_evaluates(name, method_data):
    torch.set_num_threads(1)
    td, eval_split = method_data(name)
    task = td.task
    assert task.name == registry.task_of(name)
    train, val = td["train"], td[eval_split]
    bs = min(16, len(train))
    assert bs >= 2

    engine.seed_everything(0)
    model = registry.build(name, small_params(name), td.info)
    assert model.task == task.name

    # one batch: finite loss, finite logs, a gradient for every trainable parameter. A model
    # that trains in phases (engine hook epoch_start, e.g. vcma's E/M alternation) gets one batch
    # per phase of its first two epochs, and every parameter must be reached by one of them.
    model.train()
    batch = train.batch(np.arange(bs))
    for epoch in (0, 1) if hasattr(model, "epoch_start") else (None,):
        if epoch is not None:
            model.epoch_start(epoch)
        loss, logs = model(batch)
        assert loss.dim() == 0 and torch.isfinite(loss)
        assert all(isinstance(v, float) and math.isfinite(v) for v in logs.values())
        loss.backward()
        if epoch in (0, None):
            logs0 = logs  # what epoch 0 (trained below) logs
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert trainable
    missing = [n for n, p in trainable if p.grad is None]
    assert missing == [], f"{name}: no gradient reached {missing}"
    assert all(torch.isfinite(p.grad).all() for _, p in trainable)
    assert sum(float(p.grad.abs().sum()) for _, p in trainable) > 0
    model.zero_grad(set_to_none=True)

    # one epoch
    before = {n: p.detach().clone() for n, p in trainable}
    cfg = engine.OptimConfig(lr=1e-3, batch_size=bs)
    out = engine.train_one_epoch(model, engine.make_optimizer(model, cfg), train, cfg, epoch=0, seed=0)
    assert out["steps"] == len(train) // bs
    assert math.isfinite(out["loss"]) and out["samples_per_s"] > 0
    assert set(logs0) <= set(out)
    assert any(not torch.equal(before[n], p) for n, p in trainable)  # the optimiser stepped

    # predictions: the task's shape, finite, deterministic in eval mode
    vb = val.batch(np.arange(min(8, len(val))))
    model.eval()
    pred = model.predict(vb)
    ts = list(_tensors(pred))
    assert ts and all(torch.isfinite(t.float()).all() for t in ts)
    if task.name in PREDICTION_SHAPE:
        want = PREDICTION_SHAPE[task.name](vb, td.info.dims)
        ranked = pred
        if task.name == "moment" and isinstance(pred, dict):
            ranked = pred["proposals"]
            assert tuple(pred["top1"].shape) == (want[0], 2)
        assert ranked.dim() == len(want), (tuple(ranked.shape), want)
        assert all(w is None or g == w for g, w in zip(ranked.shape, want)), (tuple(ranked.shape), want)
    again = list(_tensors(model.predict(vb)))
    assert all(torch.equal(a, b) for a, b in zip(ts, again))

    metrics = engine.evaluate(model, val, task, td.info, batch_size=16)
    assert set(metrics) == set(task.metric_names)
    assert task.default_metric in task.metric_names
    assert all(math.isfinite(v) for v in metrics.values())
