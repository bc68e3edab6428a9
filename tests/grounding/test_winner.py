"""WINNER's invariants (spec winner.md §9) on hand-made tensors shaped as the tube batch contract says (docs/shards.md)."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from grounding import engine, recipes, tasks, training
from grounding.models.base import DataInfo
from grounding.models.winner import (Winner, WinnerConfig, box_iou, cell, chart_tables, link_tubes,
                                     phrase_loss, structural_attention, word_loss)

V, DW, DR, DF = 40, 300, 12, 10


def info(T=8, N=5, L=6) -> DataInfo:
    g = np.random.default_rng(0)
    vectors = g.standard_normal((V, DW)).astype(np.float32)
    vectors[0] = 0
    dims = {"T": T, "N": N, "Df": DF, "Dr": DR, "L": L, "R": 2, "P": 2, "M": N}
    return DataInfo(task="tube", dims=dims, word_vectors=vectors, class_vectors=vectors[:5])


def _identity_frame_proj(m, D: int) -> None:
    """Set the temporal module's frame projection to the identity (Linear = I, LayerNorm's affine
    off), so frame scores are read straight from the planted features."""
    with torch.no_grad():
        lin, ln = m.frame_proj
        lin.weight.copy_(torch.eye(D))
        lin.bias.zero_()
        ln.weight.fill_(1.0)
        ln.bias.zero_()


def make_batch(B=4, T=8, N=5, L=6, lengths=None, frames=None, seed=0, videos=None) -> dict:
    """A batch as ``TubeArrays.batch`` returns it: random features, proposals jittered around
    N smooth tracks, tubes linked from them, prefix-aligned tokens and frames."""
    g = torch.Generator().manual_seed(seed)
    lengths = lengths or [L] * B
    frames = frames or [T] * B
    tokens = torch.zeros(B, L, dtype=torch.long)
    for b, n in enumerate(lengths):
        tokens[b, :n] = torch.randint(1, V, (n,), generator=g)
    fv = torch.arange(T)[None] < torch.tensor(frames)[:, None]
    xy = torch.rand(B, 1, N, 2, generator=g) * 0.6 + 0.02 * torch.arange(T)[None, :, None, None]
    boxes = torch.cat([xy, xy + 0.3], -1).clamp(0, 1)
    start = torch.randint(0, T // 2, (B,), generator=g)
    return {
        "frame_feats": torch.randn(B, T, DF, generator=g),
        "region_feats": torch.randn(B, T, N, DR, generator=g),
        "boxes": boxes,
        "frame_valid": fv,
        "tokens": tokens,
        "token_mask": tokens > 0,
        "subject_pos": torch.tensor([min(1, n - 1) for n in lengths]),
        "subject_class": torch.zeros(B, dtype=torch.long),
        "sentence_form": torch.arange(B) % 2,
        "tubes": link_tubes(boxes, fv).clamp(min=0),
        "gt_segment": torch.stack([start, start + 3], -1),
        "gt_boxes": boxes[:, :, 0],
        "gt_box_valid": fv.clone(),
        "video_index": torch.tensor(videos if videos is not None else list(range(B))),
    }


def model(**kw) -> Winner:
    torch.manual_seed(0)
    return Winner(WinnerConfig(**kw), info())


# --------------------------------------------------------------------------- 1-2 chart indexing
@pytest.mark.parametrize("L", [1, 2, 3, 5, 8])
def test_chart_indexing(L):
    t = chart_tables(L)
    C = L * (L + 1) // 2
    assert t["C"] == C
    cells = [cell(i, j, L) for i in range(L) for j in range(i, L)]
    assert sorted(cells) == list(range(C))  # every span its own cell, and nothing else
    for c, (i, j) in enumerate(t["span"].tolist()):
        assert cell(i, j, L) == c
    for lvl in range(1, L):
        left, right = t["inside"][lvl]
        assert left.shape == right.shape == (L - lvl, lvl)  # l splits per span
        for i in range(L - lvl):
            for s in range(lvl):
                (a, b), (c, d) = t["span"][left[i, s]].tolist(), t["span"][right[i, s]].tolist()
                assert (a, d, b + 1) == (i, i + lvl, c)  # children partition the span
    for lvl in range(L - 1):
        par, sib = t["outside"][lvl]
        assert par.shape == sib.shape == (L - lvl, L - lvl - 1)  # N_S - l - 1 contexts
        for i in range(L - lvl):
            for p, q in zip(par[i].tolist(), sib[i].tolist()):
                (pi, pj), (si, sj) = t["span"][p].tolist(), t["span"][q].tolist()
                # parent = node + sibling, adjacent on one side
                assert (pi, pj) in ((i, sj), (si, i + lvl)) and (sj == i - 1 or si == i + lvl + 1)


def test_level_one_has_a_single_split_with_weight_one():
    m = model().eval()
    leaves = torch.nn.functional.normalize(torch.randn(3, 2, 32), dim=-1)
    H, S, _ = m.inside(leaves, chart_tables(2))
    h, s = m.compose(leaves[:, 0], leaves[:, 1])
    assert torch.allclose(H[:, 2], torch.nn.functional.normalize(h, dim=-1), atol=1e-6)
    assert torch.allclose(S[:, 2], s, atol=1e-5)
    assert torch.equal(S[:, :2], torch.zeros(3, 2))  # leaf scores are 0


def test_padding_leaves_every_sentence_chart_as_if_alone():
    m = model().eval()
    both = make_batch(B=2, L=6, lengths=[3, 6])
    alone = {k: v[:1] for k, v in both.items()}
    alone["tokens"], alone["token_mask"] = alone["tokens"][:, :3], alone["token_mask"][:, :3]
    e2, e1 = m.encode(both), m.encode(alone)
    for i in range(3):
        for j in range(i, 3):
            c1, c2 = cell(i, j, 3), cell(i, j, 6)
            for key in ("H", "S", "HU", "SU", "pi"):
                assert torch.allclose(e2[key][0, c2], e1[key][0, c1], atol=1e-5), (key, i, j)
    p2, p1 = m.predict(both), m.predict(alone)
    assert torch.equal(p2["segment"][:1], p1["segment"]) and torch.equal(p2["proposal"][:1], p1["proposal"])


# --------------------------------------------------------------------------- 3 root marginal
def test_root_marginal_is_one_for_every_sentence_length():
    m = model().eval()
    e = m.encode(make_batch(B=4, L=6, lengths=[1, 2, 4, 6]))
    for b, n in enumerate([1, 2, 4, 6]):
        assert e["pi"][b, cell(0, n - 1, 6)].item() == pytest.approx(1.0, abs=1e-6)
        assert e["SU"][b, cell(0, n - 1, 6)].item() == 0.0
        assert torch.allclose(e["HU"][b, cell(0, n - 1, 6)], torch.nn.functional.normalize(m.root, dim=0))
    assert torch.all(e["pi"][~e["valid"]] == 0)


# --------------------------------------------------------------------------- 4 lambda = 0
def test_lambda_zero_pass_two_equals_pass_one_and_attention_has_no_effect():
    batch = make_batch()
    m = model(lam=0.0).eval()
    e = m.encode(batch)
    leaves = m.leaves(e["tokens"])
    H1, S1, _ = m.inside(leaves, e["tables"])
    assert torch.allclose(e["H"], H1 * e["valid"][..., None], atol=1e-6)
    assert torch.allclose(e["S"], S1 * e["valid"], atol=1e-5)
    # alpha, beta, delta cannot change anything: same loss and predictions
    outs = []
    for kw in ({}, {"alpha": 3.0, "beta": 0.0, "delta": 0.5}, {"svhu": False}):
        mm = copy.deepcopy(m)
        mm.cfg = WinnerConfig(lam=0.0, **kw)
        mm.alpha, mm.beta = mm.cfg.alpha, mm.cfg.beta
        mm.train()
        torch.manual_seed(1)
        loss, _ = mm(batch)
        outs.append((float(loss.detach()), mm.eval().predict(batch)))
    for loss, pred in outs[1:]:
        assert loss == pytest.approx(outs[0][0], rel=1e-5)
        assert torch.equal(pred["proposal"], outs[0][1]["proposal"])
        assert torch.equal(pred["segment"], outs[0][1]["segment"])


# --------------------------------------------------------------------------- 5-7 structural attention
def test_beta_zero_is_plain_dot_product_attention():
    A = torch.randn(2, 10, 4)
    valid = torch.ones(2, 10, dtype=torch.bool)
    att, _ = structural_attention(A, valid, chart_tables(4), 1.0, 0.0, 0.0)
    assert torch.equal(att, A)
    att, _ = structural_attention(A, valid, chart_tables(4), 2.5, 0.0, 0.3)
    assert torch.allclose(att, 2.5 * A)


def test_interference_selection():
    t = chart_tables(2)  # cells (0,0), (1,1), (0,1)
    A = torch.tensor([[[1.0, 2.0, 3.0], [-1.0, -2.0, -3.0], [1.0, 2.0, 3.0]]])
    valid = torch.ones(1, 3, dtype=torch.bool)
    _, keep = structural_attention(A, valid, t, 1.0, 0.5, -1.01)
    related = t["related"] & ~torch.eye(3, dtype=torch.bool)
    assert torch.equal(keep[0], related)  # delta = -1.01: nothing is interfering
    _, keep = structural_attention(A, valid, t, 1.0, 0.5, 0.0)
    root = cell(0, 1, 2)
    # the root's related nodes are both leaves; the anti-correlated leaf (1,1) alone is removed
    assert keep[0, root].tolist() == [True, False, False]


def test_context_weights_sum_to_one_and_vanish_without_related_nodes():
    t = chart_tables(4)
    A = torch.ones(1, t["C"], 3)
    valid = torch.ones(1, t["C"], dtype=torch.bool)
    for ctx in ("inv_dist", "mean"):
        att, keep = structural_attention(A, valid, t, 0.0, 1.0, -1.01, ctx)
        assert torch.allclose(att, torch.ones_like(att))  # a weighted mean of ones
    # a one-word sentence: its leaf has no related node but itself
    v1 = torch.zeros(1, t["C"], dtype=torch.bool)
    v1[0, 0] = True
    att, keep = structural_attention(torch.randn(1, t["C"], 3), v1, t, 0.0, 1.0, -1.01)
    assert not keep[0, 0].any() and torch.equal(att[0, 0], torch.zeros(3))
    # inv_dist: weights proportional to 1 / |length difference|
    A = torch.zeros(1, t["C"], 1)
    A[0, cell(0, 3, 4), 0] = 1.0  # the root, 2 levels above (1, 2)
    att, keep = structural_attention(A, valid, t, 0.0, 1.0, -1.01)
    tgt = cell(1, 2, 4)
    inv = (1 / t["dist"][tgt][keep[0, tgt]].float()).sum()
    assert att[0, tgt, 0].item() == pytest.approx((1 / 2) / inv.item(), rel=1e-5)


# --------------------------------------------------------------------------- 8-9 losses
def test_word_loss_limits_and_masking():
    B, L = 4, 3
    valid = torch.ones(B, L, dtype=torch.bool)
    eye = torch.eye(B, dtype=torch.bool)
    assert word_loss(torch.zeros(B, B, L), valid, eye).item() == pytest.approx(L * math.log(B))
    dominant = torch.where(eye[..., None], 50.0, 0.0).expand(B, B, L)
    assert word_loss(dominant, valid, eye).item() < 1e-10
    # a masked same-video pair leaves the denominator: same as a batch without that video
    sx = torch.randn(B, B, L)
    same = eye.clone()
    same[0, 1] = same[1, 0] = True
    sx_masked = sx.clone()
    sx_masked[0, 1] = 1e4  # huge, but masked
    full = word_loss(sx_masked, valid, same)
    keep = [0, 2, 3]
    ref0 = -(sx[0, 0] - torch.logsumexp(sx[0, keep], 0)).sum()
    assert full.item() == pytest.approx(((ref0 + _rows(sx, [1, 2, 3], skip={1: [0]})) / B).item(), rel=1e-5)


def _rows(sx, rows, skip):
    """Sum over rows a of -log softmax over the unmasked videos at the positive a."""
    total = 0.0
    for a in rows:
        cols = [b for b in range(sx.shape[1]) if b not in skip.get(a, [])]
        total = total - (sx[a, a] - torch.logsumexp(sx[a, cols], 0)).sum()
    return total


def test_phrase_loss_zero_when_margins_hold_and_gradient_reaches_pi_otherwise():
    B, C = 3, 6
    valid = torch.ones(B, C, dtype=torch.bool)
    phr = valid.clone()
    phr[:, :3] = False
    same = torch.eye(B, dtype=torch.bool)
    sx = torch.where(same[..., None], 2.0, 0.0).expand(B, B, C).clone()
    w = torch.ones(B, C, requires_grad=True)
    assert phrase_loss(sx, w, valid, phr, same, 0.5).item() == 0.0  # d_pos = 2 >= 0 + 0.5
    sx2 = torch.where(same[..., None], 0.3, 0.1).expand(B, B, C).clone()
    loss = phrase_loss(sx2, w, valid, phr, same, 0.5)
    loss.backward()
    assert loss.item() > 0 and w.grad[:, 3:].abs().sum() > 0 and w.grad[:, :3].abs().sum() == 0
    # hinge value by hand: both hinges 0.1 - 0.3 + 0.5 = 0.3 per span, 3 spans per sentence
    assert loss.item() == pytest.approx(2 * 0.3 * 3)


def test_phrase_negatives_only_from_sentences_that_have_the_span():
    B, C = 2, 3  # L = 2: cells (0,0), (1,1), (0,1)
    valid = torch.tensor([[True, True, True], [True, False, False]])
    phr = torch.tensor([[False, False, True], [False, False, False]])
    same = torch.eye(B, dtype=torch.bool)
    sx = torch.zeros(B, B, C)
    sx[1, 0, 2] = 100.0  # sentence 1 has no span (0,1): must not act as a negative
    assert phrase_loss(sx, torch.ones(B, C), valid, phr, same, 0.5).item() == pytest.approx(0.5 / 2)


def test_loss_is_log_b_per_word_when_all_videos_are_identical():
    batch = make_batch(B=4, lengths=[6, 5, 4, 6])
    for k in ("frame_feats", "region_feats", "boxes", "tubes", "frame_valid"):
        batch[k] = batch[k][:1].expand_as(batch[k]).clone()
    m = model(temporal="full").train()
    _, logs = m(batch)
    assert logs["loss_word"] == pytest.approx(np.mean([6, 5, 4, 6]) * math.log(4), rel=1e-5)


# --------------------------------------------------------------------------- 11 linking
def test_linking_recovers_synthetic_tracks():
    g = torch.Generator().manual_seed(3)
    B, T, N = 2, 12, 6
    w = 0.1
    # N columns 0.16 apart (boxes 0.1 wide, so tracks never overlap), each moving by up to 40% of
    # its width per frame, mostly vertically
    start = torch.stack([torch.arange(N).float() * 0.16, torch.rand(N, generator=g) * 0.3], -1).expand(B, N, 2)
    step = (torch.rand(B, N, 2, generator=g) - 0.5) * 0.8 * w * torch.tensor([0.05, 1.0])
    xy = start[:, None] + step[:, None] * torch.arange(T)[None, :, None, None]
    tracks = torch.cat([xy, xy + w], -1)  # [B, T, N, 4]
    perm = torch.stack([torch.stack([torch.randperm(N, generator=g) for _ in range(T)]) for _ in range(B)])
    boxes = torch.gather(tracks, 2, perm[..., None].expand(B, T, N, 4))  # shuffled per frame
    fv = torch.ones(B, T, dtype=torch.bool)
    fv[1, 9:] = False
    tubes = link_tubes(boxes, fv)
    assert tubes.shape == (B, N, T)
    assert (tubes[0] >= 0).all() and (tubes[1, :, :9] >= 0).all() and (tubes[1, :, 9:] == -1).all()
    for b in range(B):
        for m in range(N):
            ok = fv[b]
            track = perm[b, ok.nonzero()[:, 0], tubes[b, m, ok]]  # which true track each frame hits
            assert (track == track[0]).all(), (b, m, track)
    assert box_iou(tracks[0, 0], tracks[0, 0]).diagonal().allclose(torch.ones(N))


def test_greedy_linking_inside_the_model():
    batch = make_batch()
    m = model(linking="greedy").eval()
    e = m.encode(batch)
    assert torch.equal(e["tubes"], link_tubes(batch["boxes"], batch["frame_valid"]))


# --------------------------------------------------------------------------- 14 ablations, interface
def test_ablation_switches():
    batch = make_batch()
    m = model(dsa=False).train()
    _, logs = m(batch)
    assert logs["loss_phrase"] == 0.0
    m = model(svhu=False).train()
    torch.manual_seed(1)
    loss_off, logs = m(batch)
    assert "dropped" not in logs
    m0 = model(lam=0.0).train()
    torch.manual_seed(1)
    loss_lam0, _ = m0(batch)
    assert loss_off.item() == pytest.approx(loss_lam0.item(), rel=1e-5)


def test_temporal_modes():
    batch = make_batch(frames=[8, 6, 8, 5])
    p = model(temporal="full").eval().predict(batch)
    assert p["segment"].tolist() == [[0, 8], [0, 6], [0, 8], [0, 5]]
    p = model(temporal="oracle").eval().predict(batch)
    assert torch.equal(p["segment"], batch["gt_segment"])
    p = model(temporal="tl1").eval().predict(batch)
    s, e = p["segment"].T
    lmin = max(2, round(0.05 * 8))
    assert (s >= 0).all() and (e - s >= lmin).all() and (e <= batch["frame_valid"].sum(1)).all()
    p = model().eval().predict(batch)  # tl2: at least one frame, inside the valid ones
    s, e = p["segment"].T
    assert (s >= 0).all() and (e - s >= 1).all() and (e <= batch["frame_valid"].sum(1)).all()


def test_prediction_contract_gradients_and_learning():
    batch = make_batch(B=6, lengths=[6, 3, 5, 1, 2, 6], videos=[0, 0, 1, 2, 3, 4])
    m = model()
    p = m.eval().predict(batch)
    assert p["segment"].shape == (6, 2) and p["segment"].dtype == torch.long
    assert p["proposal"].shape == (6, 8) and p["proposal"].dtype == torch.long
    assert (p["proposal"] >= 0).all() and (p["proposal"] < 5).all()
    assert torch.equal(p["proposal"], m.predict(batch)["proposal"])  # deterministic
    # the wh-word (first word) of a question, the subject leaf of a declarative
    assert p["node"].tolist() == [1, 0, 1, 0, 1, 0]
    assert model(subject_node="root").eval().predict(batch)["node"].tolist() == [
        cell(0, n - 1, 6) for n in [6, 3, 5, 1, 2, 6]]
    m.train()
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    losses = []
    for step in range(20):
        torch.manual_seed(step)
        loss, logs = m(batch)
        assert torch.isfinite(loss) and all(math.isfinite(v) for v in logs.values())
        opt.zero_grad()
        loss.backward()
        if step == 0:
            for name, prm in m.named_parameters():
                assert prm.grad is not None and torch.isfinite(prm.grad).all(), name
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-5:]) < np.mean(losses[:5])


def test_bad_options_name_what_is_allowed():
    with pytest.raises(ValueError, match="allowed: tl2, tl1, full, oracle"):
        WinnerConfig(temporal="cpl")
    with pytest.raises(ValueError, match="allowed: logsumexp, average"):
        WinnerConfig(chart_scores="max")
    with pytest.raises(ValueError, match="delta"):
        WinnerConfig(delta=2.0)


@pytest.mark.parametrize("kw", [{}, {"temporal": "full"}, {"temporal": "oracle"}, {"svhu": False, "learn_alpha_beta": True},
                                {"learn_alpha_beta": True, "share_inside_outside": False}, {"linking": "greedy"},
                                {"share_inside_outside": False, "chart_scores": "average"}, {"temporal": "tl1"},
                                {"refuse_negatives": False}, {"refuse_negatives": False, "temporal": "tl1"}])
def test_every_parameter_gets_a_gradient(kw):
    """What DDP needs: no parameter is left out of the graph in any configuration."""
    m = model(**kw).train()
    loss, _ = m(make_batch(B=3, lengths=[6, 4, 2]))
    loss.backward()
    missing = [n for n, p in m.named_parameters() if p.grad is None]
    assert not missing


def test_above_mean_selection_covers_the_relevant_run():
    """tl1_select=above_mean returns the run of frames whose scores are above the video's mean."""
    m = model(temporal="tl1", tl1_select="above_mean").eval()
    batch = make_batch(B=2, T=8)
    q = torch.nn.functional.normalize(torch.randn(2, 32), dim=-1)
    # frame features whose projection aligns with q on frames 2..5 only: set them through the
    # projection's bias, with zero inputs elsewhere
    with torch.no_grad():
        lin, ln = m.frame_proj
        lin.weight.zero_()
        lin.bias.zero_()
        ln.weight.fill_(1.0)
        ln.bias.zero_()
        frames = torch.zeros(2, 8, DF)
        frames[:, 2:6, 0] = 1.0
        lin.weight[:, 0] = q[0] * 5  # frames 2..5 point along q[0]
    batch["frame_feats"] = frames
    s, e, _ = m.temporal(batch, q[:1].expand(2, 32), torch.eye(2, dtype=torch.bool))
    assert s.tolist() == [2, 2] and e.tolist() == [5, 5]
    assert model(temporal="tl1").eval().temporal(batch, q[:1].expand(2, 32), torch.eye(2, dtype=torch.bool))[0].shape == (2,)


