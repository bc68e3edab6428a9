"""The generated YouCook2-BB benchmark: determinism, held-out classes, box geometry, upper bound."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from grounding import tasks
from grounding.data import benchmarks
from grounding.data.benchmarks import youcook2
from grounding.data.shards import Dataset
from grounding.metrics.wsvog import box_iou

SPLITS = ("train", "val", "test_iid", "test_ood")


@pytest.fixture(scope="module")
def tiny(yc2_tiny):
    ds = Dataset.open(yc2_tiny)
    return ds, tasks.load(ds)


@pytest.fixture(scope="module")
def plan():
    cfg = youcook2.YC2Config(limit=32, D=16)
    ann = youcook2.YC2Annotations.load()
    world = youcook2.build_world(cfg, ann)
    return ann, world, youcook2.split_plan(ann, world, cfg.limit)


def _iou(a):
    """IoU[n, I, T, N] of every proposal with every instance box of its frame."""
    P = torch.from_numpy(np.array(a.proposals, np.float64))
    G = torch.from_numpy(np.array(a.gt_boxes, np.float64))
    return box_iou(P[:, None], G[:, :, :, None])


def _valid(a):
    return a.gt_valid & (a.gt_class >= 0)[..., None]


# ------------------------------------------------------------------ determinism
def test_same_config_and_seed_give_identical_bytes(tmp_path):
    cfg = youcook2.YC2Config(limit=6, D=8)
    a = youcook2.generate(tmp_path / "a", cfg, workers=1)
    b = youcook2.generate(tmp_path / "b", cfg, workers=1)
    # a process pool and another chunking must not change a byte either
    c = youcook2.generate(tmp_path / "c", cfg, workers=2, chunk=4)
    assert a.digest() == b.digest() == c.digest()
    shas = [(s.path, s.sha256) for s in a.shards]
    assert shas == [(s.path, s.sha256) for s in b.shards] == [(s.path, s.sha256) for s in c.shards]
    assert {k: v.sha256 for k, v in a.tables.items()} == {k: v.sha256 for k, v in c.tables.items()}
    # the manifest records what made it
    assert a.producer["name"] == "grounding.data.youcook2"
    assert a.producer["args"]["limit"] == 6 and a.producer["args"]["seed"] == 0
    Dataset.open(tmp_path / "c").verify()
    # another seed gives other data
    d = youcook2.generate(tmp_path / "d", youcook2.YC2Config(limit=6, D=8, seed=1), workers=1)
    assert d.digest() != a.digest()
    assert all(x.sha256 != y.sha256 for x, y in zip(a.shards, d.shards))


def test_ensure_generates_once_then_reuses_and_refuses_other_arguments(tmp_path):
    from grounding.data.manifest import DataError

    root = tmp_path / "bench"
    logs = []
    ds = benchmarks.ensure(root, "youcook2", {"limit": 4, "D": 8}, log=logs.append)
    assert len(logs) == 1 and ds.manifest.split_rows("train") == 4
    mtime = (root / "manifest.json").stat().st_mtime_ns
    again = benchmarks.ensure(root, "youcook2", {"limit": 4, "D": 8}, log=logs.append)
    assert len(logs) == 1 and again.digest == ds.digest
    assert (root / "manifest.json").stat().st_mtime_ns == mtime
    with pytest.raises(DataError, match="limit"):
        benchmarks.ensure(root, "youcook2", {"limit": 5, "D": 8}, log=logs.append)


# -------------------------------------------------------------- splits/classes
def test_splits_follow_the_plan(tiny, plan):
    ds, td = tiny
    ann, _, expected = plan
    for split in SPLITS:
        assert td[split].segment_ids == [seg for _, seg in expected[split]]
        for row, (src, seg) in enumerate(expected[split]):
            classes = ann.lists[src][seg][1]
            got = td[split].gt_class[row]
            assert got[got >= 0].tolist() == classes
            q = td[split].queries[row]
            # queries: each distinct class once, in order of first mention
            assert q[q >= 0].tolist() == list(dict.fromkeys(classes))


def test_heldout_classes_never_reach_training(tiny, plan):
    ds, td = tiny
    ann, world, expected = plan
    table = ds.read_table("classes").sort_by("class_id")
    held_ids = np.flatnonzero(table["heldout"].to_numpy(zero_copy_only=False))
    names = table["name"].to_pylist()
    assert len(held_ids) == 6
    assert ds.manifest.extra["heldout_classes"] == [names[i] for i in held_ids]
    for split in ("train", "val", "test_iid"):
        a = td[split]
        assert not np.isin(a.queries, held_ids).any(), split
        assert not np.isin(a.gt_class, held_ids).any(), split
    counts = table["train_count"].to_numpy()
    assert (counts[held_ids] == 0).all()
    # test_ood holds every held-out class that its source segments mention
    mentioned = {c for src, seg in expected["test_ood"] for c in ann.lists[src][seg][1]} & set(held_ids.tolist())
    assert mentioned, "the tiny plan should contain held-out segments (else enlarge the limit)"
    ood = td["test_ood"]
    assert set(ood.gt_class[np.isin(ood.gt_class, held_ids)].tolist()) == mentioned
    assert set(ood.queries[np.isin(ood.queries, held_ids)].tolist()) == mentioned


def test_train_counts_and_priors_come_from_the_training_split(tiny):
    ds, td = tiny
    train = td["train"]
    expected = np.zeros(67, np.int64)
    for row in train.gt_class:
        expected[np.unique(row[row >= 0])] += 1  # segments mentioning each class
    counts = ds.read_table("classes").sort_by("class_id")["train_count"].to_numpy()
    np.testing.assert_array_equal(counts, expected)
    np.testing.assert_allclose(td.info.class_priors, expected / expected.sum())
    assert td.info.class_priors.sum() == pytest.approx(1.0)
    assert td.info.class_vectors.shape == (67, 300)
    assert td.info.train_features is train.features


# ---------------------------------------------------------------------- geometry
def test_boxes_lie_inside_the_frame_and_every_instance_is_seen(tiny):
    ds, td = tiny
    W, H = 720, 405
    assert ds.manifest.extra["frame_size"] == [W, H]
    for split in SPLITS:
        a = td[split]
        real = a.gt_class >= 0
        for boxes in (a.proposals.reshape(-1, 4), a.gt_boxes[real].reshape(-1, 4)):
            x1, y1, x2, y2 = boxes.T
            assert (x1 >= 0).all() and (y1 >= 0).all() and (x2 <= W).all() and (y2 <= H).all(), split
            assert (x2 > x1).all() and (y2 > y1).all(), split
        assert a.gt_valid[real].any(-1).all(), split  # each instance is visible in some frame
        assert not a.gt_valid[~real].any()


def test_upper_bound_is_below_one_and_near_p_good(tiny):
    ds, td = tiny
    hits = n = 0
    for split in SPLITS:
        iou, valid = _iou(td[split]), torch.from_numpy(_valid(td[split]))
        reach = (iou > 0.5).any(-1)
        hits += int(reach[valid].sum())
        n += int(valid.sum())
        ub = td.task.baselines(td[split], td.info)["upper_bound"]["box_micro"]
        assert ub == pytest.approx(float(reach[valid].float().mean()))
        assert ub < 1.0
    # each visible (instance, frame) is reachable with probability p_good = 0.9; with ~1000 items
    # the standard deviation of the rate is ~0.01.
    assert n > 600
    assert abs(hits / n - 0.9) < 0.05
    r = td.task.baselines(td["val"], td.info)
    assert r["random"]["box_micro"] < 0.2 < r["upper_bound"]["box_micro"]


def test_p_good_one_gives_exactly_one_good_proposal(tmp_path):
    cfg = youcook2.YC2Config(limit=24, D=4, p_good=1.0)
    youcook2.generate(tmp_path / "pg1", cfg, workers=1)
    ds = Dataset.open(tmp_path / "pg1")
    td = tasks.load(ds)
    checked = total = 0
    for split in SPLITS:
        a = td[split]
        iou, valid = _iou(a), torch.from_numpy(_valid(a))
        good = (iou > 0.5).sum(-1)  # [n, I, T]
        assert (good[valid] >= 1).all(), split  # the upper bound is 1
        assert td.task.baselines(a, td.info)["upper_bound"] == {k: 1.0 for k in td.task.metric_names}
        # "exactly one" is achievable only where the instance's box is not itself an IoU > 0.5
        # match for another visible instance's box of the same frame (see the report).
        G = torch.from_numpy(np.array(a.gt_boxes, np.float64))
        gg = box_iou(G[:, :, None], G[:, None])  # [n, I, I, T]
        eye = torch.eye(gg.shape[1], dtype=torch.bool)[None, :, :, None]
        crowded = ((gg >= 0.5) & ~eye & valid[:, None]).any(2)  # [n, I, T]
        sep = valid & ~crowded
        assert (good[sep] == 1).all(), split
        checked += int(sep.sum())
        total += int(valid.sum())
    assert checked > 0.97 * total


def test_ood_is_rendered_differently(tiny):
    ds, td = tiny
    iid, ood = td["test_iid"], td["test_ood"]
    common = sorted(set(iid.segment_ids) & set(ood.segment_ids))
    assert len(common) >= 20
    for seg in common:
        i, o = iid.segment_ids.index(seg), ood.segment_ids.index(seg)
        gi, go = iid.gt_class[i], ood.gt_class[o]
        assert gi[gi >= 0].tolist() == go[go >= 0].tolist()  # same annotation
        assert not np.allclose(iid.features[i].astype(np.float32), ood.features[o].astype(np.float32))
    # the scene style differs: the mean feature of one segment's frames moves between renderings
    i, o = iid.segment_ids.index(common[0]), ood.segment_ids.index(common[0])
    mi = iid.features[i].astype(np.float32).mean((0, 1))
    mo = ood.features[o].astype(np.float32).mean((0, 1))
    cos = float(mi @ mo / (np.linalg.norm(mi) * np.linalg.norm(mo)))
    assert cos < 0.9


def test_the_ood_shift_knobs_change_test_ood_alone_and_act_as_documented(tmp_path):
    """``ood_appearance`` / ``ood_context`` move test_ood's bytes only (their own random stream):
    train, val and test_iid stay byte-identical; test_ood's class appearances sit at cosine
    sqrt(1 - a^2) to the training ones, and its partner leak moves off the training partners."""
    base = youcook2.generate(tmp_path / "a", youcook2.YC2Config(limit=6, D=32, ood_appearance=0.0, ood_context=0.0),
                             workers=1, text_encoder=None)
    shifted_cfg = youcook2.YC2Config(limit=6, D=32, ood_appearance=0.6, ood_context=1.0)
    shifted = youcook2.generate(tmp_path / "b", shifted_cfg, workers=1, text_encoder=None)
    sha = lambda m: {s.split: s.sha256 for s in m.shards}  # noqa: E731
    a, b = sha(base), sha(shifted)
    assert {k: a[k] for k in a if k != "test_ood"} == {k: b[k] for k in b if k != "test_ood"}
    assert a["test_ood"] != b["test_ood"]
    world = youcook2.build_world(shifted_cfg, youcook2.YC2Annotations.load())
    cos = (world.protos * world.protos_ood).sum(1)
    assert abs(cos.mean() - 0.8) < 0.03 and np.allclose(cos, 0.8, atol=0.15)  # sqrt(1 - 0.36), up to chance overlaps at D=32
    trained = world.leak_matrix > 0
    assert (world.leak_ood[trained] == 0).all()  # b = 1: none of the training partners is left
    assert np.allclose(world.leak_ood.sum(1), world.leak_matrix.sum(1))
    plain = youcook2.build_world(youcook2.YC2Config(limit=6, D=32, ood_appearance=0.0, ood_context=0.0),
                                 youcook2.YC2Annotations.load())
    assert np.array_equal(plain.protos_ood, plain.protos) and np.array_equal(plain.leak_ood, plain.leak_matrix)
