"""The GPU sweep path: fractional GPUs per worker and DDP over nccl. Skipped without CUDA."""

from __future__ import annotations

import pytest
import torch
from mlflow.tracking import MlflowClient

from _sweeps import run_sweep

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.mark.parametrize("workers", [1, 2])
def test_sweep_on_fractional_gpus(tmp_path, smoke_root, workers):
    proc = run_sweep(tmp_path, "method=causal", "smoke=true", f"data.root={smoke_root}", f"workers={workers}",
                     "gpus_per_worker=0.5", "cpus_per_worker=1", "concurrent=1", "name=gpu")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("video-grounding")
    children = [r for r in client.search_runs([exp.experiment_id]) if "mlflow.parentRunId" in r.data.tags]
    assert len(children) == 2 and all(c.info.status == "FINISHED" for c in children)
    assert all(c.data.metrics["cluster/world_size"] == workers for c in children)
