"""Moment metrics (R@n at IoU m, mIoU), the random-proposal expectation and CPL's vote, on
hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from grounding.metrics.moment import NAMES, MomentRecall, interval_iou, random_expectation, vote_order


def test_interval_iou_by_hand():
    a = torch.tensor([[0.0, 0.5], [0.25, 0.5], [0.0, 0.1], [0.3, 0.3], [0.6, 0.4]])
    b = torch.tensor([[0.25, 0.75], [0.25, 0.75], [0.5, 1.0], [0.0, 1.0], [0.0, 1.0]])
    got = interval_iou(a, b)
    assert torch.allclose(got, torch.tensor([0.25 / 0.75, 0.5, 0.0, 0.0, 0.0]))


def _three_queries():
    gt = torch.tensor([[0.25, 0.75], [0.0, 0.5], [0.5, 1.0]])
    props = torch.tensor([
        # q1: top-1 IoU exactly 0.5 (counts at 0.5), the exact moment ranked 5th
        [[0.25, 0.5], [0.0, 0.125], [0.875, 1.0], [0.5, 1.0], [0.25, 0.75]],
        # q2: top-1 (-0.5, 0.5) is clamped to (0, 0.5): IoU 1 (0.5 without clamping)
        [[-0.5, 0.5], [0.5, 1.0], [0.75, 1.0], [0.875, 1.0], [0.625, 0.75]],
        # q3: top-1 clamps to the empty (1, 1); best of the top 5 is (0.25, 1): IoU 2/3
        [[1.25, 2.0], [0.0, 0.25], [0.5, 0.625], [0.25, 1.0], [0.0, 0.125]],
    ])
    return props, gt


def test_recall_and_miou_by_hand():
    props, gt = _three_queries()
    acc = MomentRecall()
    acc.update(props, gt)
    got = acc.compute()
    assert list(got) == list(NAMES)
    want = {"r1_iou30": 2 / 3, "r1_iou50": 2 / 3, "r1_iou70": 1 / 3,
            "r5_iou30": 1.0, "r5_iou50": 1.0, "r5_iou70": 2 / 3, "miou": (0.5 + 1.0 + 0.0) / 3}
    for k, v in want.items():
        assert got[k] == pytest.approx(v), k


def test_iou_exactly_at_threshold_counts():
    # IoU = 0.3 / 1.0, 0.5 / 1.0, 0.7 / 1.0 against the whole video
    gt = torch.tensor([[0.0, 1.0]] * 3)
    props = torch.tensor([[[0.0, 0.3]], [[0.2, 0.7]], [[0.1, 0.8]]])
    acc = MomentRecall()
    acc.update(props, gt)
    got = acc.compute()
    assert got["r1_iou30"] == pytest.approx(1.0)
    assert got["r1_iou50"] == pytest.approx(2 / 3)
    assert got["r1_iou70"] == pytest.approx(1 / 3)
    # fewer than 5 proposals: R@5 looks at all of them
    assert got["r5_iou70"] == pytest.approx(1 / 3)


def test_state_merges_by_summing():
    props, gt = _three_queries()
    whole = MomentRecall()
    whole.update(props, gt)
    a, b = MomentRecall(), MomentRecall()
    a.update(props[:2], gt[:2])
    b.update(props[2:], gt[2:])
    a.merge(b.state())
    assert np.allclose(a.state(), whole.state())
    assert a.compute() == pytest.approx(whole.compute())


def test_random_expectation_closed_forms():
    # GT = whole video: IoU = e - s, P(e - s >= m) = (1 - m)^2, E[e - s] = 1/3
    hit, mean = random_expectation(np.array([[0.0, 1.0]]))
    assert hit[0] == pytest.approx([(1 - m) ** 2 for m in (0.3, 0.5, 0.7)], abs=1e-5)
    assert mean[0] == pytest.approx(1 / 3, abs=1e-5)
    acc = MomentRecall()
    acc.update("random", torch.tensor([[0.0, 1.0]]))
    got = acc.compute()
    assert got["r5_iou50"] == pytest.approx(1 - (1 - 0.25) ** 5, abs=1e-5)
    assert got["miou"] == pytest.approx(1 / 3, abs=1e-5)


def test_random_expectation_matches_sampling():
    gts = np.array([[0.2, 0.5], [0.7, 1.0], [0.05, 0.3]])
    hit, mean = random_expectation(gts)
    rng = np.random.default_rng(0)
    draws = torch.from_numpy(np.sort(rng.random((400_000, 2)), axis=1))
    for g, h, m in zip(gts, hit, mean):
        iou = interval_iou(draws, torch.from_numpy(g)).numpy()
        assert h == pytest.approx([(iou >= t).mean() for t in (0.3, 0.5, 0.7)], abs=3e-3)
        assert m == pytest.approx(iou.mean(), abs=2e-3)


def test_vote_by_hand():
    # given order p0..p3 (best reconstruction first)
    props = torch.tensor([[[0.3, 0.5], [0.2, 0.6], [0.25, 0.55], [0.7, 1.0]]])
    # c = IoU(p0, p_i) = (1, 1/2, 2/3, 0); IoU(p1, p2) = 3/4, p3 overlaps nothing
    # votes_0 = 1 + (1/2)(1/2) + (2/3)(2/3) = 1.6944
    # votes_1 = (1/2)(1) + 1(1/2) + (3/4)(2/3) = 1.5
    # votes_2 = (2/3)(1) + (3/4)(1/2) + 1(2/3) = 1.7083   <- winner
    # votes_3 = 0
    assert vote_order(props).tolist() == [[2, 0, 1, 3]]
    assert vote_order(props, vote=False).tolist() == [[0, 1, 2, 3]]


def test_vote_ties_keep_the_given_order():
    props = torch.tensor([[[0.1, 0.4], [0.1, 0.4], [0.6, 0.9]]])
    assert vote_order(props).tolist() == [[0, 1, 2]]
