"""WSVOG box/query accuracy on tiny hand-made batches; every expected value is worked out in a comment.

Shapes: proposals [B, T, N, 4], queries [B, Kq], gt_class [B, I], gt_boxes [B, I, T, 4],
gt_valid [B, I, T], scores [B, Kq, T, N].
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from grounding.metrics.wsvog import NAMES, WsvogAccuracy, box_iou

A = [0.0, 0.0, 10.0, 10.0]  # ground-truth box of the first instance (area 100)
A_GOOD = [1.0, 0.0, 10.0, 10.0]  # IoU with A = 90 / 100 = 0.9
B = [100.0, 100.0, 110.0, 110.0]  # far from A (IoU 0)
FAR = [300.0, 300.0, 320.0, 320.0]  # overlaps neither A nor B


def t(x, dtype=torch.float64):
    return torch.tensor(x, dtype=dtype)


def accuracy(scores, proposals, queries, gt_class, gt_boxes, gt_valid, K):
    acc = WsvogAccuracy(K)
    scores = scores if isinstance(scores, str) else t(scores)
    acc.update(scores, t(proposals), t(queries, torch.long), t(gt_class, torch.long), t(gt_boxes),
               t(gt_valid, torch.bool))
    return acc


def single(scores_frame, proposals_frame, valid=True):
    """One video, one frame, one query of class 0, one instance of class 0 at ``A``."""
    return accuracy([[[scores_frame]]] if not isinstance(scores_frame, str) else scores_frame,
                    [[proposals_frame]], [[0]], [[0]], [[[A]]], [[[valid]]], K=1)


# ------------------------------------------------------------------------- IoU
def test_box_iou_hand_values():
    # [0,0,10,5] vs A: intersection 10*5 = 50, union 100 + 50 - 50 = 100 -> 0.5 exactly
    # (with the "+1 pixel" convention it would be 11*6 / (121 + 66 - 66) = 0.545 > 0.5).
    assert box_iou(t([0, 0, 10, 5]), t(A)).item() == 0.5
    # [5,5,15,15] vs A: inter 25, union 100 + 100 - 25 = 175
    assert box_iou(t([5, 5, 15, 15]), t(A)).item() == pytest.approx(25 / 175)
    assert box_iou(t(A_GOOD), t(A)).item() == pytest.approx(0.9)
    assert box_iou(t(B), t(A)).item() == 0.0
    # degenerate boxes (zero union) give 0, not NaN
    assert box_iou(t([3, 3, 3, 3]), t([3, 3, 3, 3])).item() == 0.0
    # broadcasting: [2, 1, 4] x [1, 3, 4] -> [2, 3]
    out = box_iou(t([[A], [B]]), t([[A, B, A_GOOD]]))
    assert out.shape == (2, 3)
    np.testing.assert_allclose(out.numpy(), [[1.0, 0.0, 0.9], [0.0, 1.0, 0.0]])


# ---------------------------------------------------------------- basic counting
def test_single_hit_and_miss():
    # top-1 = proposal 0 = A (IoU 1) -> hit: every number is 1/1
    acc = single([2.0, 1.0], [A, FAR])
    assert acc.compute() == {n: 1.0 for n in NAMES}
    assert acc.counts.tolist() == [[1], [1], [1], [1]]
    # top-1 = proposal 1 = FAR -> miss: 0/1
    acc = single([1.0, 2.0], [A, FAR])
    assert acc.compute() == {n: 0.0 for n in NAMES}
    assert acc.counts.tolist() == [[0], [1], [0], [1]]


def test_iou_of_exactly_half_is_a_miss():
    half, sixty = [0.0, 0.0, 10.0, 5.0], [0.0, 0.0, 10.0, 6.0]  # IoU 0.5 and 0.6 with A
    assert single([1.0, 0.0], [half, sixty]).compute()["box_micro"] == 0.0  # 0.5 is not > 0.5
    assert single([0.0, 1.0], [half, sixty]).compute()["box_micro"] == 1.0  # 0.6 is
    assert single("upper_bound", [half, FAR]).compute()["box_micro"] == 0.0


def test_ties_go_to_the_lowest_proposal_index():
    # proposals 1 and 2 share the top score 0.7; proposal 1 is chosen.
    assert single([0.2, 0.7, 0.7], [A, FAR, A]).compute()["box_micro"] == 0.0  # 1 = FAR: miss
    assert single([0.2, 0.7, 0.7], [FAR, A, FAR]).compute()["box_micro"] == 1.0  # 1 = A: hit
    # same for the query accuracy
    assert single([0.2, 0.7, 0.7], [A, FAR, A]).compute()["query_micro"] == 0.0
    assert single([0.2, 0.7, 0.7], [FAR, A, FAR]).compute()["query_micro"] == 1.0


def test_invalid_frames_are_skipped():
    # T = 3, proposals [A, FAR] in every frame, gt box A in every frame.
    # frame 0: top A -> hit; frame 1: top A -> would hit but the object is not visible there;
    # frame 2: top FAR -> miss. Counted: frames 0 and 2 -> 1/2 (2/3 if frame 1 were counted).
    scores = [[[[1, 0], [1, 0], [0, 1]]]]
    acc = accuracy(scores, [[[A, FAR]] * 3], [[0]], [[0]], [[[A, A, A]]], [[[True, False, True]]], K=1)
    assert acc.counts.tolist() == [[1], [2], [1], [2]]
    assert acc.compute() == {n: 0.5 for n in NAMES}


def test_two_instances_of_one_class_box_and_query_differ():
    # One frame, two instances of class 0 at A and B, proposals [A, B], query = class 0.
    # top-1 = A: box: instance A hit, instance B missed -> 1/2;
    # query: one (segment, class 0, frame) item, hit because some valid instance is hit -> 1/1.
    acc = accuracy([[[[1.0, 0.0]]]], [[[A, B]]], [[0]], [[0, 0]], [[[A], [B]]], [[[True], [True]]], K=1)
    assert acc.counts.tolist() == [[1], [2], [1], [1]]
    assert acc.compute() == {"box_macro": 0.5, "box_micro": 0.5, "query_macro": 1.0, "query_micro": 1.0}
    # top-1 = B but instance B is not visible in this frame: box counts only A (missed) -> 0/1;
    # the query item exists (A is valid) and is missed (B's hit does not count) -> 0/1.
    acc = accuracy([[[[0.0, 1.0]]]], [[[A, B]]], [[0]], [[0, 0]], [[[A], [B]]], [[[True], [False]]], K=1)
    assert acc.counts.tolist() == [[0], [1], [0], [1]]


def test_instances_use_the_scores_of_their_own_class_slot():
    # queries [1, 0] but gt_class [0, 1]: instance 0 (class 0, at A) is scored by query slot 1,
    # instance 1 (class 1, at B) by slot 0. Slot 0 picks B, slot 1 picks A -> both hit (2/2).
    # (Pairing instance i with slot i would pick B for A and A for B: 0/2.)
    scores = [[[[0.0, 1.0]], [[1.0, 0.0]]]]
    acc = accuracy(scores, [[[A, B]]], [[1, 0]], [[0, 1]], [[[A], [B]]], [[[True], [True]]], K=2)
    assert acc.counts.tolist() == [[1, 1], [1, 1], [1, 1], [1, 1]]
    assert acc.compute() == {n: 1.0 for n in NAMES}


def test_macro_micro_and_empty_class_excluded():
    # K = 3, T = 3, proposals [A, B] in every frame.
    # instance 0: class 0 at A, visible in all frames; instance 1: class 1 at B, visible in frame 0.
    # queries [0, 1, 2]: class 2 is queried but has no instance -> counted nowhere.
    # slot 0 (class 0) picks A in every frame -> 3 hits of 3; slot 1 (class 1) picks A -> 0 of 1.
    # micro = 3/4; macro = mean(3/3, 0/1) = 0.5 over the two classes with items
    # (1/3 if the empty class 2 were averaged in as 0, NaN if as 0/0).
    scores = [[[[1, 0]] * 3, [[1, 0]] * 3, [[0, 1]] * 3]]
    acc = accuracy(scores, [[[A, B]] * 3], [[0, 1, 2]], [[0, 1]], [[[A] * 3, [B] * 3]],
                   [[[True] * 3, [True, False, False]]], K=3)
    assert acc.counts.tolist() == [[3, 0, 0], [3, 1, 0], [3, 0, 0], [3, 1, 0]]
    assert acc.compute() == {"box_macro": 0.5, "box_micro": 0.75, "query_macro": 0.5, "query_micro": 0.75}
    pc = acc.per_class()
    assert pc["box"][:2].tolist() == [1.0, 0.0] and math.isnan(pc["box"][2])


def test_no_counted_items_gives_no_metrics():
    """A split without a valid GT box is not scored (absent metrics, never a false 0)."""
    acc = WsvogAccuracy(4)
    assert acc.compute() == {}
    # instances present but none valid (labels without boxes, as in a test skeleton): still nothing
    acc = accuracy([[[[0.0, 1.0]]]], [[[A, FAR]]], [[0]], [[0]], [[[A]]], [[[False]]], K=2)
    assert acc.compute() == {}


def test_padding_queries_and_instances_are_ignored():
    # Real: query class 0, instance class 0 at A; slot 0 picks FAR -> miss.
    # Padding: query -1 and instance -1 marked visible with box FAR; the padded slot picks FAR.
    # Were padding counted (e.g. as class 0, or -1 matching -1), class 0 would get an extra hit.
    scores = [[[[0.0, 1.0]], [[0.0, 1.0]]]]
    acc = accuracy(scores, [[[A, FAR]]], [[0, -1]], [[0, -1]], [[[A], [FAR]]], [[[True], [True]]], K=2)
    assert acc.counts.tolist() == [[0, 0], [1, 0], [0, 0], [1, 0]]


# ----------------------------------------------------------------- sanity rows
def test_random_mode_is_the_exact_expectation():
    # T = 2, N = 4, one instance at A visible in both frames.
    # frame 0: proposals [A, A_GOOD, FAR, FAR] -> 2 of 4 hit -> 0.5; frame 1: [FAR, FAR, FAR, A] -> 0.25.
    # expectation per item, summed: 0.75 over 2 items -> 0.375.
    props = [[[A, A_GOOD, FAR, FAR], [FAR, FAR, FAR, A]]]
    acc = accuracy("random", props, [[0]], [[0]], [[[A, A]]], [[[True, True]]], K=1)
    assert acc.counts.tolist() == [[0.75], [2], [0.75], [2]]
    assert acc.compute() == pytest.approx({n: 0.375 for n in NAMES})
    # upper bound: both frames have a hitting proposal -> 1
    ub = accuracy("upper_bound", props, [[0]], [[0]], [[[A, A]]], [[[True, True]]], K=1)
    assert ub.compute() == {n: 1.0 for n in NAMES}


def test_random_and_upper_bound_with_two_instances():
    # One frame, N = 4: instance a (class 0) at A, hit by proposal 0 only; instance b (class 0) at B,
    # hit by proposal 2 only. Box random: 1/4 each -> 0.25; query random: a uniform proposal hits
    # some instance with probability 2/4 = 0.5. Upper bound: 1 everywhere.
    props = [[[A, FAR, B, FAR]]]
    args = (props, [[0]], [[0, 0]], [[[A], [B]]], [[[True], [True]]])
    r = accuracy("random", *args, K=1).compute()
    assert r == pytest.approx({"box_macro": 0.25, "box_micro": 0.25, "query_macro": 0.5, "query_micro": 0.5})
    assert accuracy("upper_bound", *args, K=1).compute() == {n: 1.0 for n in NAMES}
    # without a proposal on B: box UB = (1 + 0)/2, query UB = 1; box random = (1/4 + 0)/2.
    props = [[[A, FAR, FAR, FAR]]]
    args = (props, [[0]], [[0, 0]], [[[A], [B]]], [[[True], [True]]])
    assert accuracy("upper_bound", *args, K=1).compute() == \
        {"box_macro": 0.5, "box_micro": 0.5, "query_macro": 1.0, "query_micro": 1.0}
    assert accuracy("random", *args, K=1).compute() == \
        pytest.approx({"box_macro": 0.125, "box_micro": 0.125, "query_macro": 0.25, "query_micro": 0.25})


def test_upper_bound_below_one_and_unknown_mode():
    # frame 0 has a hitting proposal, frame 1 none -> UB 1/2; random (1/2 + 0)/2 = 1/4
    props = [[[A, FAR], [FAR, FAR]]]
    args = (props, [[0]], [[0]], [[[A, A]]], [[[True, True]]])
    assert accuracy("upper_bound", *args, K=1).compute() == {n: 0.5 for n in NAMES}
    assert accuracy("random", *args, K=1).compute() == {n: 0.25 for n in NAMES}
    with pytest.raises(ValueError, match="unknown mode"):
        accuracy("best", *args, K=1)


# ------------------------------------------------------------------- merging
def _batch_one():
    # the macro/micro example above (K = 3): counts [[3,0,0],[3,1,0],[3,0,0],[3,1,0]]
    scores = [[[[1, 0]] * 3, [[1, 0]] * 3, [[0, 1]] * 3]]
    return (t(scores), t([[[A, B]] * 3]), t([[0, 1, 2]], torch.long), t([[0, 1]], torch.long),
            t([[[A] * 3, [B] * 3]]), t([[[True] * 3, [True, False, False]]], torch.bool))


def _batch_two():
    # two videos, T = 3, one query each (different Kq/I than batch one).
    # video 0: class 2 at B visible in frames 0 and 1; the query picks B in frame 0, A in frame 1
    #   -> class 2: 1 hit of 2.
    # video 1: class 1 at A visible in frame 2 only; picks A -> class 1: 1 hit of 1.
    scores = [[[[0, 1], [1, 0], [1, 0]]], [[[0, 1], [0, 1], [1, 0]]]]
    return (t(scores), t([[[A, B]] * 3, [[A, B]] * 3]), t([[2], [1]], torch.long), t([[2], [1]], torch.long),
            t([[[B] * 3], [[A] * 3]]), t([[[True, True, False]], [[False, False, True]]], torch.bool))


def test_merge_of_two_accumulators_equals_one_over_both_batches():
    one, two, both = WsvogAccuracy(3), WsvogAccuracy(3), WsvogAccuracy(3)
    one.update(*_batch_one())
    two.update(*_batch_two())
    both.update(*_batch_one())
    both.update(*_batch_two())
    assert two.counts.tolist() == [[0, 1, 1], [0, 1, 2], [0, 1, 1], [0, 1, 2]]
    one.merge(two.state())
    np.testing.assert_array_equal(one.state(), both.state())
    # class 0: 3/3, class 1: (0 + 1)/(1 + 1), class 2: 1/2 -> micro 5/7, macro (1 + 0.5 + 0.5)/3
    expected = {"box_micro": 5 / 7, "box_macro": 2 / 3, "query_micro": 5 / 7, "query_macro": 2 / 3}
    assert one.compute() == pytest.approx(expected)
    assert both.compute() == pytest.approx(expected)
