"""The node-local mapped form of a split (grounding/data/mapped.py): one valid copy under concurrent
first use, rebuilt when truncated or foreign, batches equal to the Parquet reader's for every task
family (over several shards, whose ragged widths differ), DDP ranks reading disjoint parts."""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from grounding import tasks
from grounding.data import mapped
from grounding.data.benchmarks import charades, vidstg
from grounding.data.cache import ShardCache
from grounding.data.shards import Dataset, DatasetWriter

def _reshard(src: Path, dst: Path, rows: int) -> Path:
    """The dataset at ``src`` rewritten in shards of ``rows`` rows (several shards per split)."""
    ds = Dataset.open(src)
    m = ds.manifest
    w = DatasetWriter(dst, m.task, m.dims, m.feature_dtype, m.producer, rows_per_shard=rows,
                      row_group_rows=max(1, rows // 2), extra=m.extra)
    with w:
        w.text = m.text
        for name in m.tables:
            w.add_table(name, ds.read_table(name))
        for split in m.splits:
            w.write(split, ds.read_split(split))
    return dst


@pytest.fixture(scope="module")
def roots(tmp_path_factory, yc2_tiny) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("mapped")
    charades.generate(base / "ch", charades.CharadesConfig(limit=6, L=16, D=16))
    vidstg.generate(base / "vs", vidstg.VidSTGConfig(limit=6, T=16, N=8, Df=8, Dr=8), workers=1)
    return {"wsvog": _reshard(yc2_tiny, base / "yc2-7", 7), "moment": _reshard(base / "ch", base / "ch-2", 2),
            "tube": _reshard(base / "vs", base / "vs-2", 2)}


def _open(root, cache_dir) -> Dataset:
    return Dataset.open(root, cache=ShardCache(cache_dir))


def _same_batches(a, b, seed=0):
    assert len(a) == len(b)
    order = np.random.default_rng(seed).permutation(len(a))
    for idx in (order[:5], order[5:], np.arange(len(a))):
        x, y = a.batch(idx), b.batch(idx)
        assert x.keys() == y.keys()
        for k in x:
            assert x[k].dtype == y[k].dtype and torch.equal(x[k], y[k]), k


@pytest.mark.parametrize("family", ["wsvog", "moment", "tube"])
def test_batches_equal_the_parquet_readers(roots, tmp_path, family):
    ds = _open(roots[family], tmp_path)
    assert len(ds.manifest.split_shards("train")) > 1
    on_map = tasks.load(ds, mapped=True)
    in_memory = tasks.load(ds, mapped=False)
    assert on_map.splits.keys() == in_memory.splits.keys()
    for split in on_map.splits:
        a, b = on_map[split], in_memory[split]
        _same_batches(a, b)
        feats = a.features
        assert isinstance(feats, np.memmap) and not feats.flags.writeable
        assert feats.dtype == np.dtype(ds.manifest.feature_dtype)  # half precision until the batch
        for ids in ("segment_ids", "sample_ids", "video_ids"):
            assert getattr(a, ids, None) == getattr(b, ids, None)
    info = on_map.info.train_features
    assert info is not None and info.dtype == np.float16 and isinstance(info, np.memmap)


@pytest.mark.parametrize("family", ["wsvog", "moment", "tube"])
def test_ddp_ranks_read_disjoint_parts(roots, tmp_path, family):
    ds = _open(roots[family], tmp_path)

    def ids(a) -> list:  # a sample: its row (segment, or video) and, for moment/tube, its sentence
        if family == "wsvog":
            return list(a.segment_ids)
        return [(a.video_ids[v], s) for v, s in zip(a.video_index, a.sample_ids)]

    whole = ids(tasks.load(ds, splits=("train",))["train"])
    for world in (2, 3):
        parts = []
        for rank in range(world):
            a = tasks.load(ds, splits=("train",), rank=rank, world=world)["train"]
            b = tasks.load(ds, splits=("train",), rank=rank, world=world, mapped=False)["train"]
            assert ids(a) == ids(b)  # the rows read_split gives this rank
            _same_batches(a, b, seed=rank)
            parts.append(ids(a))
        flat = [s for p in parts for s in p]
        assert len(set(flat)) == len(flat) and sorted(flat) == sorted(whole)


def _split_folder(ds: Dataset, split="train") -> Path:
    return mapped.split_dir(ds.cache, ds.digest, split)


def _first_use(root, cache, barrier, queue):
    barrier.wait()  # every process opens the node cache at the same moment
    try:
        f = tasks.load(_open(root, cache), splits=("train",))["train"].features
        queue.put((type(f).__name__, hashlib.sha256(np.ascontiguousarray(f)).hexdigest()))
    except BaseException as e:  # noqa: BLE001 - reported to the test
        queue.put(("error", repr(e)))


def test_concurrent_first_use_makes_one_valid_copy(roots, tmp_path, capfd):
    root, cache = roots["wsvog"], tmp_path / "cache"
    ctx = mp.get_context("fork")  # processes of their own (own locks, own maps), started in ms
    n = 4
    barrier, queue = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_first_use, args=(root, cache, barrier, queue)) for _ in range(n)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert all(p.exitcode == 0 for p in procs) and len(set(results)) == 1, results
    assert results[0][0] == "memmap"
    assert "rebuilding" not in capfd.readouterr().err
    ds = _open(root, cache)
    folder = _split_folder(ds)
    siblings = sorted(p.name for p in folder.parent.iterdir() if not p.name.endswith(".lock"))
    assert siblings == ["train"]  # one copy, no staging folder left
    meta = mapped._check(ds, folder, "train")
    want = tasks.load(ds, splits=("train",), mapped=False)["train"].features
    assert np.array_equal(np.load(folder / "features.npy", mmap_mode="r"), want)
    assert meta["files"]["features.npy"]["dtype"] == want.dtype.str


def _corrupt_truncate(folder: Path):
    p = folder / "features.npy"
    os.truncate(p, p.stat().st_size - 64)


def _corrupt_same_size(folder: Path):
    p = folder / "features.npy"  # foreign contents, same size and header: only the sha256 tells
    st = p.stat()
    with open(p, "r+b") as f:
        f.seek(st.st_size - 256)
        f.write(os.urandom(256))
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))


