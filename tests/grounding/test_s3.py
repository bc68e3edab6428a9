"""s3:// dataset roots on a moto server over loopback: publish, read, rank shares, credentials."""

from __future__ import annotations

import json

import numpy as np
import pytest

from grounding.data.cache import ShardCache
from grounding.data.shards import Dataset, publish
from grounding.data.storage import redact
from grounding.data.wsvog import WsvogArrays

from _data_helpers import cli, new_bucket, reshard, s3fs_for


@pytest.fixture(scope="module")
def sharded(yc2_tiny, tmp_path_factory):
    """The tiny benchmark in shards of 10 rows, row groups of 4 (32 rows per split: 4 shards)."""
    return reshard(yc2_tiny, tmp_path_factory.mktemp("sharded") / "ds", rows_per_shard=10, row_group_rows=4)


@pytest.fixture(scope="module")
def published(s3_server, sharded):
    url = f"s3://{new_bucket(s3_server)}/datasets/yc2-tiny"
    publish(sharded.root, url)
    return url


def test_published_dataset_reads_like_the_local_one(published, sharded, tmp_path):
    ds = Dataset.open(published, cache=ShardCache(tmp_path))
    assert ds.remote and ds.digest == sharded.digest
    assert len(sharded.manifest.split_shards("train")) == 4
    for sp in sharded.manifest.splits:
        assert ds.read_split(sp).equals(sharded.read_split(sp))
    d = ds.manifest.dims
    a = WsvogArrays.from_table(ds.read_split("test_ood"), d["T"], d["N"], d["D"])
    b = WsvogArrays.from_table(sharded.read_split("test_ood"), d["T"], d["N"], d["D"])
    np.testing.assert_array_equal(a.features, b.features)
    np.testing.assert_array_equal(a.gt_boxes, b.gt_boxes)
    assert ds.read_table("classes").equals(sharded.read_table("classes"))


@pytest.mark.parametrize("world", [1, 2, 3, 5])
def test_rank_shares_read_from_s3_cover_the_split_exactly_once(published, sharded, tmp_path, world):
    ds = Dataset.open(published, cache=ShardCache(tmp_path))
    want = sharded.read_split("val", columns=["segment_id"])["segment_id"].to_pylist()
    shares = [ds.read_split("val", r, world, columns=["segment_id"])["segment_id"].to_pylist() for r in range(world)]
    assert [s for share in shares for s in share] == want
    assert max(map(len, shares)) - min(map(len, shares)) <= 1


def test_a_rank_fetches_only_the_shards_it_reads(published, tmp_path):
    cache = ShardCache(tmp_path)
    ds = Dataset.open(published, cache=cache)
    t = ds.read_split("train", 0, 3)  # rows [0, 10) of 32: the first shard only
    assert t.num_rows == 10
    fetched = {p.stem for p in (tmp_path / "objects").glob("*.parquet")}
    assert fetched == {ds.manifest.split_shards("train")[0].sha256}


def test_explicit_storage_options_instead_of_the_environment(s3_server, published, monkeypatch, tmp_path):
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3")
    opts = {"endpoint_url": s3_server, "key": "testing", "secret": "testing"}
    ds = Dataset.open(published, cache=ShardCache(tmp_path), storage_options=opts)
    assert ds.read_split("val").num_rows == 32
    assert redact(opts) == {"endpoint_url": s3_server}


def test_publish_refuses_a_destination_that_holds_a_dataset(published, sharded):
    with pytest.raises(FileExistsError, match="already holds a dataset"):
        publish(sharded.root, published)


def test_credentials_never_appear_in_manifests_or_cli_output(s3_server, sharded, tmp_path):
    key, secret = "AKIAGROUNDINGSENTINEL7", "sEcReT+sentinel/Value42"  # moto accepts any pair
    env = {"AWS_ACCESS_KEY_ID": key, "AWS_SECRET_ACCESS_KEY": secret, "AWS_SESSION_TOKEN": "tok-sentinel-99"}
    url = f"s3://{new_bucket(s3_server)}/cred"
    runs = [cli("publish", str(sharded.root), url, env=env),
            cli("verify", url, "--cache-dir", str(tmp_path / "c"), env=env),
            cli("describe", url, env=env),
            cli("describe", url, "--json", "--shards", env=env),
            cli("verify", f"s3://{new_bucket(s3_server)}/nothing-here", env=env)]  # a failing one too
    assert [r.returncode for r in runs] == [0, 0, 0, 0, 1], [r.stderr for r in runs]
    for r in runs:
        for s in (key, secret, "tok-sentinel-99"):
            assert s not in r.stdout and s not in r.stderr
    remote_manifest = s3fs_for(s3_server).cat_file(url[5:] + "/manifest.json").decode()
    for text in (remote_manifest, (sharded.root and open(f"{sharded.root}/manifest.json").read())):
        for s in (key, secret, "testing"):
            assert s not in text
    json.loads(remote_manifest)


def test_scrub_and_producer_drop_credentials(monkeypatch):
    from grounding.data.cli import scrub
    from grounding.data.converters.common import producer

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "very-secret-value")
    assert scrub("failed with very-secret-value at s3://AK:pw@bucket/x") == "failed with *** at s3://***@bucket/x"
    p = producer("m", {"key": "AK", "secret": "S", "token": "T", "features": "/data/f"}, {})
    assert p["args"] == {"features": "/data/f"}
