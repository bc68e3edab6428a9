"""Tube metrics on hand-worked examples (vIoU, strict thresholds, half-open ends, forms, merge,
the exact Random expectation), and m_tIoU on the original frame ids as TubeDETR's evaluators
compute it (hand values on a strided grid, and seeded predictions against an independent
re-implementation of that evaluator's temporal IoU)."""

import numpy as np
import pytest
import torch

from grounding.metrics.tube import NAMES, SUBSETS, TubeMetrics, sample_viou

UNFLAGGED = tuple(n for n in NAMES if not n.endswith(SUBSETS))  # what data without bow_resolvable reports

EXACT = [0.0, 0.0, 1.0, 1.0]
HALF = [0.5, 0.0, 1.5, 1.0]  # IoU with EXACT = 0.5 / 1.5 = 1/3


def _boxes(T):
    return torch.tensor([[EXACT, HALF]] * T, dtype=torch.float64)[None]  # [1, T, 2, 4]


def _gt(T, frames):
    valid = torch.zeros(1, T, dtype=torch.bool)
    valid[0, frames] = True
    return torch.tensor([EXACT] * T, dtype=torch.float64)[None], valid


def _one(seg, prop, T, gt_frames):
    """(vIoU, tIoU) on a stride-1 grid (frame ids 0..T-1, GT span = its frames), where the
    frame-id tIoU and the sampled-frame count agree."""
    gtb, gtv = _gt(T, gt_frames)
    args = (torch.tensor([seg]), torch.tensor([prop]), _boxes(T), gtb, gtv, torch.ones(1, T, dtype=torch.bool))
    fids, gt_fids = torch.arange(T)[None], torch.tensor([[min(gt_frames), max(gt_frames) + 1]])
    v, t = sample_viou(*args, fids, gt_fids)
    vg, tg = sample_viou(*args, tiou="grid")
    assert torch.equal(v, vg) and torch.allclose(t, tg)
    return float(v[0]), float(t[0])


def test_viou_hand_values():
    assert _one([1, 3], [0, 0, 0, 0], 4, [1, 2]) == pytest.approx((1.0, 1.0))
    # half-open end: [2, 4) covers frames 2 and 3; inter {2}, union {1, 2, 3}
    assert _one([2, 4], [0, 0, 0, 0], 4, [1, 2]) == pytest.approx((1 / 3, 1 / 3))
    # [2, 3) is frame 2 alone: inter {2}, union {1, 2}
    assert _one([2, 3], [0, 0, 0, 0], 4, [1, 2]) == pytest.approx((0.5, 0.5))
    # the second proposal has IoU 1/3 on both GT frames
    assert _one([1, 3], [1, 1, 1, 1], 4, [1, 2]) == pytest.approx((1 / 3, 1.0))
    # disjoint: 0
    assert _one([3, 4], [0, 0, 0, 0], 4, [0, 1]) == (0.0, 0.0)
    # an empty prediction (end <= start) scores 0 and counts G in the union
    assert _one([2, 2], [0, 0, 0, 0], 4, [1, 2]) == (0.0, 0.0)


def test_thresholds_are_strict():
    acc = TubeMetrics()
    T = 10
    gtb, gtv = _gt(T, list(range(10)))
    for end in (3, 5, 6):  # vIoU exactly 0.3, exactly 0.5, 0.6
        acc.update(torch.tensor([[0, end]]), torch.zeros(1, T, dtype=torch.long), _boxes(T), gtb, gtv,
                   torch.ones(1, T, dtype=torch.bool), torch.tensor([0]), torch.arange(T)[None],
                   torch.tensor([[0, T]]))
    m = acc.compute()
    assert m["m_viou"] == pytest.approx((0.3 + 0.5 + 0.6) / 3)
    assert m["viou_30"] == pytest.approx(2 / 3)  # 0.5 and 0.6, not 0.3
    assert m["viou_50"] == pytest.approx(1 / 3)  # 0.6 only
    assert m["m_tiou"] == pytest.approx((0.3 + 0.5 + 0.6) / 3)


