"""The generated YouCook2-BB benchmark's context effect: state words of the real sentence change an
object's planted appearance; held-out (class, state) pairs reach test_ood only."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from grounding import tasks
from grounding.data import text
from grounding.data.benchmarks import youcook2
from grounding.data.shards import Dataset
from grounding.metrics.wsvog import box_iou


def test_words_mentions_and_plurals():
    w = text.words("Add the Chopped onions, then 2 potatoes & an egg; add onion again")
    assert w[:4] == ["add", "the", "chopped", "onions"] and "2" in w
    forms = [text.class_forms("onion"), text.class_forms("potato", ["potatoes"]), text.class_forms("egg"),
             text.class_forms("berry"), text.class_forms("garlic")]
    assert "berries" in forms[3] and "onions" in forms[0] and "onion" in forms[0]
    # first occurrence (the plural "onions" at 3, not "onion" at 10); not found -> -1
    assert text.find_mentions(w, forms) == [3, 6, 8, -1, -1]


def test_state_is_the_nearest_lexicon_word_earlier_on_a_tie():
    w = text.words("fry the onion until golden")
    assert text.STATE_NAMES[text.state_of(w, 2, 3)] == "fried"
    w = text.words("chop onion and mash")  # 'chop' at distance 1 before, 'mash' at 2 after
    assert text.STATE_NAMES[text.state_of(w, 1, 3)] == "chopped"
    w = text.words("boil x onion y mash")  # both at distance 2: the earlier word wins
    assert text.STATE_NAMES[text.state_of(w, 2, 3)] == "boiled"
    assert text.state_of(text.words("put the onion in the bowl"), 2, 3) == text.NO_STATE
    assert text.state_of(w, 2, 0) == text.NO_STATE and text.state_of(w, -1, 3) == text.NO_STATE


def _good_proposal_cosines(root, world, ann, cfg):
    """Per stated instance-frame: cosine of its best-overlapping proposal with proto_c and with appearance(c, s)."""
    td = tasks.load(Dataset.open(root), splits=("train",))
    a = td["train"]
    P = torch.from_numpy(a.proposals.astype(np.float64))
    G = torch.from_numpy(a.gt_boxes.astype(np.float64))
    iou = box_iou(P[:, None], G[:, :, :, None]).numpy()  # [n, I, T, N]
    to_proto, to_app = [], []
    for i, seg in enumerate(a.segment_ids):
        q = [int(c) for c in a.queries[i] if c >= 0]
        st = dict(zip(q, ann.states(seg, q, cfg.state_window)))
        for inst, c in enumerate(a.gt_class[i]):
            if c < 0 or st[int(c)] < 0:
                continue
            app = world.protos[c] + world.state_delta[c, st[int(c)]]
            for t in np.flatnonzero(a.gt_valid[i, inst]):
                n = int(np.argmax(iou[i, inst, t]))
                if iou[i, inst, t, n] <= 0.5:
                    continue
                f = a.features[i, t, n].astype(np.float64)
                f /= np.linalg.norm(f)
                to_proto.append(f @ world.protos[c])
                to_app.append(f @ app / np.linalg.norm(app))
    return np.array(to_proto), np.array(to_app)


def test_state_changes_appearance_not_geometry(tmp_path):
    base = dict(limit=24, D=64, heldout_states=0, state_decoys=0.0)
    off, on = youcook2.YC2Config(**base, state_strength=0.0), youcook2.YC2Config(**base, state_strength=1.0)
    youcook2.generate(tmp_path / "off", off, workers=1)
    youcook2.generate(tmp_path / "on", on, workers=1)
    a = tasks.load(Dataset.open(tmp_path / "off"), splits=("train",))["train"]
    b = tasks.load(Dataset.open(tmp_path / "on"), splits=("train",))["train"]
    np.testing.assert_array_equal(a.proposals, b.proposals)  # the same boxes, instances, frames
    np.testing.assert_array_equal(a.gt_boxes, b.gt_boxes)
    assert not np.array_equal(a.features, b.features)
    ann = youcook2.YC2Annotations.load()
    world = youcook2.build_world(on, ann)
    # the offset is a unit-scale shift: |appearance - proto| = 2 sin(angle/2) with cos(angle) ~ 1/sqrt(2)
    norms = np.linalg.norm(world.state_delta, axis=-1)
    assert 0.6 < norms.mean() < 0.9
    p_on, s_on = _good_proposal_cosines(tmp_path / "on", world, ann, on)
    p_off, s_off = _good_proposal_cosines(tmp_path / "off", youcook2.build_world(off, ann), ann, off)
    assert len(p_on) > 25
    # with the effect, a stated instance's proposal matches its (class, state) appearance better than
    # its class prototype; without it, the prototype is all there is
    assert s_on.mean() > p_on.mean() + 0.05
    assert p_off.mean() > p_on.mean() + 0.05
    np.testing.assert_allclose(world.protos, youcook2.build_world(off, ann).protos)


def test_heldout_states_reach_test_ood_only(tmp_path):
    cfg = youcook2.YC2Config()
    ann = youcook2.YC2Annotations.load()
    world = youcook2.build_world(cfg, ann)
    assert len(world.heldout_states) == 8
    plan = youcook2.split_plan(ann, world, None)  # the full default plan (no rendering)
    seen = {}
    for split, items in plan.items():
        pairs = set()
        for src, seg in items:
            q = list(dict.fromkeys(ann.lists[src][seg][1]))
            pairs |= {(c, s) for c, s in zip(q, ann.states(seg, q, cfg.state_window)) if s >= 0}
        seen[split] = pairs
        if split != "test_ood":
            assert not pairs & world.heldout_states, split
    assert seen["test_ood"] >= world.heldout_states
    unseen = seen["test_ood"] - seen["train"]
    assert len(unseen) > len(world.heldout_states)
    stats = youcook2._combo_stats(ann, plan, cfg.state_window)
    assert stats["train"]["unseen_in_train"] == 0 and stats["test_ood"]["unseen_in_train"] >= len(unseen)
    # the manifest names the held-out pairs and records the counts
    small = youcook2.YC2Config(limit=8, D=4)
    man = youcook2.generate(tmp_path / "yc2", small, workers=1)
    names = {f"{ann.names[c]}:{text.STATE_NAMES[s]}" for c, s in youcook2.build_world(small, ann).heldout_states}
    assert set(man.extra["heldout_states"]) == names and len(names) == 8
    assert set(man.extra["state_combos"]) == {"train", "val", "test_iid", "test_ood"}


def test_config_rejects_negative_state_knobs():
    for bad in ({"state_strength": -1.0}, {"state_window": -1}, {"heldout_states": -2}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            youcook2.YC2Config(**bad)


def test_decoys_show_the_same_class_in_another_state():
    cfg = youcook2.YC2Config(D=64, state_decoys=1.0)
    ann = youcook2.YC2Annotations.load()
    world = youcook2.build_world(cfg, ann)
    onion = ann.names.index("onion")
    style = np.zeros(cfg.D)
    chopped = text.STATE_NAMES.index("chopped")
    args = (cfg, world, [onion], "r", np.random.default_rng(1), False, style)
    row = youcook2.render_segment(*args, {onion: chopped}, np.random.default_rng(2))
    visible = np.asarray(row["gt_valid"]).reshape(1, cfg.T)
    assert row["n_decoys"] == visible.sum()  # one decoy per visible frame at state_decoys = 1
    # every frame then holds, away from the ground truth, a proposal closer to an onion in another
    # state than to the chopped onion the sentence asks for
    feats = row["features"].astype(np.float64).reshape(cfg.T, cfg.N, cfg.D)
    boxes = row["proposals"].reshape(cfg.T, cfg.N, 4)
    gt = row["gt_boxes"].reshape(cfg.T, 4)
    want = world.protos[onion] + world.state_delta[onion, chopped]
    others = [world.protos[onion]] + [world.protos[onion] + world.state_delta[onion, s]
                                      for s in range(len(text.STATE_NAMES)) if s != chopped]
    unit = lambda v: v / np.linalg.norm(v, axis=-1, keepdims=True)  # noqa: E731
    for t in np.flatnonzero(visible[0]):
        far = youcook2.iou_matrix(boxes[t].astype(np.float64), gt[t][None].astype(np.float64))[:, 0] < 0.3
        f = unit(feats[t][far])
        best_other = (f @ unit(np.array(others)).T).max(1)
        assert (best_other > f @ unit(want)).any()
    # without a state word there is no decoy; without decoys neither
    assert youcook2.render_segment(*args[:4], np.random.default_rng(1), False, style, {onion: -1},
                                   np.random.default_rng(2))["n_decoys"] == 0
    off = youcook2.YC2Config(D=64, state_decoys=0.0)
    assert youcook2.render_segment(off, world, [onion], "r", np.random.default_rng(1), False, style,
                                   {onion: chopped}, np.random.default_rng(2))["n_decoys"] == 0