def test_default_clip_choice_is_not_the_degenerate_argmax():
    """The fix pinned (winner.py docstring, TL-1's clip choice): frames sharing a strong common
    component (a video's scene) make the clip cosine a clip mean of the frame scores, so the
    spec's argmax picks a minimal clip even when a 12-frame run is relevant; the default
    ``above_mean`` returns the run."""
    assert WinnerConfig().tl1_select == "above_mean"
    T, D = 32, DF
    g = torch.Generator().manual_seed(0)
    scene = torch.zeros(D)
    scene[1], scene[2] = 1.0, -1.0  # zero-mean, so LayerNorm keeps it
    rel = torch.zeros(D)
    rel[3], rel[4] = 1.0, -1.0
    frames = 3.0 * scene + 0.3 * torch.randn(2, T, D, generator=g)
    frames[:, 10:22] += 0.6 * rel  # the relevant run, frames 10..21
    batch = make_batch(B=2, T=T)
    batch["frame_feats"] = frames
    q = torch.nn.functional.normalize(rel, dim=0).expand(2, D)
    same = torch.eye(2, dtype=torch.bool)
    picks = {}
    for select in ("argmax", "above_mean"):
        torch.manual_seed(0)
        m = Winner(WinnerConfig(hidden_dim=D, temporal="tl1", tl1_select=select), info(T=T)).eval()
        _identity_frame_proj(m, D)
        s, e, _ = m.temporal(batch, q, same)
        picks[select] = (s, e)
    s, e = picks["argmax"]
    assert ((e - s + 1) <= 3).all() and (s >= 10).all() and (e <= 21).all()  # inside, but minimal
    s, e = picks["above_mean"]
    inter = (torch.minimum(e, torch.tensor(21)) - torch.maximum(s, torch.tensor(10)) + 1).clamp(min=0)
    union = (e - s + 1) + 12 - inter
    assert (inter / union >= 0.8).all()


