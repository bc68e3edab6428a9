"""The generated VidSTG's structure subset (issue 23): attribute binding, the bag-of-words flag on
constructed cases, mirror decoys and role patterns in a rendered item, the flag on the real
annotations, and datasets written before the flag existed."""

from __future__ import annotations

import collections
import dataclasses
import re

import numpy as np
import pytest

from grounding import engine, tasks
from grounding.data.benchmarks import vidstg
from grounding.data.shards import Dataset, DatasetWriter
from grounding.data.tube import (ATTRIBUTE_WORDS, bind_attributes, bow_resolvable, box_iou, noun_lexicon,
                                 noun_phrases, subject_position, tube_tokens)
from grounding.metrics.tube import SUBSETS
from grounding.models import registry

LEX = noun_lexicon(["adult", "child", "ball/sports_ball", "dog", "toy", "backpack"])


def _bind(sentence: str, form: int = 0):
    toks = tube_tokens(sentence)
    return bind_attributes(toks, subject_position(toks, form, LEX), LEX)


def test_noun_phrases_and_attribute_binding():
    toks = tube_tokens("an adult man in black an gray carries a black backpack.")
    assert noun_phrases(toks, 1, LEX) == [(1, 3), (10, 11)]  # "adult man" is one phrase
    assert _bind("an adult man in black an gray carries a black backpack.") == (["black", "gray"], ["black"])
    # equidistant from both phrases (5 tokens each): the earlier, grounded one
    assert _bind("the child in red clothes and black pants is watching the ball.") == (["red", "black"], [])
    assert _bind("an adult in white clothes is behind another adult in yellow clothes.") == (["white"], ["yellow"])
    # questions: the wh-word is the grounded phrase; about the object, the subject is the other phrase
    assert _bind("what does the brown dog bite on the grass?", 1) == ([], ["brown"])
    assert _bind("who is behind the other adult in yellow clothes?", 1) == ([], ["yellow"])
    assert _bind("the adult is holding the dog.") == ([], [])
    assert bind_attributes([], -1, LEX) == ([], [])
    assert set(ATTRIBUTE_WORDS) >= {"red", "black", "white", "yellow", "gray", "brown"}


def test_bow_flag_on_constructed_cases():
    #          0 target  1 twin   2 ball
    cls = [0, 0, 5]
    seen = [True, True, True]
    none = [set(), set(), set()]
    # the target is the only object of its category: resolvable whatever the sentence says
    assert bow_resolvable(2, cls, [True, False, False], none, seen, set())
    # a twin outside the relation: the predicate's pattern tells them apart
    assert bow_resolvable(0, cls, [True, None, False], none, seen, set())
    # the twin is the relation's other argument (same category): a bag of a question's words ties
    # them (roles are lost) ...
    assert not bow_resolvable(0, cls, [True, False, None], none, seen, set())
    # ... a declarative's bag knows the target is the relation's subject (VidSTG's convention)
    assert bow_resolvable(0, cls, [True, False, None], none, seen, set(), role_known=True)
    assert bow_resolvable(1, cls, [False, True, None], none, seen, set(), role_known=True)
    # ... a question that names an attribute only the target has is resolved by it
    assert bow_resolvable(0, cls, [True, False, None], [{"red"}, {"black"}, set()], seen, {"red"})
    # both attributes in the sentence: which belongs to which noun is structure again
    assert not bow_resolvable(0, cls, [True, False, None], [{"red"}, {"black"}, set()], seen, {"red", "black"})
    # the sentence names only the twin's attribute (bound to the other noun): the bag prefers the twin
    assert not bow_resolvable(0, cls, [True, False, None], [set(), {"black"}, set()], seen, {"black"})
    assert not bow_resolvable(0, cls, [True, True, None], [set(), {"black"}, set()], seen, {"black"},
                              role_known=True)
    # attributes that are not planted (use_attrs False) count for nothing
    assert not bow_resolvable(0, cls, [True, False, None], [{"red"}, set(), set()], seen, {"red"}, use_attrs=False)
    # a twin never visible in a ground-truth frame cannot be confused with the target there
    assert bow_resolvable(0, cls, [True, False, None], none, [True, False, True], set())


