"""The generated VidSTG tube benchmark, its arrays and batches (TUBE_CONTRACT.md), tube linking."""

import json

import numpy as np
import pytest
import torch

from grounding import tasks
from grounding.data import benchmarks
from grounding.data.benchmarks import vidstg
from grounding.data.annotations import annotations_dir, read_text
from grounding.data.shards import Dataset
from grounding.data.tube import link_tubes, relation_positions, subject_position, tube_tokens, noun_lexicon
from grounding.metrics.tube import TubeMetrics

CFG = dict(limit=6, T=16, N=8, Df=8, Dr=8)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("vidstg") / "ds"
    vidstg.generate(root, vidstg.VidSTGConfig(**CFG), workers=1)
    ds = Dataset.open(root)
    ds.verify()
    return ds, tasks.load(ds)


def test_registered_and_contract_batch(data):
    ds, td = data
    assert benchmarks.DEFAULT_FOR_TASK["tube"] == "vidstg" and benchmarks.get("vidstg").task == "tube"
    assert ds.manifest.task == "tube"
    assert ds.manifest.dims == {"T": 16, "N": 8, "Df": 8, "Dr": 8, "L": 24, "R": 1, "P": 4, "M": 8,
                                "bow_resolvable": 1}  # the per-sentence subset flag (issue 23)
    assert td.info.word_vectors.shape[1] == 300 and td.info.class_vectors.shape == (78, 300)
    a = td["train"]
    assert a.num_videos == 6 and len(a) > a.num_videos  # features once per video, ~2 sentences each
    b = a.batch(np.arange(len(a)))
    B = len(a)
    want = {"frame_feats": ((B, 16, 8), torch.float32), "region_feats": ((B, 16, 8, 8), torch.float32),
            "boxes": ((B, 16, 8, 4), torch.float32), "frame_valid": ((B, 16), torch.bool),
            "tokens": ((B, 24), torch.int64), "token_mask": ((B, 24), torch.bool),
            "subject_pos": ((B,), torch.int64), "subject_class": ((B,), torch.int64),
            "sentence_form": ((B,), torch.int64), "rel_subj": ((B, 1), torch.int64),
            "rel_obj": ((B, 1), torch.int64), "rel_pred": ((B, 1, 4), torch.int64),
            "rel_valid": ((B, 1), torch.bool), "tubes": ((B, 8, 16), torch.int64),
            "gt_segment": ((B, 2), torch.int64), "gt_boxes": ((B, 16, 4), torch.float32),
            "gt_box_valid": ((B, 16), torch.bool), "video_index": ((B,), torch.int64),
            "bow_resolvable": ((B,), torch.bool)}
    for k, (shape, dtype) in want.items():
        assert (tuple(b[k].shape), b[k].dtype) == (shape, dtype), k
    assert b["boxes"].min() >= 0 and b["boxes"].max() <= 1
    # the same video's sentences share its features
    v = b["video_index"]
    same = (v[:, None] == v[None]) & ~torch.eye(B, dtype=torch.bool)
    i, j = map(int, torch.nonzero(same)[0])
    assert torch.equal(b["region_feats"][i], b["region_feats"][j])
    # every tube is a permutation of the proposals at every frame
    assert (b["tubes"].sort(1).values == torch.arange(8)[None, :, None]).all()
    # gt boxes exist exactly on the half-open gt segment
    t = torch.arange(16)
    seg = (t >= b["gt_segment"][:, :1]) & (t < b["gt_segment"][:, 1:])
    assert torch.equal(seg, b["gt_box_valid"]) and b["gt_box_valid"].any(1).all()
    assert set(b["sentence_form"].tolist()) == {0, 1}


def test_frame_ranges_against_the_annotation_file(data):
    """frame ids lie in used_segment (end inclusive); GT frames are those in temporal_gt (end exclusive)."""
    ds, td = data
    items = json.loads(read_text(annotations_dir() / "vidstg" / "val_annotations.json"))
    table = ds.read_split("train")
    for row in table.to_pylist():
        vid, k = row["video_id"].rsplit("_val", 1)
        it = items[int(k)]
        assert it["vid"] == vid
        fids = np.array(row["frame_ids"])
        u, g = it["used_segment"], it["temporal_gt"]
        assert fids.min() >= u["begin_fid"] and fids.max() <= u["end_fid"]
        inside = (fids >= g["begin_fid"]) & (fids < g["end_fid"])
        for valid, seg in zip(row["gt_box_valid"], row["gt_segment"]):
            if inside.any():
                assert np.array_equal(np.array(valid), inside)
            assert seg == [int(np.flatnonzero(valid)[0]), int(np.flatnonzero(valid)[-1]) + 1]
        assert len(row["sentences"]) == len(it["captions"]) + len(it["questions"])
        assert row["gt_fids"][0] == [g["begin_fid"], g["end_fid"]]