def test_forms_and_merge():
    T = 4
    boxes = _boxes(T).expand(3, T, 2, 4)
    gtb, gtv = _gt(T, [1, 2])
    gtb, gtv = gtb.expand(3, T, 4), gtv.expand(3, T)
    seg = torch.tensor([[1, 3], [2, 4], [0, 4]])
    prop = torch.zeros(3, T, dtype=torch.long)
    form = torch.tensor([0, 1, 1])
    fv = torch.ones(3, T, dtype=torch.bool)
    fids, gt_fids = torch.arange(T).expand(3, T), torch.tensor([[1, 3]] * 3)
    whole = TubeMetrics()
    whole.update(seg, prop, boxes, gtb, gtv, fv, form, fids, gt_fids)
    m = whole.compute()
    assert set(m) == set(UNFLAGGED)  # no bow_resolvable: no subset metrics (absent, not 0)
    assert m["m_viou_declarative"] == pytest.approx(1.0)
    assert m["m_viou_interrogative"] == pytest.approx((1 / 3 + 0.5) / 2)
    assert m["m_viou"] == pytest.approx((1 + 1 / 3 + 0.5) / 3)
    a, b = TubeMetrics(), TubeMetrics()
    a.update(seg[:1], prop[:1], boxes[:1], gtb[:1], gtv[:1], fv[:1], form[:1], fids[:1], gt_fids[:1])
    b.update(seg[1:], prop[1:], boxes[1:], gtb[1:], gtv[1:], fv[1:], form[1:], fids[1:], gt_fids[1:])
    a.merge(b.state())
    assert a.compute() == pytest.approx(m)
    assert TubeMetrics().compute()["m_viou_interrogative"] == 0.0  # nothing seen


def _batch(T, gt_frames, n_valid=None, frame_ids=None, gt_fids=None):
    """One sentence; by default a stride-1 grid (frame ids 0..T-1, -1 on padding) whose GT span
    is exactly its GT frames."""
    gtb, gtv = _gt(T, gt_frames)
    fv = torch.zeros(1, T, dtype=torch.bool)
    fv[0, : (n_valid or T)] = True
    g = np.flatnonzero(gtv[0].numpy())
    fids = torch.tensor([frame_ids]) if frame_ids is not None else torch.where(fv, torch.arange(T)[None], -1)
    return {"boxes": _boxes(T).float(), "gt_boxes": gtb.float(), "gt_box_valid": gtv, "frame_valid": fv,
            "sentence_form": torch.tensor([0]), "gt_segment": torch.tensor([[g[0], g[-1] + 1]]),
            "frame_ids": fids, "gt_fids": torch.tensor([gt_fids if gt_fids is not None else [g[0], g[-1] + 1]])}


def test_random_expectation_by_hand():
    # T=2, G={0}; per-frame expected IoU on frame 0 = (1 + 1/3) / 2 = 2/3.
    # segments [0,1): 2/3 / 1; [1,2): 0; [0,2): 2/3 / 2  -> mean (2/3 + 1/3) / 3 = 1/3
    # tIoU: 1, 0, 1/2 -> 1/2
    acc = TubeMetrics()
    acc.update_mode("random", _batch(2, [0]))
    m = acc.compute()
    assert m["m_viou"] == pytest.approx(1 / 3)
    assert m["m_tiou"] == pytest.approx(0.5)
    # vIoU > 0.3 happens for [0,1) with either proposal (1 or 1/3) and [0,2) with the exact one
    # (1/2): P = 1/3 * 1 + 1/3 * 1/2 = 1/2 (sampled, 64 draws x many calls)
    acc = TubeMetrics(draws=4000)
    acc.update_mode("random", _batch(2, [0]))
    assert acc.compute()["viou_30"] == pytest.approx(0.5, abs=0.03)


def test_whole_video_and_upper_bound():
    b = _batch(4, [1, 2], n_valid=3)  # frame 3 is padding
    acc = TubeMetrics()
    acc.update_mode("whole_video", b)
    # segment [0, 3): union 3 frames, expected IoU 2/3 on frames 1 and 2
    assert acc.compute()["m_viou"] == pytest.approx(2 * (2 / 3) / 3)
    assert acc.compute()["m_tiou"] == pytest.approx(2 / 3)
    acc = TubeMetrics()
    acc.update_mode("whole_video_best", b)
    assert acc.compute()["m_viou"] == pytest.approx(2 / 3)
    acc = TubeMetrics()
    acc.update_mode("upper_bound", b)
    assert acc.compute() == pytest.approx({**{k: 1.0 for k in UNFLAGGED if "interrogative" not in k},
                                           **{k: 0.0 for k in UNFLAGGED if "interrogative" in k}})
    with pytest.raises(ValueError, match="allowed: random"):
        TubeMetrics().update_mode("oracle", b)


