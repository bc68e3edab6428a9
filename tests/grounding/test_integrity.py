"""A missing shard, a flipped byte, a truncated file, another schema version or another shard
schema: each gives a DataError naming the shard and what differs, before any row is returned,
for a local root and an s3:// root, and a failed remote read leaves nothing in the cache."""

from __future__ import annotations

import json
import shutil

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from grounding.data.cache import ShardCache, sha256_file
from grounding.data.manifest import DataError
from grounding.data.shards import Dataset, publish

from _data_helpers import new_bucket, s3fs_for

SHARD = "train/part-00000.parquet"


@pytest.fixture(params=["local", "s3"])
def root(request, yc2_tiny, tmp_path):
    """A fresh copy of the tiny benchmark: ``(root, fs, path)`` locally or on the moto server."""
    if request.param == "local":
        dest = tmp_path / "ds"
        shutil.copytree(yc2_tiny, dest)
        return str(dest), fsspec.filesystem("file"), str(dest)
    url = request.getfixturevalue("s3_server")
    dest = f"s3://{new_bucket(url)}/ds"
    publish(yc2_tiny, dest)
    return dest, s3fs_for(url), dest[5:]


def _flip(data: bytes) -> bytes:
    i = len(data) // 2
    return data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1:]


def _objects(cache_dir) -> set[str]:
    d = cache_dir / "objects"
    return {p.name for p in d.iterdir()} if d.exists() else set()


@pytest.mark.parametrize("kind, message", [
    ("missing", r"shard {root}/train/part-00000\.parquet is missing \(listed in the manifest\)"),
    ("flipped", r"shard {root}/train/part-00000\.parquet fails its checksum: sha256 \w+…, the manifest says \w+…"),
    ("truncated", r"shard {root}/train/part-00000\.parquet has (\d+) bytes, the manifest says (\d+) \(truncated"),
])
def test_a_bad_shard_is_named_before_any_row_is_read(root, kind, message, tmp_path):
    url, fs, path = root
    target = f"{path}/{SHARD}"
    data = fs.cat_file(target)
    if kind == "missing":
        fs.rm(target)
    elif kind == "flipped":
        fs.pipe_file(target, _flip(data))
    else:
        fs.pipe_file(target, data[:-100])
    if hasattr(fs, "invalidate_cache"):
        fs.invalidate_cache()
    cache_dir = tmp_path / "cache"
    ds = Dataset.open(url, cache=ShardCache(cache_dir))
    before = _objects(cache_dir)
    with pytest.raises(DataError, match=message.format(root=url.rstrip("/"))) as e:
        ds.read_split("train")
    if kind == "truncated":
        assert f"has {len(data) - 100} bytes, the manifest says {len(data)}" in str(e.value)
    assert _objects(cache_dir) == before  # nothing (not even a temporary file) from the failed read
    with pytest.raises(DataError, match="part-00000"):
        ds.verify()
    ds.read_split("val")  # the other splits are untouched and still read


def test_another_schema_version_is_refused_when_opening(root):
    url, fs, path = root
    manifest = json.loads(fs.cat_file(f"{path}/manifest.json"))
    manifest["schema_version"] = 99
    fs.pipe_file(f"{path}/manifest.json", json.dumps(manifest).encode())
    if hasattr(fs, "invalidate_cache"):
        fs.invalidate_cache()
    with pytest.raises(DataError, match=r"manifest\.json: schema version 99 differs from the supported versions 1, 2"):
        Dataset.open(url)


def test_a_shard_of_another_schema_is_named_even_with_a_matching_checksum(root, tmp_path):
    """A shard replaced by one of another layout (and the manifest updated to its checksum)."""
    url, fs, path = root
    local = tmp_path / "other.parquet"
    pq.write_table(pa.table({"segment_id": ["a"], "features": pa.array([[1.0, 2.0]], pa.list_(pa.float32(), 2))}),
                   local)
    fs.put_file(str(local), f"{path}/{SHARD}")
    manifest = json.loads(fs.cat_file(f"{path}/manifest.json"))
    entry = next(s for s in manifest["shards"] if s["path"] == SHARD)
    entry.update(bytes=local.stat().st_size, sha256=sha256_file(local), rows=1, row_groups=[1])
    fs.pipe_file(f"{path}/manifest.json", json.dumps(manifest).encode())
    if hasattr(fs, "invalidate_cache"):
        fs.invalidate_cache()
    ds = Dataset.open(url, cache=ShardCache(tmp_path / "cache"))
    with pytest.raises(DataError, match=rf"shard {url}/train/part-00000\.parquet has another schema .*differs in"):
        ds.read_split("train")


def test_missing_manifest_names_the_root(tmp_path):
    with pytest.raises(DataError, match=rf"no dataset at {tmp_path}: manifest\.json is missing"):
        Dataset.open(tmp_path)