# --------------------------------------------------------------------------- issue 23: refusion, true marginals
def _trees(i, j):
    """Every binary tree over span (i, j): (list of its internal (i, j, k) splits, its spans)."""
    if i == j:
        return [([], [(i, i)])]
    out = []
    for k in range(i, j):
        for sl, pl in _trees(i, k):
            for sr, pr in _trees(k + 1, j):
                out.append((sl + sr + [(i, j, k)], pl + pr + [(i, j)]))
    return out


def _rule_index(L):
    off, o = {}, 0
    for lvl in range(1, L):
        off[lvl] = o
        o += (L - lvl) * lvl
    return lambda i, j, k: off[j - i] + i * (j - i) + (k - i)


@pytest.mark.parametrize("svhu", [True, False])
def test_span_weight_is_the_span_posterior_with_the_logsumexp_chart(svhu):
    """chart_scores=logsumexp: exp(c^B + c^U - c^B_root) is the posterior probability of the span
    under the chart's weighted grammar (rule weight exp(r_ik^T W r_k+1,j)), checked against
    enumerating every binary tree; so pi <= 1, every leaf and the root have pi = 1, and a
    sentence's pi sum to 2n - 1 (the nodes of any binary tree over n words)."""
    m = model(svhu=svhu).eval()
    with torch.no_grad():
        m.compose.W.mul_(3.0)  # sharper trees than at init, where the average chart's pi reach far above 1
    lengths = [5, 3, 6, 1]
    e = m.encode(make_batch(B=4, L=6, lengths=lengths))
    pi, valid = e["pi"], e["valid"]
    assert (pi[valid] <= 1 + 1e-5).all() and pi[valid].min() > 0
    rule = _rule_index(6)
    for b, n in enumerate(lengths):
        assert torch.allclose(pi[b, :n], torch.ones(n), atol=1e-5)  # leaves
        assert pi[b].sum().item() == pytest.approx(2 * n - 1, rel=1e-5)
        trees = _trees(0, n - 1)
        score = torch.stack([sum((e["rules"][b, rule(*s)] for s in splits), torch.zeros(())) for splits, _ in trees])
        post = score.softmax(0)
        assert e["s_root"][b].item() == pytest.approx(score.logsumexp(0).item(), abs=1e-4)  # log Z
        for i in range(n):
            for j in range(i, n):
                p = sum(post[t].item() for t, (_, spans) in enumerate(trees) if (i, j) in spans)
                assert pi[b, cell(i, j, 6)].item() == pytest.approx(p, abs=1e-5), (b, i, j)
    # the previous chart (Eqs. 4 and 14 as printed) is kept behind the option, and its pi is not bounded
    old = copy.deepcopy(m)
    old.cfg = WinnerConfig(svhu=svhu, chart_scores="average")
    eo = old.encode(make_batch(B=4, L=6, lengths=lengths))
    assert eo["pi"][eo["valid"]].max() > 1.5


