"""Several Ray nodes on one machine: a sweep whose trials run 2-worker DDP across nodes."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from _sweeps import run_sweep, sweep_env


@pytest.fixture()
def three_nodes():
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    for _ in range(2):
        cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    try:
        yield cluster
    finally:
        cluster.shutdown()


@pytest.mark.slow
def test_two_worker_ddp_trials_spread_across_nodes(tmp_path, smoke_root, three_nodes):
    proc = run_sweep(tmp_path, "method=causal", "smoke=true", "trials=1", "concurrent=1", "workers=2",
                     f"ray.address={three_nodes.address}", f"data.root={smoke_root}", "name=multinode",
                     env=sweep_env(tmp_path))
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("video-grounding")
    children = client.search_runs([exp.experiment_id], filter_string="tags.sweep = 'multinode' and tags.trial_id != ''")
    children = [c for c in children if "mlflow.parentRunId" in c.data.tags]
    assert len(children) == 1  # one staged trial: its backbone task and its three DDP stages
    for c in children:
        assert c.info.status == "FINISHED"
        assert c.data.metrics["cluster/world_size"] == 2
        assert c.data.metrics["cluster/nodes"] == 2  # one CPU per node: the ranks cannot share a node
        assert [int(m.step) for m in client.get_metric_history(c.info.run_id, "train/loss")] == [1, 2]
        assert "test_ood/box_micro" in c.data.metrics
