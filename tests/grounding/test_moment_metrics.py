"""Moment metrics (R@n at IoU m, mIoU), the random-proposal expectation and CPL's vote, on
hand-computed cases; R@1 / R@5 of a voting model as CPL's evaluation scores them (hand values
with the winner ranked sixth, and seeded predictions against an independent re-implementation
of that evaluation)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from grounding.metrics.moment import (NAMES, MomentRecall, interval_iou, random_expectation, vote_order,
                                      vote_prediction, vote_winner)


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


# ------------------------------------------------- voting models, scored as CPL scores them
# Eight proposals in reconstruction order: p0..p4 are disjoint tenths of the first half (touching
# ends overlap by 0), p5..p7 a cluster in the second half that overlaps none of them.
EIGHT = torch.tensor([[0.0, 0.1], [0.1, 0.2], [0.2, 0.3], [0.3, 0.4], [0.4, 0.5],
                      [0.6, 1.0], [0.5, 0.9], [0.7, 1.0]])


def test_vote_weights_by_hand():
    # IoU(p5, p6) = 0.3 / 0.5 = 0.6, IoU(p5, p7) = 0.3 / 0.4 = 0.75, IoU(p6, p7) = 0.2 / 0.5 = 0.4.
    # Unweighted (c = 1): votes_0..4 = 1 (themselves), votes_5 = 1 + 0.6 + 0.75 = 2.35,
    # votes_6 = 1 + 0.6 + 0.4 = 2.0, votes_7 = 1 + 0.75 + 0.4 = 2.15  -> p5, ranked sixth.
    # IoU-weighted (c_j = IoU(p0, p_j) = 1, 0, ..., 0): votes_i = IoU(p_i, p0) -> p0.
    props = EIGHT[None]
    assert vote_winner(props, "uniform").tolist() == [5]
    assert vote_winner(props, "iou").tolist() == [0]
    assert vote_order(props, weight="uniform").tolist() == [[5, 0, 1, 2, 3, 4, 6, 7]]
    assert vote_order(props, weight="iou").tolist() == [[0, 1, 2, 3, 4, 5, 6, 7]]
    with pytest.raises(ValueError, match="allowed: iou, uniform"):
        vote_winner(props, "dataset")


def _scores(prediction, gt):
    acc = MomentRecall()
    acc.update(prediction, gt)
    return acc.compute()


def test_r5_of_a_winner_ranked_sixth_by_hand():
    props = EIGHT.expand(2, 8, 2)
    # q1: GT = p5 exactly (IoU 0 with p0..p4); q2: GT [0, 0.15]: IoU(p0) = 0.1 / 0.15 = 2/3,
    # IoU(p1) = 0.05 / 0.2 = 1/4, 0 for p2..p7.
    gt = torch.tensor([[0.6, 1.0], [0.0, 0.15]])
    # CPL, unweighted vote (ActivityNet): R@1 on the winner p5 (q1: 1, q2: 0); R@5 on p0..p4 in
    # reconstruction order (q1: 0; q2: 2/3 -> hits at 0.3 and 0.5, not at 0.7).
    cpl = _scores(vote_prediction(props, True, "uniform", "rank"), gt)
    want = {"r1_iou30": 0.5, "r1_iou50": 0.5, "r1_iou70": 0.5,
            "r5_iou30": 0.5, "r5_iou50": 0.5, "r5_iou70": 0.0, "miou": 0.5}
    assert cpl == pytest.approx(want)
    assert cpl["r5_iou70"] < cpl["r1_iou70"]  # possible under CPL's scoring, by construction
    # the earlier scoring (winner moved first): R@5 on p5, p0..p3 -> q1: 1, q2: 2/3; R@1 the same
    old = _scores(vote_prediction(props, True, "uniform", "vote"), gt)
    assert old == pytest.approx({**want, "r5_iou30": 1.0, "r5_iou50": 1.0, "r5_iou70": 0.5})
    # IoU-weighted vote (Charades): winner p0 -> R@1 q1: 0, q2: 2/3; R@5 as CPL's above
    cha = _scores(vote_prediction(props, True, "iou", "rank"), gt)
    assert cha == pytest.approx({"r1_iou30": 0.5, "r1_iou50": 0.5, "r1_iou70": 0.0, "r5_iou30": 0.5,
                                 "r5_iou50": 0.5, "r5_iou70": 0.0, "miou": (0 + 2 / 3) / 2})
    # no vote: the ranked proposals, R@1 on p0
    assert torch.equal(vote_prediction(props, False, "uniform", "rank"), props)


def test_prediction_dict_is_checked():
    props = EIGHT[None]
    with pytest.raises(ValueError, match="keys proposals, top1"):
        MomentRecall().update({"proposals": props}, torch.tensor([[0.0, 1.0]]))
    with pytest.raises(ValueError, match="top1 must be"):
        MomentRecall().update({"proposals": props, "top1": props[:, 0:2]}, torch.tensor([[0.0, 1.0]]))
    with pytest.raises(ValueError, match="allowed: rank, vote"):
        vote_prediction(props, True, "iou", "winner")


def _cpl_iou(a, b):
    """CPL's interval IoU, written out independently: (inter + 1e-10) / (hull + 1e-10), negative
    intersections counted 0."""
    inter = min(a[1], b[1]) - max(a[0], b[0])
    hull = max(a[1], b[1]) - min(a[0], b[0])
    return max((inter + 1e-10) / (hull + 1e-10), 0.0)


def _cpl_evaluation(props, gt, weighted):
    """R@1 (vote winner) and R@5 (first five in the given order) at IoU 0.3/0.5/0.7 and R@1's
    mIoU, per CPL's evaluation: loops over plain floats, nothing shared with the project."""
    n = len(props)
    hits1, hits5, miou = np.zeros(3), np.zeros(3), 0.0
    for P, g in zip(props, gt):
        K = len(P)
        c = [_cpl_iou(P[0], P[j]) if weighted else 1.0 for j in range(K)]
        votes = [sum(_cpl_iou(P[i], P[j]) * c[j] for j in range(K)) for i in range(K)]
        win = int(np.argmax(votes))
        top1 = _cpl_iou(P[win], g)
        top5 = max(_cpl_iou(P[j], g) for j in range(min(K, 5)))
        miou += top1
        for k, m in enumerate((0.3, 0.5, 0.7)):
            hits1[k] += top1 >= m
            hits5[k] += top5 >= m
    r = np.concatenate([hits1, hits5]) / n
    return dict(zip(NAMES, [*r, miou / n]))


@pytest.mark.parametrize("weight", ["iou", "uniform"])
def test_seeded_predictions_match_an_independent_cpl_evaluation(weight):
    rng = np.random.default_rng(27)
    B, K = 400, 8
    props = np.sort(rng.random((B, K, 2)), axis=-1)
    props[:, :, 1] = np.minimum(props[:, :, 0] + 0.5 * (props[:, :, 1] - props[:, :, 0]) + 0.05, 1.0)
    gt = np.sort(rng.random((B, 2)), axis=-1)
    pred = vote_prediction(torch.from_numpy(props), True, weight, "rank")
    winners = vote_winner(torch.from_numpy(props), weight)
    assert (winners >= 5).any()  # some winners lie outside the first five
    got = _scores(pred, torch.from_numpy(gt))
    want = _cpl_evaluation(props.tolist(), gt.tolist(), weighted=(weight == "iou"))
    for k in NAMES:
        assert abs(got[k] - want[k]) < 1e-6, (k, got[k], want[k])
