"""The per-node shard cache: one download per node, shared across processes, size-bounded."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import pytest

from grounding.data import cache as cache_mod
from grounding.data.cache import ShardCache
from grounding.data.shards import Dataset, publish

from _data_helpers import REPO, new_bucket, reshard

READER = textwrap.dedent("""
    import os, sys, time
    sys.path.insert(0, {repo!r})
    from grounding.data.cache import ShardCache, sha256_file
    from grounding.data.shards import Dataset

    url, cache_dir, counter, go = sys.argv[1:5]
    ds = Dataset.open(url, cache=ShardCache(cache_dir))
    real_open = ds.fs.open

    def counting_open(path, mode="rb", **kw):  # every remote read of a shard leaves a line
        if path.endswith(".parquet"):
            with open(counter, "a") as f:
                f.write(path + "\\n")
            time.sleep(1.0)  # hold the download lock while the other process arrives
        return real_open(path, mode, **kw)

    ds.fs.open = counting_open
    entry = ds.manifest.split_shards("val")[0]
    while not os.path.exists(go):
        time.sleep(0.01)
    path = ds.local_file(entry)
    print(path, sha256_file(path) == entry.sha256, ds.read_split("val").num_rows)
""")


@pytest.fixture(scope="module")
def sharded(yc2_tiny, tmp_path_factory):
    return reshard(yc2_tiny, tmp_path_factory.mktemp("sharded") / "ds", rows_per_shard=10, row_group_rows=4)


@pytest.fixture(scope="module")
def published(s3_server, yc2_tiny):
    url = f"s3://{new_bucket(s3_server)}/tiny"
    publish(yc2_tiny, url)
    return url


def test_two_processes_download_a_remote_shard_once(published, tmp_path):
    script = tmp_path / "reader.py"
    script.write_text(READER.format(repo=str(REPO)))
    counter, go, cache_dir = tmp_path / "downloads.txt", tmp_path / "go", tmp_path / "node-cache"
    procs = [subprocess.Popen([sys.executable, str(script), published, str(cache_dir), str(counter), str(go)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    time.sleep(0.2)
    go.touch()
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [e for _, e in outs]
    lines = [o.split() for o, _ in outs]
    assert lines[0] == lines[1]  # the same cached file, verified by both, and the split read
    assert lines[0][1:] == ["True", "32"]
    assert counter.read_text().splitlines() == [f"{published[5:]}/val/part-00000.parquet"]
    assert list((cache_dir / "objects").glob("*.parquet")) == [cache_dir / "objects" / f"{lines[0][0].split('/')[-1]}"]


def test_eviction_keeps_the_cache_under_its_bound(s3_server, sharded, tmp_path):
    url = f"s3://{new_bucket(s3_server)}/sharded"
    publish(sharded.root, url)
    entries = [e for sp in ("train", "val") for e in sharded.manifest.split_shards(sp)]
    bound = int(2.5 * max(e.bytes for e in entries))
    cache = ShardCache(tmp_path / "c", max_bytes=bound)
    ds = Dataset.open(url, cache=cache)
    for e in entries:
        path = ds.local_file(e)
        assert cache.size_bytes() <= bound
        assert path.endswith(f"{e.sha256}.parquet")
    kept = {p.stem for p in cache.objects.glob("*.parquet")}
    assert entries[-1].sha256 in kept and entries[0].sha256 not in kept
    # A split larger than the bound still reads whole: every shard is opened as soon as it is verified.
    assert ds.read_split("train").equals(sharded.read_split("train"))
    assert cache.size_bytes() <= bound


def test_cache_location_and_bound_come_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("GROUNDING_CACHE_DIR", str(tmp_path / "node"))
    monkeypatch.setenv("GROUNDING_CACHE_MAX_GB", "0.5")
    c = ShardCache()
    assert c.dir == tmp_path / "node" and c.max_bytes == 2**29
    c2 = ShardCache(tmp_path / "explicit", max_bytes=123)
    assert c2.dir == tmp_path / "explicit" and c2.max_bytes == 123


def test_local_shards_are_hashed_once_per_node(yc2_tiny, tmp_path, monkeypatch):
    calls = []
    real = cache_mod.sha256_file
    monkeypatch.setattr(cache_mod, "sha256_file", lambda p: calls.append(p) or real(p))
    entry = Dataset.open(yc2_tiny).manifest.split_shards("val")[0]
    path = f"{yc2_tiny}/{entry.path}"
    ShardCache(tmp_path).check_local(path, entry, str(yc2_tiny))
    ShardCache(tmp_path).check_local(path, entry, str(yc2_tiny))  # another process on the node: stamped
    assert len(calls) == 1