def _corrupt_foreign_meta(folder: Path):
    meta = json.loads((folder / "meta.json").read_text())
    meta["digest"] = "0" * 64  # a copy of another dataset
    (folder / "meta.json").write_text(json.dumps(meta))


def _corrupt_foreign_file(folder: Path):
    np.save(folder / "gt_class.npy", np.zeros((3, 3), np.int64))  # another shape than the meta's


@pytest.mark.parametrize("corrupt", [_corrupt_truncate, _corrupt_same_size, _corrupt_foreign_meta,
                                     _corrupt_foreign_file])
def test_truncated_or_foreign_copy_is_detected_and_rebuilt(roots, tmp_path, capfd, corrupt):
    ds = _open(roots["wsvog"], tmp_path)
    tasks.load(ds, splits=("train",))
    folder = _split_folder(ds)
    corrupt(folder)
    fresh = _open(roots["wsvog"], tmp_path)  # another process on the node: no in-memory verification
    data = tasks.load(fresh, splits=("train",))["train"]
    assert "rebuilding" in capfd.readouterr().err
    mapped._check(fresh, folder, "train")
    _same_batches(data, tasks.load(fresh, splits=("train",), mapped=False)["train"])


def test_killed_writer_leaves_nothing_used(roots, tmp_path):
    ds = _open(roots["wsvog"], tmp_path)
    folder = _split_folder(ds)
    partial = folder.parent / f".{folder.name}.partial-deadbeef"
    partial.mkdir(parents=True)
    (partial / "features.npy").write_bytes(b"half")
    tasks.load(ds, splits=("train",))
    assert not partial.exists() and (folder / "meta.json").exists()


def test_a_remote_root_is_mapped_in_the_node_cache(roots, s3_server, tmp_path):
    from _data_helpers import new_bucket

    from grounding.data.shards import publish

    url = f"s3://{new_bucket(s3_server)}/yc2"
    publish(roots["wsvog"], url)
    remote = _open(url, tmp_path)
    data = tasks.load(remote, splits=("train", "val"))
    assert (_split_folder(remote, "val") / "meta.json").exists()
    local = tasks.load(_open(roots["wsvog"], tmp_path / "other"), splits=("train", "val"), mapped=False)
    for split in ("train", "val"):
        _same_batches(data[split], local[split])


def test_a_cache_that_cannot_be_written_falls_back_to_the_in_memory_reader(roots, tmp_path, capfd, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(mapped, "_build", full)
    data = tasks.load(_open(roots["wsvog"], tmp_path), splits=("val",))["val"]
    assert not isinstance(data.features, np.memmap)
    assert "cannot write the mapped copy of val" in capfd.readouterr().err