def _item(objects, subject, obj, predicate, captions, questions):
    return {"vid": "synthetic", "used_segment": {"begin_fid": 0, "end_fid": 63}, "width": 640, "height": 360,
            "subject/objects": [{"tid": i, "category": c} for i, c in enumerate(objects)],
            "used_relation": {"subject_tid": subject, "object_tid": obj, "predicate": predicate,
                              "begin_fid": 16, "end_fid": 48},
            "temporal_gt": {"begin_fid": 16, "end_fid": 48},
            "captions": [{"description": d, "target_id": t} for d, t in captions],
            "questions": [{"description": d, "target_id": t} for d, t in questions]}


@pytest.fixture(scope="module")
def ann():
    return vidstg.VidSTGAnnotations.load()


def _render(ann, it, **knobs):
    cfg = vidstg.VidSTGConfig(T=16, distractor_min=0, distractor_max=0, attribute_rate=0.0, **knobs)
    world = vidstg.build_world(cfg, ann)
    row = vidstg.render_item(cfg, world, ann, it, np.random.default_rng(0), False, 0, np.random.default_rng(1))
    return cfg, world, row


def test_mirror_decoy_and_role_patterns(ann):
    """An adult watches a ball while another adult is in the video: with a mirror decoy the second
    adult shows the patient pattern of "watch", so "who is watching the ball?" needs the role."""
    it = _item(["adult", "ball/sports_ball", "adult"], 0, 1, "watch",
               [("the adult in red is watching the ball.", 0)],
               [("who is watching the ball?", 0), ("what is the adult in red watching?", 1)])
    _, _, plain = _render(ann, it, role_asymmetry=1.0, attribute=1.0, mirror_decoys=0.0)
    assert plain["bow_resolvable"] == [True, True, True]  # the other adult has no relation pattern
    cfg, world, row = _render(ann, it, role_asymmetry=1.0, attribute=1.0, mirror_decoys=1.0)
    # caption: the bag's "red" is the target's alone; Q1: nothing but the role separates the adults;
    # Q2: the ball is the only ball
    assert row["bow_resolvable"] == [True, False, True]
    # the features carry the roles: on the agent-minus-patient direction of "watch", the target's
    # best proposals (the relation's subject) lie well above the ball's (its object)
    p = ann.predicates.index("watch")
    diff = world.role_pattern(p, True, 1.0) - world.role_pattern(p, False, 1.0)
    frames = np.flatnonzero(row["gt_box_valid"][0])
    proj = []
    for q in (0, 2):  # the caption's target (the adult) and Q2's (the ball)
        iou = box_iou(np.asarray(row["proposals"])[frames], np.asarray(row["gt_boxes"][q])[frames][:, None])
        proj.append(np.asarray(row["region_features"])[frames, iou.argmax(1)] @ diff)  # [F]
    assert (proj[0] - proj[1]).mean() > 0.5
    # the same item without attributes planted: the caption is still resolved by the bag (a
    # declarative describes the relation's subject, the agent), the question is not
    _, _, bare = _render(ann, it, role_asymmetry=1.0, attribute=0.0, mirror_decoys=1.0)
    assert bare["bow_resolvable"] == [True, False, True]


def test_same_category_relation_needs_structure(ann):
    it = _item(["adult", "adult"], 0, 1, "watch",
               [("an adult in white is watching another adult in yellow.", 0)],
               [("who is watching the adult in yellow?", 0), ("who is the adult in white watching?", 1)])
    for knobs in ({"attribute": 1.0}, {"attribute": 0.0}, {}):
        _, _, row = _render(ann, it, **knobs)
        # the caption describes the relation's subject (its bag knows the role); each question names
        # only the *other* adult's colour (the bag prefers the wrong adult) or, without attributes,
        # nothing but the roles tells the two adults apart
        assert row["bow_resolvable"] == [True, False, False], knobs


def test_the_flag_on_the_real_annotations(tmp_path, ann):
    """Generated from the real items (at the default structure knobs, without the co-occurrence
    distractors, which can share the relation object's category): a sentence needs structure only
    where its item holds another object of the target's category, and both kinds of sentence occur."""
    vidstg.generate(tmp_path / "ds", vidstg.VidSTGConfig(limit=40, T=8, N=8, Df=8, Dr=8, distractor_min=0,
                                                         distractor_max=0), workers=1)
    ds = Dataset.open(tmp_path / "ds")
    counts = collections.Counter()
    for sp in ("train", "test_iid"):
        for row in ds.read_split(sp).to_pylist():
            m = re.fullmatch(r"(.*)_(val|test)(\d+)", row["video_id"])
            it = ann.items[m.group(2)][int(m.group(3))]
            cats = collections.Counter(o["category"] for o in it["subject/objects"])
            for cls, flag in zip(row["subject_class"], row["bow_resolvable"]):
                counts[flag] += 1
                if cats[ann.categories[cls]] == 1:
                    assert flag
    assert counts[True] > 0 and counts[False] > 0


