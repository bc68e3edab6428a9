"""The CUDA path: every method trains (bfloat16 autocast) and evaluates on a GPU.

Skipped cleanly where no CUDA device is visible (CI, CPU machines)."""

from __future__ import annotations

import math

import pytest
import torch

from grounding import engine, tasks
from grounding.data import benchmarks
from grounding.models import registry

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.mark.parametrize("method", registry.names())
def test_method_trains_and_evaluates_on_cuda(method, tmp_path):
    task = registry.task_of(method)
    bench = benchmarks.get(benchmarks.DEFAULT_FOR_TASK[task])
    ds = benchmarks.ensure(tmp_path / bench.name, bench.name, bench.smoke, log=lambda m: None)
    data = tasks.load(ds, splits=("train", "val"))
    fields = registry.config_fields(method)
    params = {k: v for k, v in {"embed_dim": 32, "heads": 4}.items() if k in fields}
    engine.seed_everything(0)
    model = registry.build(method, params, data.info).cuda()
    cfg = engine.OptimConfig(lr=1e-3, batch_size=8)
    opt = engine.make_optimizer(model, cfg)
    logs = engine.train_one_epoch(model, opt, data["train"], cfg, 0, 0, "cuda", amp=True)
    assert math.isfinite(logs["loss"])
    assert all(p.device.type == "cuda" for p in model.parameters())
    metrics = engine.evaluate(model, data["val"], data.task, data.info, device="cuda")
    assert set(metrics) == set(data.task.metric_names)
