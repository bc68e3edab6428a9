"""A sweep against moto's S3 server over HTTP on 127.0.0.1: shards read from s3:// through the
node cache, Tune state and checkpoints written to s3://, credentials recorded nowhere."""

from __future__ import annotations

import json
import os

import pytest
import s3fs
from mlflow.tracking import MlflowClient

from _sweeps import run_sweep, sweep_env
from grounding.data.shards import Dataset, publish

SECRET = "sekrit-7f3a9c"  # moto accepts any credentials; a distinctive one is easy to look for


@pytest.mark.slow  # a whole sweep (50 s): the S3 store paths have fast tests in tests/grounding/test_s3.py
def test_sweep_reads_shards_and_writes_state_in_s3(tmp_path, smoke_root, s3_server):
    fs = s3fs.S3FileSystem(endpoint_url=s3_server, key="testing", secret="testing")
    fs.mkdir("lab")
    publish(smoke_root, "s3://lab/datasets/yc2")

    env = sweep_env(tmp_path, AWS_SECRET_ACCESS_KEY=SECRET)
    proc = run_sweep(tmp_path, "method=causal", "smoke=true", "data.root=s3://lab/datasets/yc2",
                     "storage_path=s3://lab/ray-results", f"data.cache_dir={tmp_path / 'node-cache'}",
                     "name=s3sweep", env=env)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]

    # the shards were fetched once into the node cache, under their sha256, and verified
    manifest = Dataset.open(smoke_root).manifest
    cached = {p.stem for p in (tmp_path / "node-cache" / "objects").glob("*.parquet")}
    assert cached == {s.sha256 for s in manifest.shards} | {t.sha256 for t in manifest.tables.values()}

    # Tune's experiment state, the sweep state and every trial's checkpoints are in S3
    listing = fs.ls("lab/ray-results/s3sweep")
    names = [p.rsplit("/", 1)[-1] for p in listing]
    assert "sweep.json" in names and "tuner.pkl" in names
    assert any(n.startswith("experiment_state") for n in names)
    trials = [p for p in listing if p.rsplit("/", 1)[-1].startswith("trial_fn_")]
    assert len(trials) == 2
    for t in trials:
        assert sorted(p.rsplit("/", 1)[-1] for p in fs.ls(t) if "checkpoint_" in p) == ["checkpoint_000000", "checkpoint_000001"]
    state = json.loads(fs.cat("lab/ray-results/s3sweep/sweep.json"))

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("video-grounding")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 4 and all(r.info.status == "FINISHED" for r in runs)  # parent, 2 trials, the backbone
    # the staged causal backbone was built once, into the sweep's S3 storage, manifest last
    (stage,) = fs.ls("lab/ray-results/s3sweep/stages")
    assert sorted(p.rsplit("/", 1)[-1] for p in fs.ls(stage)) == ["history.json", "manifest.json", "stage.pt"]
    (stage_run,) = [r for r in runs if r.data.tags.get("kind") == "stage"]
    assert stage_run.data.tags["stage_uri"] == "s3://" + stage
    parent = next(r for r in runs if r.info.run_id == state["parent_run_id"])
    assert parent.data.params["data.root"] == "s3://lab/datasets/yc2"
    # credentials appear in no param, tag, log line or file the sweep wrote
    for r in runs:
        for value in [*r.data.params.values(), *r.data.tags.values()]:
            assert SECRET not in value
    assert SECRET not in proc.stdout and SECRET not in proc.stderr
    assert SECRET not in json.dumps(state) and SECRET not in fs.cat("lab/datasets/yc2/manifest.json").decode()
    assert os.environ.get("AWS_SECRET_ACCESS_KEY") != SECRET  # the test did not leak it either
