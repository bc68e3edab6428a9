"""Local shard round trips, rank shares of a split, and padding of ragged WSVOG rows."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from grounding.data.schema import wsvog_schema
from grounding.data.shards import Dataset, DatasetWriter
from grounding.data.wsvog import WsvogArrays, ragged_to_padded

T, N, D = 2, 3, 4
DIMS = {"T": T, "N": N, "D": D}


def make_rows(n: int, start: int = 0, seed: int = 0) -> pa.Table:
    """``n`` WSVOG rows whose values encode their row number; row r has r % 4 instances and
    (r % 3) queries (so some rows have none)."""
    rng = np.random.default_rng(seed)
    cols = {k: [] for k in wsvog_schema(T, N, D, "float32").names}
    for r in range(start, start + n):
        n_inst, n_q = r % 4, r % 3
        cols["segment_id"].append(f"seg{r:04d}")
        cols["video_id"].append(f"vid{r // 2}")
        cols["recipe"].append("r")
        cols["sentence"].append(f"sentence {r}")
        cols["query_classes"].append([(r + j) % 7 for j in range(n_q)])
        cols["features"].append((np.arange(T * N * D) + 1000.0 * r).astype(np.float32))
        cols["proposals"].append(rng.uniform(0, 100, T * N * 4).astype(np.float32))
        cols["gt_class"].append([(r * 3 + i) % 7 for i in range(n_inst)])
        cols["gt_boxes"].append([float(r * 100 + i * 10 + k) for i in range(n_inst) for k in range(T * 4)])
        cols["gt_valid"].append([bool((r + i + tt) % 2) for i in range(n_inst) for tt in range(T)])
        cols["frame_width"].append(720)
        cols["frame_height"].append(405)
    return pa.table(cols, schema=wsvog_schema(T, N, D, "float32"))


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """23 train rows written in pieces of 5, 10 and 8; shards of 7 rows in row groups of 3;
    a 2-row val split."""
    root = tmp_path_factory.mktemp("shards") / "ds"
    full = make_rows(23)
    with DatasetWriter(root, "wsvog", DIMS, "float32", {"name": "test"}, rows_per_shard=7,
                       row_group_rows=3) as w:
        for a, b in ((0, 5), (5, 15), (15, 23)):
            w.write("train", full.slice(a, b - a))
        w.write("val", make_rows(2, start=100))
        w.add_table("classes", pa.table({"class_id": pa.array([0, 1], pa.int16())}))
    return root, full


def test_writer_layout_matches_the_manifest(written):
    root, _ = written
    ds = Dataset.open(root)
    m = ds.manifest
    train = m.split_shards("train")
    # 23 rows -> shards of 7, 7, 7, 2; row groups of 3 within each shard
    assert [s.rows for s in train] == [7, 7, 7, 2]
    assert [s.row_groups for s in train] == [[3, 3, 1], [3, 3, 1], [3, 3, 1], [2]]
    assert [s.path for s in train] == [f"train/part-{i:05d}.parquet" for i in range(4)]
    for s in [*train, *m.split_shards("val")]:
        md = pq.ParquetFile(root / s.path).metadata
        assert [md.row_group(g).num_rows for g in range(md.num_row_groups)] == s.row_groups
        assert md.num_rows == s.rows
    assert m.split_rows("val") == 2 and m.splits == ["train", "val"]
    assert set(m.tables) == {"classes"}
    # nothing but the dataset is left beside it (the staging folder was renamed into place)
    assert [p.name for p in root.parent.iterdir()] == ["ds"]
    ds.verify()


def test_round_trip(written):
    root, full = written
    ds = Dataset.open(root)
    got = ds.read_split("train")
    assert got.num_rows == 23
    assert got.to_pylist() == full.to_pylist()
    assert ds.read_split("val").column("segment_id").to_pylist() == ["seg0100", "seg0101"]
    assert ds.read_split("train", columns=["segment_id"]).column_names == ["segment_id"]
    assert ds.read_table("classes").column("class_id").to_pylist() == [0, 1]


def test_failed_write_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with DatasetWriter(tmp_path / "ds", "wsvog", DIMS, "float32", {}, rows_per_shard=2) as w:
            w.write("train", make_rows(5))
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    with DatasetWriter(tmp_path / "ds", "wsvog", DIMS, "float32", {}) as w:
        w.write("train", make_rows(1))
    with pytest.raises(FileExistsError):
        with DatasetWriter(tmp_path / "ds", "wsvog", DIMS, "float32", {}) as w:
            pass


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_rank_shares_partition_the_split(written, world):
    root, full = written
    ds = Dataset.open(root)
    all_ids = full.column("segment_id").to_pylist()
    shares = [ds.read_split("train", rank, world) for rank in range(world)]
    ids = [s.column("segment_id").to_pylist() for s in shares]
    # contiguous, disjoint, in order, each row exactly once; sizes differ by at most one
    assert sum(ids, []) == all_ids
    sizes = [len(x) for x in ids]
    assert max(sizes) - min(sizes) <= 1
    assert sizes == [(r + 1) * 23 // world - r * 23 // world for r in range(world)]
    for rank, share in enumerate(shares):  # full rows, not just ids
        lo = rank * 23 // world
        assert share.to_pylist() == full.slice(lo, len(ids[rank])).to_pylist()
    # a split smaller than the world: some ranks get an empty table with the full schema
    val = [ds.read_split("val", rank, world) for rank in range(world)]
    assert sum((v.column("segment_id").to_pylist() for v in val), []) == ["seg0100", "seg0101"]
    for v in val:
        assert v.schema.names == full.schema.names


def test_rank_outside_world_is_rejected(written):
    ds = Dataset.open(written[0])
    with pytest.raises(ValueError, match="rank 2 outside world size 2"):
        ds.read_split("train", 2, 2)


# ---------------------------------------------------------------- padding
def _check_arrays(arr: WsvogArrays, table: pa.Table):
    rows = table.to_pylist()
    n = len(rows)
    kq = max(1, max(len(r["query_classes"]) for r in rows))
    ki = max(1, max(len(r["gt_class"]) for r in rows))
    assert arr.queries.shape == (n, kq) and arr.gt_class.shape == (n, ki)
    assert arr.gt_boxes.shape == (n, ki, T, 4) and arr.gt_valid.shape == (n, ki, T)
    assert arr.features.shape == (n, T, N, D) and arr.proposals.shape == (n, T, N, 4)
    assert arr.queries.dtype == np.int64 and arr.gt_class.dtype == np.int64 and arr.gt_valid.dtype == bool
    for j, r in enumerate(rows):
        q, g = r["query_classes"], r["gt_class"]
        assert arr.queries[j].tolist() == q + [-1] * (kq - len(q))
        assert arr.gt_class[j].tolist() == g + [-1] * (ki - len(g))
        np.testing.assert_array_equal(arr.gt_boxes[j, :len(g)].reshape(-1), r["gt_boxes"])
        assert (arr.gt_boxes[j, len(g):] == 0).all()
        assert arr.gt_valid[j, :len(g)].reshape(-1).tolist() == r["gt_valid"]
        assert not arr.gt_valid[j, len(g):].any()
        np.testing.assert_array_equal(arr.features[j].reshape(-1), r["features"])
        np.testing.assert_array_equal(arr.proposals[j].reshape(-1), r["proposals"])
    assert arr.segment_ids == [r["segment_id"] for r in rows]


def test_from_table_pads_ragged_rows():
    table = make_rows(9)
    arr = WsvogArrays.from_table(table, T, N, D)
    # row 3 has 3 instances, rows 0/4/8 none; rows 2/5/8 have 2 queries
    assert arr.gt_class.shape == (9, 3) and arr.queries.shape == (9, 2)
    assert arr.gt_class[3].tolist() == [2, 3, 4]  # (3*3 + i) % 7
    assert arr.gt_class[0].tolist() == [-1, -1, -1]
    assert arr.gt_boxes[1, 0, 1].tolist() == [104.0, 105.0, 106.0, 107.0]  # row 1, instance 0, frame 1
    _check_arrays(arr, table)


@pytest.mark.parametrize("start,length", [(1, 2), (3, 5), (5, 1), (4, 1)])
def test_from_table_on_sliced_and_chunked_tables(start, length):
    table = make_rows(12)
    _check_arrays(WsvogArrays.from_table(table.slice(start, length), T, N, D), table.slice(start, length))
    chunked = pa.concat_tables([table.slice(start, length), table.slice(0, 3)])
    assert chunked.column("gt_class").num_chunks == 2
    _check_arrays(WsvogArrays.from_table(chunked, T, N, D), chunked)


def test_from_a_rank_share(written):
    ds = Dataset.open(written[0])
    for rank in range(3):
        share = ds.read_split("train", rank, 3)  # slices of row groups of several shards
        _check_arrays(WsvogArrays.from_table(share, T, N, D), share)


def test_ragged_to_padded_with_inner_size():
    col = pa.array([[1, 2, 3, 4], [], [5, 6]], pa.list_(pa.int32())).slice(0, 3)
    out = ragged_to_padded(col, inner=2, pad=-9)
    assert out.shape == (3, 2, 2)
    assert out.tolist() == [[[1, 2], [3, 4]], [[-9, -9], [-9, -9]], [[5, 6], [-9, -9]]]
    empty = ragged_to_padded(pa.array([[], []], pa.list_(pa.int16())), pad=-1)
    assert empty.shape == (2, 1) and (empty == -1).all()


def test_batch_trims_to_the_batch_maximum():
    arr = WsvogArrays.from_table(make_rows(9), T, N, D)  # global Kq = 2, I = 3
    b = arr.batch(np.array([1, 4]))  # rows 1 (1 query, 1 instance) and 4 (1 query, 0 instances)
    assert b["queries"].tolist() == [[1], [4]]
    assert b["gt_class"].tolist() == [[3], [-1]]
    assert b["gt_boxes"].shape == (2, 1, T, 4) and b["gt_valid"].shape == (2, 1, T)
    assert b["features"].dtype == torch.float32 and b["features"].shape == (2, T, N, D)
    # rows without any query (0, 3) or without any instance (0, 4, 8): one column of padding
    assert arr.batch(np.array([0, 3]))["queries"].tolist() == [[-1], [-1]]
    b = arr.batch(np.array([0, 4, 8]))
    assert b["gt_class"].tolist() == [[-1]] * 3 and b["gt_boxes"].shape == (3, 1, T, 4)
    assert not b["gt_valid"].any()
