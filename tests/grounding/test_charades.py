"""The generated Charades-CD moment benchmark: determinism, real splits and language, planted
segment features, per-query arrays and the moment task."""

from __future__ import annotations

import json

import numpy as np
import pytest

from grounding import tasks
from grounding.data import benchmarks
from grounding.data.benchmarks import charades
from grounding.data.annotations import annotations_dir, read_text
from grounding.data.moment import PAD_ID, MomentArrays, is_content, tokenize
from grounding.data.shards import Dataset

TINY = dict(limit=6, L=16, D=16)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("charades") / "tiny"
    charades.generate(root, charades.CharadesConfig(**TINY))
    return Dataset.open(root)


def _features(ds, split):
    d = ds.manifest.dims
    return MomentArrays.from_table(ds.read_split(split), d["L"], d["D"]).features


def test_deterministic_in_the_seed(tiny, tmp_path):
    again = tmp_path / "again"
    charades.generate(again, charades.CharadesConfig(**TINY))
    assert Dataset.open(again).digest == tiny.digest
    other = tmp_path / "other"
    charades.generate(other, charades.CharadesConfig(**{**TINY, "seed": 1}))
    assert not np.array_equal(_features(Dataset.open(other), "train"), _features(tiny, "train"))
    # a sample depends on (seed, split, index) only, not on how many were generated
    fewer = tmp_path / "fewer"
    charades.generate(fewer, charades.CharadesConfig(**{**TINY, "limit": 3}))
    assert np.array_equal(_features(Dataset.open(fewer), "test_ood"), _features(tiny, "test_ood")[:3])


def test_real_splits_sentences_and_moments(tiny):
    m = tiny.manifest
    assert m.task == "moment" and m.splits == ["train", "val", "test_iid", "test_ood"]
    assert m.dims == {"L": 16, "D": 16}
    vocab = tiny.read_table("vocab").sort_by("word_id")
    words = vocab["word"].to_pylist()
    w2id = {w: i for i, w in enumerate(words)}
    unk = len(words) - 1
    for split, fname in charades.SPLIT_FILES.items():
        real = json.loads(read_text(annotations_dir() / "charades_cd" / fname))
        rows = tiny.read_split(split).to_pylist()
        assert [r["video_id"] for r in rows] == list(real)[:TINY["limit"]]
        for r in rows:
            src = real[r["video_id"]]
            assert r["sentences"] == src["sentences"]  # language kept as written
            assert r["duration"] == pytest.approx(src["video_duration"])
            want = np.clip(np.asarray(src["timestamps"], float), 0, src["video_duration"])
            assert np.allclose(r["moments"], want, atol=1e-4)
            for sentence, ids in zip(r["sentences"], r["word_ids"]):
                toks = tokenize(sentence, w2id)
                assert ids == [w2id.get(t, unk) for t in toks]
    assert words[PAD_ID] == "<PAD>" and words[-1] == "<UNK>"
    assert m.producer["name"] == "grounding.data.charades"
    assert set(m.producer["annotations"]) >= {"charades_cd/charades_train.json",
                                              "charades_sta/glove_vectors_1146x300_float32.npy"}
    assert m.extra["benchmark"] == "charades_cd_generated" and m.extra["unk_id"] == len(words) - 1


def test_tokenizer_matches_the_vocabulary_style():
    assert tokenize("Person's opening the walk-in closet.", {"walk-in": 1}) == \
        ["person", "'s", "opening", "the", "walk-in", "closet", "."]
    assert tokenize("He doesn't sit-down", {}) == ["he", "does", "n't", "sit", "-", "down"]
    assert is_content("door") and not is_content("the") and not is_content("person") and not is_content(".")


def test_planted_words_are_stronger_inside_the_moment():
    cfg = charades.CharadesConfig(L=32, D=64, limit=20)
    ann = charades.CharadesAnnotations.load()
    protos = charades.word_prototypes(cfg, ann.vectors)
    content = np.array([is_content(w) for w in ann.words])
    inside, outside = [], []
    for j, vid in enumerate(list(ann.splits["train"])[:20]):
        rec = ann.splits["train"][vid]
        dur = rec["video_duration"]
        moments = np.clip(np.asarray(rec["timestamps"], float), 0, dur)
        ids = [ann.encode(s) for s in rec["sentences"]]
        feats = charades.render_video(cfg, protos, content, dur, moments, ids, np.random.default_rng([0, 0, j]))
        t = (np.arange(cfg.L) + 0.5) * dur / cfg.L
        for (s, e), q in zip(moments, ids):
            cw = [w for w in q if content[w]]
            if not cw:
                continue
            score = feats @ protos[cw].mean(0)
            other = np.zeros(cfg.L, bool)  # clips of other moments showing the same words
            for (s2, e2), q2 in zip(moments, ids):
                if set(q2) & set(cw):
                    other |= (t >= s2) & (t <= e2)
            ins, outs = (t >= s) & (t <= e), ~other
            if ins.any() and outs.any():
                inside.append(score[ins].mean())
                outside.append(score[outs].mean())
    assert len(inside) > 20
    assert np.mean(inside) - np.mean(outside) > 0.5  # amplitude ~1 vs the context leak 0.25
    assert np.mean(np.array(inside) > np.array(outside)) > 0.9


def test_moment_arrays_expand_queries_without_copying_videos(tiny):
    d = tiny.manifest.dims
    table = tiny.read_split("val")
    arrays = MomentArrays.from_table(table, d["L"], d["D"])
    nq = sum(len(s) for s in table["sentences"].to_pylist())
    assert len(arrays) == nq and arrays.num_videos == table.num_rows == arrays.features.shape[0]
    b = arrays.batch(np.array([0, nq - 1]))
    assert b["features"].shape == (2, d["L"], d["D"])
    assert b["words"].shape == b["word_mask"].shape == b["mask_weight"].shape
    assert ((b["moments"] >= 0) & (b["moments"] <= 1)).all()
    assert (b["moments"][:, 0] <= b["moments"][:, 1]).all()
    last = table.num_rows - 1
    assert np.array_equal(b["features"][1].numpy(), arrays.features[last].astype(np.float32))
    dur = table["duration"].to_pylist()[last]
    assert np.allclose(b["moments"][1].numpy() * dur, table["moments"].to_pylist()[last][-1], atol=1e-3)
    n = int(b["word_mask"][0].sum())
    assert b["words"][0, :n].tolist() == table["word_ids"].to_pylist()[0][0]


def test_moment_task_and_registry(tiny):
    assert benchmarks.get("charades").task == "moment"
    assert benchmarks.DEFAULT_FOR_TASK["moment"] == "charades"
    data = tasks.load(tiny)
    task = data.task
    assert task.name == "moment" and task.default_metric in task.metric_names
    assert data.info.word_vectors.shape == (1147, 300)
    assert data["train"].content is not None
    base = task.baselines(data["test_ood"], data.info)
    assert list(base) == ["random"] and list(base["random"]) == list(task.metric_names)
    assert 0 < base["random"]["r1_iou50"] < base["random"]["r5_iou50"] < 1