def test_datasets_without_the_flag_load_and_score_without_subsets(tmp_path):
    cfg = vidstg.VidSTGConfig(limit=8, T=8, N=6, Df=8, Dr=8)
    vidstg.generate(tmp_path / "new", cfg, workers=1)
    new = Dataset.open(tmp_path / "new")
    m = new.manifest
    old_dims = {k: v for k, v in m.dims.items() if k != "bow_resolvable"}
    with DatasetWriter(tmp_path / "old", m.task, old_dims, m.feature_dtype, m.producer, extra=m.extra) as w:
        for name in m.tables:
            w.add_table(name, new.read_table(name))
        for sp in m.splits:
            w.write(sp, new.read_split(sp).drop_columns(["bow_resolvable"]))
    old = Dataset.open(tmp_path / "old")
    old.verify()
    assert "bow_resolvable" not in old.read_split("train").column_names
    for mapped in (True, False):
        td_old = tasks.load(old, mapped=mapped)
        td_new = tasks.load(new, mapped=mapped)
        a = td_old["test_iid"]
        assert a.bow_resolvable is None and "bow_resolvable" not in a.batch(np.arange(len(a)))
        assert td_new["test_iid"].bow_resolvable is not None
        base_old = td_old.task.baselines(a, td_old.info)
        base_new = td_new.task.baselines(td_new["test_iid"], td_new.info)
        for mode, scores in base_old.items():
            assert not any(k.endswith(SUBSETS) for k in scores)
            assert scores == pytest.approx({k: v for k, v in base_new[mode].items() if not k.endswith(SUBSETS)})
        assert any(k.endswith(SUBSETS) for k in base_new["upper_bound"])
    engine.seed_everything(0)
    model = registry.build("tubemil", {"embed_dim": 16}, td_old.info)
    got = engine.evaluate(model, td_old["val"], td_old.task, td_old.info)
    assert "m_viou" in got and not any(k.endswith(SUBSETS) for k in got)


def test_structure_knobs_at_zero_keep_the_earlier_features(ann):
    """role_asymmetry = attribute = mirror_decoys = 0 plant exactly what the generator planted
    before them: the structure draws come from their own stream."""
    it = ann.items["val"][0]
    base = dict(T=8, N=8, Df=8, Dr=8, role_asymmetry=0.0, attribute=0.0, mirror_decoys=0.0)
    rows = []
    for rate in (0.0, 1.0):  # attribute_rate only changes the (unplanted) attribute draws
        cfg = vidstg.VidSTGConfig(attribute_rate=rate, **base)
        world = vidstg.build_world(cfg, ann)
        rows.append(vidstg.render_item(cfg, world, ann, it, np.random.default_rng(3), False, 0,
                                       np.random.default_rng(4)))
    for k in ("region_features", "frame_features", "proposals", "tubes"):
        assert np.array_equal(rows[0][k], rows[1][k]), k
    cfg = vidstg.VidSTGConfig(**{**base, "role_asymmetry": 1.0})
    world = vidstg.build_world(cfg, ann)
    moved = vidstg.render_item(cfg, world, ann, it, np.random.default_rng(3), False, 0, np.random.default_rng(4))
    assert np.array_equal(moved["proposals"], rows[0]["proposals"])  # same geometry
    assert not np.array_equal(moved["region_features"], rows[0]["region_features"])
    assert dataclasses.replace(cfg).role_asymmetry == 1.0


def test_config_rejects_bad_structure_knobs():
    for bad in ({"role_asymmetry": -1.0}, {"attribute": -0.1}, {"attribute_rate": 1.5}, {"mirror_decoys": -0.1}):
        with pytest.raises(ValueError, match="VidSTGConfig"):
            vidstg.VidSTGConfig(**bad)
