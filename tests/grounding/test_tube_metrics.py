"""Tube metrics on hand-worked examples (vIoU, strict thresholds, half-open ends, forms, merge,
the exact Random expectation)."""

import numpy as np
import pytest
import torch

from grounding.metrics.tube import NAMES, TubeMetrics, sample_viou

EXACT = [0.0, 0.0, 1.0, 1.0]
HALF = [0.5, 0.0, 1.5, 1.0]  # IoU with EXACT = 0.5 / 1.5 = 1/3


def _boxes(T):
    return torch.tensor([[EXACT, HALF]] * T, dtype=torch.float64)[None]  # [1, T, 2, 4]


def _gt(T, frames):
    valid = torch.zeros(1, T, dtype=torch.bool)
    valid[0, frames] = True
    return torch.tensor([EXACT] * T, dtype=torch.float64)[None], valid


def _one(seg, prop, T, gt_frames):
    gtb, gtv = _gt(T, gt_frames)
    v, t = sample_viou(torch.tensor([seg]), torch.tensor([prop]), _boxes(T), gtb, gtv, torch.ones(1, T, dtype=torch.bool))
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
                   torch.ones(1, T, dtype=torch.bool), torch.tensor([0]))
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
    whole = TubeMetrics()
    whole.update(seg, prop, boxes, gtb, gtv, fv, form)
    m = whole.compute()
    assert set(m) == set(NAMES)
    assert m["m_viou_declarative"] == pytest.approx(1.0)
    assert m["m_viou_interrogative"] == pytest.approx((1 / 3 + 0.5) / 2)
    assert m["m_viou"] == pytest.approx((1 + 1 / 3 + 0.5) / 3)
    a, b = TubeMetrics(), TubeMetrics()
    a.update(seg[:1], prop[:1], boxes[:1], gtb[:1], gtv[:1], fv[:1], form[:1])
    b.update(seg[1:], prop[1:], boxes[1:], gtb[1:], gtv[1:], fv[1:], form[1:])
    a.merge(b.state())
    assert a.compute() == pytest.approx(m)
    assert TubeMetrics().compute()["m_viou_interrogative"] == 0.0  # nothing seen


def _batch(T, gt_frames, n_valid=None):
    gtb, gtv = _gt(T, gt_frames)
    fv = torch.zeros(1, T, dtype=torch.bool)
    fv[0, : (n_valid or T)] = True
    g = np.flatnonzero(gtv[0].numpy())
    return {"boxes": _boxes(T).float(), "gt_boxes": gtb.float(), "gt_box_valid": gtv, "frame_valid": fv,
            "sentence_form": torch.tensor([0]), "gt_segment": torch.tensor([[g[0], g[-1] + 1]])}


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
    assert acc.compute() == pytest.approx({**{k: 1.0 for k in NAMES if "interrogative" not in k},
                                           **{k: 0.0 for k in NAMES if "interrogative" in k}})
    with pytest.raises(ValueError, match="allowed: random"):
        TubeMetrics().update_mode("oracle", b)
