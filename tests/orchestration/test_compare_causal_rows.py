"""Issue 12's reproduction command: every cell passes the comparison's pre-Ray checks on smoke data,
and (slow) the stvg control runs as a real comparison cell (local Ray, MLflow)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from _sweeps import sweep_env
from orchestration import preflight as pre
from orchestration.cli.compare_args import parse

ROWS = "joint_paper,staged_paper,spatial_only,temporal_only,no_bda,deconf_only,stvg_ensemble"


def test_every_reproduction_cell_builds_for_the_smoke_data(smoke_root):
    cfg = parse(["methods=stvg,causal", f"variants={ROWS}", "point=code", "seeds=1", "smoke=true",
                 f"data.root={smoke_root}"])
    assert [(c.method, c.variant, c.point) for c in cfg.cells] == [
        ("stvg", "base", "paper"), ("causal", "base", "code"), *[("causal", v, "code") for v in ROWS.split(",")]]
    ds = pre.open_dataset(cfg.first, Path.cwd(), log=lambda m: None)
    for c in cfg.cells:  # what run_compare checks before Ray starts; raises ConfigError on a problem
        pre.check_configurations(ds, c.method, [(f"{c.method} variant {c.variant}", c.params)], seed=c.seed)


@pytest.mark.slow
def test_stvg_control_runs_as_a_comparison_cell(tmp_path, smoke_root):
    proc = subprocess.run([sys.executable, "-m", "orchestration.compare", "methods=causal", "variants=stvg_ensemble",
                           "point=code", "seeds=1", "epochs=1", "smoke=true", f"data.root={smoke_root}", "name=ctl"],
                          cwd=tmp_path, env=sweep_env(tmp_path), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("video-grounding")
    runs = client.search_runs([exp.experiment_id], max_results=100)
    children = {r.data.tags["variant"]: r for r in runs if "mlflow.parentRunId" in r.data.tags
                and r.data.tags.get("kind") != "stage"}
    assert set(children) == {"base", "stvg_ensemble"}
    ctl = children["stvg_ensemble"]
    assert ctl.info.status == "FINISHED" and ctl.data.tags["point"] == "code"
    assert ctl.data.params["components"] == "stvg_control"
    for m in ("stage/stvg_1/val/box_micro", "stage/stvg_2/val/box_micro", "stage/stvg_3/val/box_micro",
              "test_iid/box_micro", "test_ood/box_micro"):
        assert m in ctl.data.metrics, m
    assert not [k for k in ctl.data.metrics if "acl" in k or "loss_bda" in k]  # no causal term trained