def test_frame_grid_and_gt_edges():
    fids, valid = vidstg.frame_grid(0, 9, 4)  # 10 frames, end inclusive
    assert fids.tolist() == [1, 3, 6, 8] and valid.all()
    fids, valid = vidstg.frame_grid(5, 6, 4)  # shorter than T: padded
    assert fids.tolist() == [5, 6, -1, -1] and valid.tolist() == [True, True, False, False]
    fids = np.array([10, 20, 30, 40])
    ok = np.ones(4, bool)
    assert vidstg.gt_on_grid(fids, ok, 20, 40).tolist() == [False, True, True, False]  # 40 excluded
    assert vidstg.gt_on_grid(fids, ok, 21, 29).tolist() == [False, True, False, False]  # nearest to the centre


def test_splits_and_baselines(data):
    ds, td = data
    assert set(ds.manifest.splits) == {"train", "val", "test_iid", "test_ood"}
    held = set(ds.manifest.extra["heldout_classes"])
    names = ds.read_table("classes").sort_by("class_id")["name"].to_pylist()
    for sp in ("train", "val", "test_iid"):
        assert not held & {names[c] for c in td[sp].subject_class}
    assert held & {names[c] for c in td["test_ood"].subject_class}
    base = td.task.baselines(td["test_iid"], td.info)
    assert base["random"]["m_viou"] < base["whole_video_best"]["m_viou"] < base["upper_bound"]["m_viou"] <= 1
    # m_tIoU on the original frame ids (TubeDETR's): the GT segment of the strided grid covers
    # [first GT frame, last GT frame + 1) of the real span only; counted on the grid it is exact
    assert 0 < base["upper_bound"]["m_tiou"] < 1
    arrays = td["test_iid"]
    grid = TubeMetrics(tiou="grid")
    grid.update_mode("upper_bound", arrays.batch(np.arange(len(arrays))))
    assert grid.compute()["m_tiou"] == pytest.approx(1.0)
    assert grid.compute()["m_viou"] == pytest.approx(base["upper_bound"]["m_viou"])


def test_generation_is_per_item_deterministic(tmp_path):
    a = vidstg.generate(tmp_path / "a", vidstg.VidSTGConfig(**{**CFG, "limit": 2}), workers=1)
    ta = Dataset.open(tmp_path / "a").read_split("test_iid").to_pylist()
    vidstg.generate(tmp_path / "b", vidstg.VidSTGConfig(**{**CFG, "limit": 3}), workers=1)
    tb = Dataset.open(tmp_path / "b").read_split("test_iid").to_pylist()
    assert ta[:2] == tb[:2] and a.task == "tube"


def test_link_tubes_recovers_translating_tracks():
    rng = np.random.default_rng(0)
    T, N = 12, 5
    ident = rng.standard_normal((N, 16))
    start = np.array([[0.05 + 0.18 * k, 0.3, 0.2 + 0.18 * k, 0.6] for k in range(N)])
    boxes, feats, owner = np.zeros((T, N, 4)), np.zeros((T, N, 16)), np.zeros((T, N), int)
    for t in range(T):
        perm = rng.permutation(N)
        for k in range(N):
            boxes[t, perm[k]] = start[k] + [0.004 * t, 0, 0.004 * t, 0]  # < 50% of the width per frame
            feats[t, perm[k]] = ident[k] + 0.3 * rng.standard_normal(16)
            owner[t, perm[k]] = k
    tubes = link_tubes(feats, boxes, alpha=0.5)
    assert tubes.shape == (N, T)
    assert (np.sort(tubes, 0) == np.arange(N)[:, None]).all()  # disjoint, covering
    tracks = owner[np.arange(T)[None], tubes]  # [M, T] the object each tube follows
    assert (tracks == tracks[:, :1]).all() and sorted(tracks[:, 0]) == list(range(N))


def test_text_heuristics():
    lex = noun_lexicon(["adult", "ball/sports_ball", "dog"])
    toks = tube_tokens("The child in red is watching the ball.")
    assert toks == ["the", "child", "in", "red", "is", "watching", "the", "ball"]
    sp = subject_position(toks, 0, lex)
    assert sp == 1 and relation_positions(toks, 0, sp, True, lex) == (1, 7)
    q = tube_tokens("what does the adult man play on the stage?")
    assert subject_position(q, 1, lex) == 0
    assert relation_positions(q, 1, 0, False, lex) == (3, 0)  # the man plays what