def test_pi_stays_bounded_on_long_sentences_while_training():
    """The unbounded weight the issue measured (pi up to 1e10 on 8-word sentences with the fusion)
    cannot arise: after training steps at a high learning rate every pi is still <= 1."""
    m = model().train()
    opt = torch.optim.Adam(m.parameters(), lr=3e-2)
    for step in range(8):
        loss, logs = m(make_batch(B=4, L=8, seed=step))
        assert logs["pi_max"] <= 1 + 1e-5 and logs["pi_clamped"] == 0
        opt.zero_grad()
        loss.backward()
        opt.step()


def _heldout_word_loss_per_word(refuse: bool, B: int = 8, L: int = 6, steps: int = 40) -> tuple[float, float]:
    """Train the word loss alone on batches whose words are drawn at random, independently of
    the videos; -> (per-word word loss on the first batch, mean on held-out batches)."""
    torch.manual_seed(0)
    m = Winner(WinnerConfig(temporal="full", att_dropout=0.0, dsa=False, w_rec=0.0, refuse_negatives=refuse),
               info()).train()
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    first = None
    for step in range(steps):
        loss, logs = m(make_batch(B=B, L=L, seed=1000 + step))
        first = logs["loss_word"] / L if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        held = [m(make_batch(B=B, L=L, seed=5000 + i))[1]["loss_word"] / L for i in range(5)]
    return first, float(np.mean(held))