# ------------------------------------------------ m_tIoU on original frame ids (TubeDETR)
STRIDED = [0, 4, 8, 12, 16]  # sampled every 4th original frame


def _strided(seg, n_valid=5, tiou="frame_ids"):
    """(vIoU, tIoU) of segment ``seg`` on the strided grid; GT span [3, 11) in frame ids, whose
    sampled frames are ids 4 and 8 (grid indices 1, 2), each with the exact box."""
    T = len(STRIDED)
    gtb, gtv = _gt(T, [1, 2])
    fv = torch.arange(T)[None] < n_valid
    fids = torch.where(fv, torch.tensor([STRIDED]), -1)
    v, t = sample_viou(torch.tensor([seg]), torch.zeros(1, T, dtype=torch.long), _boxes(T), gtb, gtv, fv,
                       fids, torch.tensor([[3, 11]]), tiou=tiou)
    return float(v[0]), float(t[0])


def test_tiou_on_original_frame_ids_by_hand():
    # TubeDETR: prediction [fid[s], fid[e-1] + 1) against the GT [3, 11);
    # tIoU = inter / (|pred| + |gt| - inter), |gt| = 8.
    # [1, 4): frames 4, 8, 12 -> [4, 13): inter [4, 11) = 7, union 9 + 8 - 7 = 10 -> 0.7
    #         (the sampled-frame count: P = {1, 2, 3}, G = {1, 2} -> 2/3)
    assert _strided([1, 4]) == pytest.approx((2 / 3, 0.7))
    assert _strided([1, 4], tiou="grid") == pytest.approx((2 / 3, 2 / 3))
    # [2, 3): frame 8 alone -> [8, 9): inter 1, union 1 + 8 - 1 = 8 -> 1/8 (grid: 1/2)
    assert _strided([2, 3]) == pytest.approx((0.5, 1 / 8))
    assert _strided([2, 3], tiou="grid")[1] == pytest.approx(0.5)
    # [0, 5): the whole video -> [0, 17): inter 8, union 17 -> 8/17 (grid: 2/5)
    assert _strided([0, 5]) == pytest.approx((0.4, 8 / 17))
    # [1, 3): frames 4, 8 -> [4, 9): inside the GT, 5 / 8 (grid: 1, the GT frames exactly)
    assert _strided([1, 3]) == pytest.approx((1.0, 5 / 8))
    assert _strided([1, 3], tiou="grid")[1] == pytest.approx(1.0)
    # [0, 1): frame 0 -> [0, 1): no overlap with [3, 11) -> 0; an empty prediction -> 0
    assert _strided([0, 1]) == (0.0, 0.0)
    assert _strided([3, 3]) == (0.0, 0.0)
    # the segment is cut to the valid frames: [2, 5) with frame 4 padding is [2, 4) ->
    # frames 8, 12 -> [8, 13): inter [8, 11) = 3, union 5 + 8 - 3 = 10 -> 0.3
    assert _strided([2, 5], n_valid=4)[1] == pytest.approx(0.3)
    with pytest.raises(ValueError, match="needs frame_ids and gt_fids"):
        sample_viou(torch.tensor([[1, 4]]), torch.zeros(1, 5, dtype=torch.long), _boxes(5), *_gt(5, [1, 2]),
                    torch.ones(1, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="allowed: frame_ids, grid"):
        TubeMetrics(tiou="ids")


def test_accumulator_and_baselines_on_a_strided_grid():
    acc = TubeMetrics()
    b = _batch(5, [1, 2], frame_ids=STRIDED, gt_fids=[3, 11])
    acc.update(torch.tensor([[1, 4]]), torch.zeros(1, 5, dtype=torch.long), b["boxes"], b["gt_boxes"],
               b["gt_box_valid"], b["frame_valid"], b["sentence_form"], b["frame_ids"], b["gt_fids"])
    assert acc.compute()["m_tiou"] == pytest.approx(0.7)
    # T = 2 frames at ids 0 and 5, GT span [0, 3) (its sampled frame: index 0):
    # [0, 1) -> [0, 1): 1/3; [1, 2) -> [5, 6): 0; [0, 2) -> [0, 6): 3/6  -> Random: (1/3 + 1/2) / 3
    two = _batch(2, [0], frame_ids=[0, 5], gt_fids=[0, 3])
    for mode, want, grid in (("random", (1 / 3 + 0 + 1 / 2) / 3, (1 + 0 + 1 / 2) / 3), ("whole_video", 1 / 2, 1 / 2),
                             ("whole_video_best", 1 / 2, 1 / 2), ("upper_bound", 1 / 3, 1.0)):
        got, old = TubeMetrics(), TubeMetrics(tiou="grid")
        got.update_mode(mode, two)
        old.update_mode(mode, two)
        assert got.compute()["m_tiou"] == pytest.approx(want), mode
        assert old.compute()["m_tiou"] == pytest.approx(grid), mode
        assert got.compute()["m_viou"] == pytest.approx(old.compute()["m_viou"]), mode  # vIoU unchanged


def _tubedetr_tiou(pred_sted, gt_sted):
    """Temporal IoU of one video as TubeDETR's VidSTG / HC-STVG evaluators define it, written
    out independently: half-open frame-id spans, 0 unless they overlap."""
    lo, hi = max(gt_sted[0], pred_sted[0]), min(gt_sted[1], pred_sted[1])
    if hi <= lo:
        return 0.0
    return (hi - lo) / ((gt_sted[1] - gt_sted[0]) + (pred_sted[1] - pred_sted[0]) - (hi - lo))


def test_seeded_predictions_match_an_independent_tubedetr_tiou():
    rng = np.random.default_rng(27)
    B, T = 300, 12
    fids = np.full((B, T), -1)
    fv = np.zeros((B, T), bool)
    seg, gt_fids, want = np.zeros((B, 2), np.int64), np.zeros((B, 2), np.int64), []
    for b in range(B):
        tv = int(rng.integers(2, T + 1))  # valid prefix
        ids = np.sort(rng.choice(400, tv, replace=False))  # irregular strides
        fids[b, :tv], fv[b, :tv] = ids, True
        s_idx, e_idx = sorted(rng.choice(tv, 2, replace=False))  # TubeDETR's start < end (inclusive)
        seg[b] = [s_idx, e_idx + 1]
        gs = int(rng.integers(0, 400))
        gt_fids[b] = [gs, gs + int(rng.integers(1, 150))]
        want.append(_tubedetr_tiou([ids[s_idx], ids[e_idx] + 1], gt_fids[b]))
    gtv = torch.from_numpy(fv & (rng.random((B, T)) < 0.5))
    boxes = torch.rand(B, T, 3, 4, generator=torch.Generator().manual_seed(0)).sort(-1).values.double()
    gtb = torch.rand(B, T, 4, generator=torch.Generator().manual_seed(1)).sort(-1).values.double()
    prop = torch.from_numpy(rng.integers(0, 3, (B, T)))
    args = (torch.from_numpy(seg), prop, boxes, gtb, gtv, torch.from_numpy(fv), torch.from_numpy(fids),
            torch.from_numpy(gt_fids))
    _, t = sample_viou(*args)
    assert np.allclose(t.numpy(), want, atol=1e-6, rtol=0)
    acc = TubeMetrics()
    form = torch.from_numpy(rng.integers(0, 2, B))
    acc.update(*args[:6], form, *args[6:])
    m = acc.compute()
    want = np.array(want)
    assert abs(m["m_tiou"] - want.mean()) < 1e-6
    assert abs(m["m_tiou_interrogative"] - want[form.numpy() == 1].mean()) < 1e-6


def test_bag_of_words_and_structure_subsets():
    """Sentences flagged ``bow_resolvable`` form the ``_bow`` subset, the others ``_structure``;
    a subset without a sentence (and every subset of unflagged data) is absent, never 0."""
    T = 4
    boxes = _boxes(T).expand(3, T, 2, 4)
    gtb, gtv = _gt(T, [1, 2])
    gtb, gtv = gtb.expand(3, T, 4), gtv.expand(3, T)
    seg = torch.tensor([[1, 3], [2, 4], [0, 4]])  # vIoU 1, 1/3, 1/2 (test_forms_and_merge)
    prop = torch.zeros(3, T, dtype=torch.long)
    form = torch.tensor([0, 1, 1])
    fv = torch.ones(3, T, dtype=torch.bool)
    fids, gt_fids = torch.arange(T).expand(3, T), torch.tensor([[1, 3]] * 3)
    bow = torch.tensor([True, False, True])
    acc = TubeMetrics()
    acc.update(seg, prop, boxes, gtb, gtv, fv, form, fids, gt_fids, bow)
    m = acc.compute()
    assert set(m) == set(NAMES)
    assert m["m_viou_bow"] == pytest.approx((1 + 0.5) / 2)
    assert m["m_viou_structure"] == pytest.approx(1 / 3)
    assert m["viou_30_bow"] == pytest.approx(1.0) and m["viou_30_structure"] == pytest.approx(1.0)
    assert m["viou_50_bow"] == pytest.approx(0.5) and m["viou_50_structure"] == 0.0  # 1/3 and 1/2 are not > 0.5
    assert m["m_tiou_bow"] == pytest.approx((1 + 0.5) / 2) and m["m_tiou_structure"] == pytest.approx(1 / 3)
    # the subsets do not change the overall and per-form numbers
    plain = TubeMetrics()
    plain.update(seg, prop, boxes, gtb, gtv, fv, form, fids, gt_fids)
    assert {k: m[k] for k in UNFLAGGED} == pytest.approx(plain.compute())
    # ranks merge by summing, subsets included
    a, b = TubeMetrics(), TubeMetrics()
    a.update(seg[:2], prop[:2], boxes[:2], gtb[:2], gtv[:2], fv[:2], form[:2], fids[:2], gt_fids[:2], bow[:2])
    b.update(seg[2:], prop[2:], boxes[2:], gtb[2:], gtv[2:], fv[2:], form[2:], fids[2:], gt_fids[2:], bow[2:])
    a.merge(b.state())
    assert a.compute() == pytest.approx(m)
    # every sentence bag-of-words resolvable: no structure subset at all (absent, not 0)
    only = TubeMetrics()
    only.update(seg, prop, boxes, gtb, gtv, fv, form, fids, gt_fids, torch.ones(3, dtype=torch.bool))
    got = only.compute()
    assert "m_viou_bow" in got and not any(k.endswith("_structure") for k in got)
    # the baseline rows read the flag from the batch
    batch = _batch(4, [1, 2])
    batch["bow_resolvable"] = torch.tensor([False])
    up = TubeMetrics()
    up.update_mode("upper_bound", batch)
    assert up.compute()["m_viou_structure"] == pytest.approx(1.0) and "m_viou_bow" not in up.compute()


def test_spatial_viou_hand_values():
    """m_sviou: the chosen boxes over the GT frames, whatever the predicted segment."""
    T = 4
    gtb, gtv = _gt(T, [1, 2])
    fv = torch.ones(1, T, dtype=torch.bool)
    acc = TubeMetrics()
    # a disjoint segment scores vIoU 0, but the boxes on GT frames 1, 2 are EXACT then HALF: (1 + 1/3) / 2
    acc.update(torch.tensor([[3, 4]]), torch.tensor([[1, 0, 1, 1]]), _boxes(T), gtb, gtv, fv, torch.tensor([0]),
               torch.arange(T)[None], torch.tensor([[1, 3]]))
    m = acc.compute()
    assert m["m_viou"] == 0.0 and m["m_sviou"] == pytest.approx((1 + 1 / 3) / 2)
    # baselines: the Upper Bound's spatial vIoU is its vIoU (1 here); a uniform proposal's is the mean IoU 2/3
    batch = {"boxes": _boxes(T).float(), "gt_boxes": gtb.float(), "gt_box_valid": gtv, "frame_valid": fv,
             "gt_segment": torch.tensor([[1, 3]]), "sentence_form": torch.tensor([0]),
             "frame_ids": torch.arange(T)[None], "gt_fids": torch.tensor([[1, 3]])}
    for mode, want in (("upper_bound", 1.0), ("whole_video_best", 1.0), ("random", 2 / 3), ("whole_video", 2 / 3)):
        b = TubeMetrics()
        b.update_mode(mode, batch)
        assert b.compute()["m_sviou"] == pytest.approx(want), mode
