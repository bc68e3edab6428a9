"""The log loss, the MIL ranking loss and the STVG video score on hand values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from grounding.losses import log_loss, mil_ranking_loss
from grounding.models.base import DataInfo
from grounding.models.stvg import STVG, STVGConfig


def l(x: float, eta: float) -> float:  # noqa: E743 - the paper's name
    return math.log1p(math.exp(x / eta))


@pytest.mark.parametrize("eta", [0.2, 1.0, 3.0])
def test_log_loss_matches_the_formula(eta):
    xs = [-2.0, -0.3, 0.0, 0.1, 1.5]
    got = log_loss(torch.tensor(xs, dtype=torch.float64), eta)
    np.testing.assert_allclose(got.numpy(), [l(x, eta) for x in xs], rtol=1e-12)
    assert log_loss(torch.tensor(0.0), eta).item() == pytest.approx(math.log(2))


def test_log_loss_is_stable_for_large_inputs():
    # x / eta = 500: exp overflows float64's math.exp range only near 710, float32's near 88;
    # log(1 + e^500) = 500 + log(1 + e^-500) = 500 to double precision.
    big = log_loss(torch.tensor([100.0]), 0.2)
    assert torch.isfinite(big).all() and big.item() == pytest.approx(500.0)
    assert log_loss(torch.tensor([-100.0]), 0.2).item() == pytest.approx(math.exp(-500), abs=1e-30)


def test_mil_ranking_loss_hand_values():
    # eta = 0.5
    # video 0: p = 0.5, p[V'Q] = 0.3, p[VQ'] = 0.1 -> l(-0.2) + l(-0.4) = log1p(e^-0.4) + log1p(e^-0.8)
    # video 1: p = 0.2, p[V'Q] = 0.4, p[VQ'] = 0.2 -> l(0.2) + l(0.0) = log1p(e^0.4) + log 2
    eta = 0.5
    p = torch.tensor([0.5, 0.2], dtype=torch.float64)
    nv = torch.tensor([0.3, 0.4], dtype=torch.float64)
    nq = torch.tensor([0.1, 0.2], dtype=torch.float64)
    v0 = math.log1p(math.exp(-0.4)) + math.log1p(math.exp(-0.8))
    v1 = math.log1p(math.exp(0.4)) + math.log(2)
    assert mil_ranking_loss(p, nv, nq, eta).item() == pytest.approx((v0 + v1) / 2, rel=1e-12)
    # the loss falls when the positive rises above its negatives
    assert mil_ranking_loss(p + 1, nv, nq, eta) < mil_ranking_loss(p, nv, nq, eta)


def test_mil_ranking_loss_gradient_signs():
    p = torch.tensor([0.3], requires_grad=True)
    nv = torch.tensor([0.1], requires_grad=True)
    nq = torch.tensor([0.2], requires_grad=True)
    mil_ranking_loss(p, nv, nq, 0.2).backward()
    # d/dp = -(s(nv-p) + s(nq-p))/eta with s the logistic; d/dnv = s(nv-p)/eta
    s = lambda x: 1 / (1 + math.exp(-x / 0.2))  # noqa: E731
    assert p.grad.item() == pytest.approx(-(s(-0.2) + s(-0.1)) / 0.2, rel=1e-5)
    assert nv.grad.item() == pytest.approx(s(-0.2) / 0.2, rel=1e-5)
    assert nq.grad.item() == pytest.approx(s(-0.1) / 0.2, rel=1e-5)


def test_stvg_video_score_hand_values():
    # B = 3, Kq = 2, T = 2, N = 3
    M = torch.tensor([
        # video 0: query 0 valid, query 1 padding (its huge scores must not count)
        [[[0.1, 0.7, 0.3], [0.2, -0.5, 0.4]], [[10.0, 10.0, 10.0], [10.0, 10.0, 10.0]]],
        # video 1: both valid
        [[[0.1, 0.7, 0.3], [0.2, -0.5, 0.4]], [[1.0, 0.0, 0.5], [-1.0, 0.0, -2.0]]],
        # video 2: no valid query
        [[[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]], [[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]]],
    ])
    G = torch.tensor([[[0.25, 0.75], [0.5, 0.5]], [[0.25, 0.75], [0.5, 0.5]], [[0.5, 0.5], [0.5, 0.5]]])
    mask = torch.tensor([[True, False], [True, True], [False, False]])
    # F (max over proposals): query 0 -> [0.7, 0.4]; video 1 query 1 -> [1.0, 0.0]
    # video 0: 0.7*0.25 + 0.4*0.75 = 0.475
    # video 1: mean(0.475, 1.0*0.5 + 0.0*0.5) = 0.4875
    # video 2: no valid query -> 0
    p = STVG.video_score(M, G, mask)
    np.testing.assert_allclose(p.numpy(), [0.475, 0.4875, 0.0], rtol=1e-6)


def _tiny_stvg(seed=0, dropout=0.0):
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    info = DataInfo(task="wsvog", dims={"T": 3, "N": 4, "D": 6},
                    class_vectors=rng.standard_normal((5, 7)).astype(np.float32),
                    class_priors=np.full(5, 0.2))
    return STVG(STVGConfig(embed_dim=8, heads=2, dropout=dropout), info)


def test_stvg_query_embedding_masks_padding():
    model = _tiny_stvg().eval()
    queries = torch.tensor([[3, -1, 1], [-1, -1, -1]])
    Q, mask, Qs = model.embed_queries(queries)
    assert mask.tolist() == [[True, False, True], [False, False, False]]
    assert torch.all(Q[0, 1] == 0) and torch.all(Q[1] == 0)
    # valid rows are unit vectors (relu output normalised) and Q_sent is their elementwise max
    np.testing.assert_allclose(Q[0, [0, 2]].norm(dim=-1).detach().numpy(), [1.0, 1.0], rtol=1e-5)
    assert torch.equal(Qs[0], torch.maximum(Q[0, 0], Q[0, 2]))
    assert torch.equal(Qs[1], torch.zeros_like(Qs[1]))
    # Q_k depends on the class only: the same class in another slot/video embeds identically
    Q2, _, _ = model.embed_queries(torch.tensor([[1, 3]]))
    assert torch.allclose(Q2[0, 0], Q[0, 2]) and torch.allclose(Q2[0, 1], Q[0, 0])


@torch.no_grad()
def test_stvg_mil_loss_is_the_ranking_loss_of_rolled_pairs():
    """``L_MIL`` pairs video b with the video and the queries of b+1 (mod B)."""
    model = _tiny_stvg().eval()
    g = torch.Generator().manual_seed(1)
    batch = {"features": torch.randn(3, 3, 4, 6, generator=g), "queries": torch.tensor([[0, 2], [1, -1], [4, 3]])}
    loss, parts = model.mil(batch)
    Q, mask, Qs, V = parts["Q"], parts["mask"], parts["Qs"], parts["V"]
    p = torch.stack([model.score(Q[b:b + 1], mask[b:b + 1], Qs[b:b + 1], V[b:b + 1])[0][0] for b in range(3)])
    nv = torch.stack([model.score(Q[b:b + 1], mask[b:b + 1], Qs[b:b + 1], V[(b + 1) % 3:(b + 1) % 3 + 1])[0][0]
                      for b in range(3)])
    nq = torch.stack([model.score(Q[(b + 1) % 3:(b + 1) % 3 + 1], mask[(b + 1) % 3:(b + 1) % 3 + 1],
                                  Qs[(b + 1) % 3:(b + 1) % 3 + 1], V[b:b + 1])[0][0] for b in range(3)])
    torch.testing.assert_close(parts["p"], p)
    torch.testing.assert_close(parts["p_neg_video"], nv)
    torch.testing.assert_close(parts["p_neg_query"], nq)
    eta = model.cfg.eta
    expected = np.mean([l(float(nv[b] - p[b]), eta) + l(float(nq[b] - p[b]), eta) for b in range(3)])
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    # G is a distribution over frames per query; M is a cosine similarity (|M| <= 1)
    torch.testing.assert_close(parts["G"].sum(-1), torch.ones(3, 2))
    assert parts["M"].abs().max() <= 1 + 1e-5
    with pytest.raises(ValueError, match="at least two"):
        model.mil({k: v[:1] for k, v in batch.items()})