def test_random_words_cannot_beat_chance_when_negatives_are_refused():
    """Words unrelated to the videos carry nothing to ground: with every negative video fused
    into the sentence's chart as its positive is (refuse_negatives, the default), the word loss
    stays at log B; scoring the negatives with the chart fused with the sentence's own video
    (the previous behaviour) lets the loss fall far below chance from the fusion alone (spec A35)."""
    assert WinnerConfig().refuse_negatives
    log_b = math.log(8)
    first, held = _heldout_word_loss_per_word(True)
    assert abs(first - log_b) < 0.05 * log_b and abs(held - log_b) < 0.05 * log_b
    _, held_old = _heldout_word_loss_per_word(False)
    assert held_old < 0.8 * log_b


def test_refused_pairs_score_each_pair_as_inference_would():
    """With refuse_negatives the chart of pair (a, b) is exactly sentence a's chart fused with
    video b, i.e. what predict computes when sentence a is given with video b's row."""
    m = model(temporal="full").eval()
    batch = make_batch(B=3, lengths=[6, 4, 5])
    e = m.encode(batch, pairs=True)
    for a in range(3):
        for b in range(3):
            row = {k: v[[a]] for k, v in batch.items()}
            for k in ("frame_feats", "region_feats", "boxes", "frame_valid", "tubes"):
                row[k] = batch[k][[b]]
            single = m.encode(row)
            n = [6, 4, 5][a]
            cells = [cell(i, j, 6) for i in range(n) for j in range(i, n)]
            cells1 = [cell(i, j, n) for i in range(n) for j in range(i, n)]
            for key in ("H", "HU", "pi"):
                assert torch.allclose(e[key][a, b, cells], single[key][0, cells1], atol=1e-5), (a, b, key)


