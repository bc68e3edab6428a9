"""The generated VidSTG tube benchmark, its arrays and batches (the tube batch contract, docs/shards.md), tube linking."""

import json

import numpy as np
import pytest
import torch

from grounding import tasks
from grounding.data import benchmarks
from grounding.data.benchmarks import vidstg
from grounding.data.annotations import annotations_dir, read_text
from grounding.data.shards import Dataset
from grounding.data.tube import (entity_ids, fallback_entity_ids, link_tubes, noun_lexicon, relation_positions,
                                 subject_position, tube_tokens)
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
                                "bow_resolvable": 1, "E": 8}  # the per-sentence subset flag (issue 23)
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
            "bow_resolvable": ((B,), torch.bool),
            "entity_ids": ((B, 24), torch.int64)}
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


def test_relation_object_is_not_the_subjects_own_compound_noun():
    lex = noun_lexicon(["adult", "ball/sports_ball"])
    toks = tube_tokens("an adult man in white shorts is next to a white ball")
    assert relation_positions(toks, 0, 1, True, lex) == (1, 11)  # ball, not "man" of "adult man"


def _phrases(toks, ids):
    out = {}
    for w, k in zip(toks, ids):
        if k >= 0:
            out.setdefault(k, []).append(w)
    return [" ".join(out[k]) for k in sorted(out)]


def test_entity_phrases_are_noun_phrases_without_function_words():
    lex = noun_lexicon(["adult", "child", "baby_seat", "dog", "toy", "table"])
    toks = tube_tokens("There is a brown dog biting a cloth toy on the big round black table.")
    sp = subject_position(toks, 0, lex)
    rs, ro = relation_positions(toks, 0, sp, True, lex)
    ids = entity_ids(toks, 0, lex, (sp, rs, ro))
    assert _phrases(toks, ids) == ["brown dog", "cloth toy", "big round black table"]
    assert ids[sp] == 0 and ids[ro] == 1  # the grounded word and the relation's object are entities
    for w in ("there", "is", "a", "biting", "on", "the"):
        assert ids[toks.index(w)] == -1
    # a question: the wh-word is an entity of its own; "another"/"the other" are not modifiers
    q = tube_tokens("who is behind the other adult in yellow clothes?")
    assert _phrases(q, entity_ids(q, 1, lex, (0,))) == ["who", "adult yellow"]
    # compound category words make one phrase; a red (-ed) colour or a striped (-ed) pattern still modifies
    q = tube_tokens("a child leans on a red baby seat")
    assert _phrases(q, entity_ids(q, 0, lex)) == ["child", "red baby seat"]
    q = tube_tokens("a striped dog")
    assert _phrases(q, entity_ids(q, 0, lex)) == ["striped dog"]
    # the attribute words of an "in"/"with" phrase after the noun belong to it (not "in", not "clothes")
    q = tube_tokens("an adult in black and white clothes holds a child with blue pants")
    ids = entity_ids(q, 0, lex)
    assert _phrases(q, ids) == ["adult black white", "child blue"] and ids[q.index("in")] == -1
    # at most E phrases: the required ones are kept first, then the earliest
    toks = tube_tokens("a dog a toy a table a child an adult")
    ids = entity_ids(toks, 0, lex, (9,), E=2)
    assert _phrases(toks, ids) == ["dog", "adult"] and max(ids) == 1
    # a required position no phrase covers becomes a one-word phrase
    assert entity_ids(["it", "runs"], 0, lex, (0,)) == [0, -1]


def test_fallback_for_shards_without_entity_ids():
    got = fallback_entity_ids(np.array([5, 3, 0]), np.array([2, -1, -1]), np.array([[2], [-1], [-1]]),
                              np.array([[4], [-1], [-1]]), L=6)
    assert got.tolist() == [[-1, -1, 0, -1, 1, -1], [0, -1, -1, -1, -1, -1], [-1] * 6]


def test_dataset_without_entity_column_reads_with_the_fallback(tmp_path):
    """A tube dataset written before ``E``/``entity_ids`` existed is still read and batched."""
    from grounding.data.tube import TubeArrays

    cfg = vidstg.VidSTGConfig(**{**CFG, "limit": 2})
    root = tmp_path / "new"
    vidstg.generate(root, cfg, workers=1)
    table = Dataset.open(root).read_split("train")
    assert "entity_ids" in table.column_names
    old_dims = {k: v for k, v in cfg.dims.items() if k != "E"}
    old = table.drop_columns(["entity_ids"])
    from grounding.data.schema import schema_for
    assert old.schema.equals(schema_for("tube", old_dims, "float16"))  # what an old shard holds
    a_new, a_old = TubeArrays.from_table(table, cfg.dims), TubeArrays.from_table(old, old_dims)
    want = fallback_entity_ids((a_old.tokens > 0).sum(1), a_old.subject_pos, a_old.rel_subj, a_old.rel_obj, 24)
    assert np.array_equal(a_old.entity_ids, want)
    # the rule's phrases hold the grounded word, like the new column's
    q = np.arange(len(a_new))
    assert (a_new.entity_ids[q, a_new.subject_pos] >= 0).all() and (a_old.entity_ids[q, a_old.subject_pos] >= 0).all()
    a_old.entity_ids = None  # a mapped copy written before the field existed
    assert torch.equal(a_old.batch(q)["entity_ids"], torch.as_tensor(want))