class _Split:
    """A split of ``n`` hand-made rows (``make_batch``'s), as the engine reads one."""

    def __init__(self, n, seed):
        self.rows = make_batch(B=n, lengths=[6, 4, 5, 3] * (n // 4), seed=seed)
        T = self.rows["frame_valid"].shape[1]
        self.rows["frame_ids"] = torch.arange(T).expand(n, T).clone()
        self.rows["gt_fids"] = self.rows["gt_segment"].clone()
        self.n = n

    def __len__(self):
        return self.n

    def batch(self, idx, device="cpu"):
        idx = torch.as_tensor(np.asarray(idx))
        return {k: v[idx] for k, v in self.rows.items()}


def test_fusion_off_validation_is_logged_every_epoch():
    """The A35 diagnostic, val metrics of the trained model with its fusion switched off at test
    time, is reported with every epoch's metrics (``epoch_val/fusion_off/<metric>``) and selects
    nothing; a model without the fusion has no such pass."""
    data = tasks.TaskData(task=tasks.get("tube"), info=info(), digest="",
                          splits={"train": _Split(8, 0), "val": _Split(12, 1)})
    fixed = {"batch_size": 4}
    recipe, stages = recipes.plan("winner", {"lr": 1e-3}, fixed, 1, "m_viou")
    group = training.build_group(recipe, stages, data, seed=0, device="cpu", eval_batch_size=8)
    rep = group.step(data)
    model = group.runs["winner"].model
    assert model.cfg.svhu  # the switch is undone after the pass
    off = copy.deepcopy(model)
    off.cfg = off.cfg.replace(svhu=False)
    expect = engine.evaluate(off, data["val"], data.task, data.info, batch_size=8)
    got = {k[len("epoch_val/fusion_off/"):]: v for k, v in rep.items() if k.startswith("epoch_val/fusion_off/")}
    assert got == pytest.approx(expect)
    on = engine.evaluate(model, data["val"], data.task, data.info, batch_size=8)
    assert rep["epoch_val/m_viou"] == pytest.approx(on["m_viou"]) and rep["val/m_viou"] == pytest.approx(on["m_viou"])
    recipe, stages = recipes.plan("winner", {"lr": 1e-3}, {**fixed, "svhu": False}, 1, "m_viou")
    rep = training.build_group(recipe, stages, data, seed=0, device="cpu", eval_batch_size=8).step(data)
    assert not any("fusion_off" in k for k in rep)


def test_tl2_segment_is_the_run_of_frames_that_match_the_query():
    """temporal=tl2 predicts the run of frames whose standardised score clears seg_threshold, and
    its InfoNCE is lower when each video's relevant frames match its own sentence's query."""
    T, D = 32, DF
    g = torch.Generator().manual_seed(0)
    scene = torch.zeros(D)
    scene[1], scene[2] = 1.0, -1.0
    rel = torch.zeros(2, D)
    rel[0, 3], rel[0, 4] = 1.0, -1.0
    rel[1, 5], rel[1, 6] = 1.0, -1.0
    frames = 3.0 * scene + 0.3 * torch.randn(2, T, D, generator=g)
    frames[0, 10:22] += 0.6 * rel[0]
    frames[1, 4:12] += 0.6 * rel[1]
    batch = make_batch(B=2, T=T)
    batch["frame_feats"] = frames
    q = torch.nn.functional.normalize(rel, dim=-1)
    same = torch.eye(2, dtype=torch.bool)
    torch.manual_seed(0)
    m = Winner(WinnerConfig(hidden_dim=D, temporal="tl2", seg_threshold=0.5), info(T=T)).eval()
    _identity_frame_proj(m, D)
    s, e, _ = m.temporal(batch, q, same)
    for b, (gs, ge) in enumerate([(10, 21), (4, 11)]):
        inter = max(0, min(int(e[b]), ge) - max(int(s[b]), gs) + 1)
        assert inter / ((int(e[b]) - int(s[b]) + 1) + (ge - gs + 1) - inter) >= 0.8
    # per pair: sentence a's query on video b picks b's frames that match a
    sp, ep, _ = m.temporal(batch, q[:, None].expand(2, 2, D), same)
    assert sp.shape == (2, 2) and torch.equal(sp.diagonal(), s) and torch.equal(ep.diagonal(), e)
    m.train()
    _, _, l_match = m.temporal(batch, q, same)
    _, _, l_swap = m.temporal(batch, q.flip(0), same)
    assert l_match < math.log(2) < l_swap


def test_loss_terms_sum_to_the_loss_and_leave_the_unigram_counts_alone():
    """What the engine's gradient probe needs: the weighted terms add up to the training loss, and
    computing them counts no tokens (the reconstruction's negatives are drawn from the counts)."""
    batch = make_batch(B=4, lengths=[6, 4, 5, 3])
    m = model().train()
    before = m.unigram.clone()
    torch.manual_seed(3)
    terms = m.loss_terms(batch)
    assert set(terms) == {"word", "phrase", "rec", "tmp"} and torch.equal(m.unigram, before)
    torch.manual_seed(3)
    loss, _ = m(batch)
    assert loss.item() == pytest.approx(sum(t.item() for t in terms.values()), rel=1e-5)
    assert not torch.equal(m.unigram, before)  # training counts them
    probe = engine.grad_probe(m, batch)
    assert probe["grad/phrase/compose"] > 0 and probe["grad/word/tube_proj"] > 0


def test_test_segment_reads_one_trained_model_over_the_whole_video_or_the_gt_segment():
    """``test_segment`` is a prediction option: the tl2 model's weights, decoded over [0, valid frames)
    or the GT segment, with the tube chosen over that segment."""
    batch = make_batch(frames=[8, 6, 8, 5])
    m = model().eval()
    pkg = {"format": training.PACKAGE_FORMAT, "stages": {"model": {"method": "winner", "params": {},
                                                                   "model": m.state_dict()}}}
    whole = training.load_predictor(pkg, info(), options={"test_segment": "full"}).eval().predict(batch)
    assert whole["segment"].tolist() == [[0, 8], [0, 6], [0, 8], [0, 5]]
    gt = training.load_predictor(pkg, info(), options={"test_segment": "oracle"}).eval().predict(batch)
    assert torch.equal(gt["segment"], batch["gt_segment"])
    with m.variant({"temporal": "full"}):  # the same as a model built with temporal=full, on these weights
        assert torch.equal(m.predict(batch)["proposal"], whole["proposal"])
    own = training.load_predictor(pkg, info()).eval().predict(batch)
    assert torch.equal(own["segment"], m.predict(batch)["segment"])
    with pytest.raises(ValueError, match="allowed: model, full, oracle"):
        training.load_predictor(pkg, info(), options={"test_segment": "gt"})
