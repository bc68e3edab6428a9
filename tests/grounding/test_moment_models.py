"""Equation checks of ``cpl`` and ``ccr`` on tiny tensors, and one smoke epoch of each."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from grounding import engine, tasks
from grounding.data.shards import Dataset
from grounding.models import registry
from grounding.models.base import DataInfo
from grounding.models.ccr import aggregate, kl_to_counterfactual
from grounding.metrics.moment import vote_prediction, vote_winner
from grounding.models.cpl import (Attention, diversity_penalty, gauss_bias, gaussian_mask, hinge,
                                  negative_masks, proposals_from, vote_weighting)

V, L, D = 12, 16, 8


def _info(dataset: str | None = None) -> DataInfo:
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((V, 300)).astype(np.float32)
    vectors[0] = 0
    return DataInfo(task="moment", dims={"L": L, "D": D}, word_vectors=vectors, dataset=dataset)


def _batch(B: int = 3, W: int = 5, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([W, 3, 1, W, 2][:B])
    mask = torch.arange(W)[None] < lengths[:, None]
    words = torch.randint(1, V, (B, W), generator=g) * mask
    return {"features": torch.randn(B, L, D, generator=g), "words": words, "word_mask": mask,
            "mask_weight": (1.0 + (words % 2 == 0).float()) * mask,
            "moments": torch.tensor([[0.1, 0.4], [0.5, 0.9], [0.0, 1.0], [0.2, 0.3], [0.6, 0.7]][:B]),
            "duration": torch.full((B,), 30.0), "video": torch.arange(B)}


def _model(method: str, dataset: str | None = None, **kw):
    torch.manual_seed(0)
    return registry.build(method, {"hidden_dim": 16, "heads": 2, "layers": 1, "downsample": 2, **kw}, _info(dataset))


# ------------------------------------------------------------------------------------- CPL
def test_gaussian_mask_by_hand():
    pos = torch.tensor([0.4, 0.5, 0.6, 0.9])
    g = gaussian_mask(torch.tensor([0.5]), torch.tensor([0.9]), pos, sigma=9.0)  # std = 0.1
    assert torch.allclose(g[0], torch.tensor([math.exp(-0.5), 1.0, math.exp(-0.5), math.exp(-8.0)]), atol=1e-6)
    # widths below 0.01 count as 0.01 (std 0.01 / sigma)
    tiny = gaussian_mask(torch.tensor([0.5]), torch.tensor([1e-4]), torch.tensor([0.5, 0.5 + 1 / 900]), 9.0)
    assert tiny[0, 1] == pytest.approx(math.exp(-0.5), rel=1e-4)
    # normalised by its maximum on the grid, even when the centre lies off the grid
    off = gaussian_mask(torch.tensor([0.55]), torch.tensor([0.9]), pos, 9.0)
    assert off.max() == pytest.approx(1.0)


def test_negative_masks_by_hand():
    pos = torch.linspace(0, 1, 101)
    c, w = torch.tensor([0.5]), torch.tensor([0.2])
    left, right = negative_masks(c, w, pos, sigma=9.0, r=1.0)
    # left region [0, 0.4]: centre 0.2, std 0.2 / 4.5; right region [0.6, 1]: centre 0.8
    assert pos[left[0].argmax()] == pytest.approx(0.2)
    assert pos[right[0].argmax()] == pytest.approx(0.8)
    std = 0.2 / 4.5
    assert left[0, 20 + 4] == pytest.approx(math.exp(-(0.04 ** 2) / (2 * std ** 2)), rel=1e-4)
    # early in training (r small) the negatives hug the video's edges
    l0, r0 = negative_masks(c, w, pos, 9.0, r=0.1)
    assert pos[l0[0].argmax()] == pytest.approx(0.02) and pos[r0[0].argmax()] == pytest.approx(0.98)


def test_diversity_penalty_by_hand():
    lam = 0.146
    disjoint = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    assert diversity_penalty(disjoint, lam).item() == pytest.approx(2 * (1 - lam) ** 2)
    same = torch.tensor([[[1.0, 1.0], [2.0, 2.0]]])  # both normalise to (1/2, 1/2)
    assert diversity_penalty(same, lam).item() == pytest.approx(2 * (0.5 - lam) ** 2 + 2 * 0.25)


def test_diversity_term_lives_on_its_own_grid():
    m = _model("cpl", div_grid=50)
    out = m.score_all(_batch())
    _, logs = m.cpl_loss(out)
    g = gaussian_mask(out["center"], out["width"], (torch.arange(50) + 0.5) / 50, m.cfg.sigma)
    assert logs["loss_div"] == pytest.approx(diversity_penalty(g, m.cfg.div_lambda).mean().item(), rel=1e-5)


def test_hinge_and_contrastive_losses_by_hand():
    assert hinge(torch.tensor(1.0), torch.tensor(1.2), 0.1).item() == 0.0
    assert hinge(torch.tensor(1.0), torch.tensor(0.95), 0.1).item() == pytest.approx(0.15)
    m = _model("cpl", alpha_p=0.1, alpha_n=0.15)
    # selected positive 1.0; reference 1.05; left negative 1.1; right negative 2.0
    rec, ivc = m.contrastive(torch.tensor([1.0]), torch.tensor([1.1]), torch.tensor([2.0]), torch.tensor([1.05]))
    assert rec.item() == pytest.approx((1.0 + 1.05) / 2)
    # ref: 1.0 - 1.05 + 0.1 = 0.05; left: 1.0 - 1.1 + 0.15 = 0.05; right: 1.0 - 2.0 + 0.15 < 0
    assert ivc.item() == pytest.approx(0.1)
    # two queries: the batch mean
    rec2, ivc2 = m.contrastive(torch.tensor([1.0, 3.0]), torch.tensor([1.1, 3.0]), torch.tensor([2.0, 3.0]),
                               torch.tensor([1.05, 3.0]))
    assert ivc2.item() == pytest.approx((0.1 + 0.1 + 0.15 + 0.15) / 2)


def test_selected_positive_and_its_negatives():
    m = _model("cpl")
    out = m.score_all(_batch())
    B, K = out["center"].shape
    assert torch.equal(out["best"], out["nll_pos"].argmin(1))
    assert out["logits_pos"].shape[0] == B * K and out["logits_rest"].shape[0] == 3 * B
    # the loss uses k*'s reconstruction loss, and it is the lowest of the K
    loss, logs = m.cpl_loss(out)
    assert torch.isfinite(loss) and logs["loss_rec"] > 0


def test_gaussian_attention_equals_reweighting():
    torch.manual_seed(0)
    att = Attention(8, 2)
    x, mem = torch.randn(2, 3, 8), torch.randn(2, 5, 8)
    g = torch.rand(2, 5)
    got = att(x, mem, gauss_bias(g))
    q = att.q(x).view(2, 3, 2, 4).transpose(1, 2)
    k, v = att.kv(mem).view(2, 5, 2, 2, 4).permute(2, 0, 3, 1, 4)
    a = (q @ k.transpose(-1, -2) / 2.0).softmax(-1)  # scale 1/sqrt(4)
    a = a * (g[:, None, None] + 1e-10)
    a = a / a.sum(-1, keepdim=True)
    want = att.out((a @ v).transpose(1, 2).reshape(2, 3, 8))
    assert torch.allclose(got, want, atol=1e-5)


def test_masking_counts_and_deterministic_eval():
    m = _model("cpl")
    b = _batch()
    wmask = b["word_mask"]
    weight = torch.tensor([[1.0, 2.0, 1.0, 2.0, 1.0], [2.0, 1.0, 2.0, 0, 0], [2.0, 0, 0, 0, 0]])
    for train in (True, False):
        chosen = m.choose_masked(weight, wmask, train)
        # n = 5 -> 1 of w_1..w_4; n = 3 -> 1 of w_1..w_2; n = 1 -> nothing to mask
        assert chosen.sum(1).tolist() == [1, 1, 0]
        assert not chosen[:, 0].any()
        assert not (chosen & ~(torch.arange(5)[None] < wmask.sum(1, keepdim=True))).any()
    ev = m.choose_masked(weight, wmask, train=False)
    # input position j shows word w_j with weight[j - 1]: the first content word is w_2 (pos 2)
    assert ev[0].nonzero().flatten().tolist() == [2] and ev[1].nonzero().flatten().tolist() == [1]
    assert torch.equal(ev, m.choose_masked(weight, wmask, train=False))
    m6 = _model("cpl", mask_ratio=1 / 3)
    six = torch.ones(1, 7, dtype=torch.bool)
    assert m6.choose_masked(torch.ones(1, 7), six, True).sum().item() == 2  # floor(7 / 3)


@pytest.mark.parametrize("method", ["cpl", "ccr"])
def test_forward_and_predict(method):
    m = _model(method)
    b = _batch()
    loss, logs = m(b)
    assert torch.isfinite(loss) and {"loss_rec", "loss_ivc", "loss_div"} <= set(logs)
    loss.backward()
    m.eval()
    p1, p2 = m.predict(b), m.predict(b)  # the vote, topn_order=rank: {"proposals", "top1"}
    assert set(p1) == {"proposals", "top1"} and all(torch.equal(p1[k], p2[k]) for k in p1)
    props = p1["proposals"]
    assert props.shape == (3, m.cfg.num_props, 2) and p1["top1"].shape == (3, 2)
    assert ((props >= 0) & (props <= 1)).all() and (props[..., 0] <= props[..., 1]).all()
    assert all(any(torch.equal(p1["top1"][i], q) for q in props[i]) for i in range(3))  # top1 is a proposal


@pytest.mark.parametrize("method", ["cpl", "ccr"])
@pytest.mark.parametrize("dataset, weight", [("charades_sta", "iou"), ("charades_cd", "iou"),
                                             ("charades_cd_generated", "iou"), (None, "iou"),
                                             ("anet_captions", "uniform"), ("anet_cd", "uniform")])
def test_predict_votes_and_scores_as_cpl_per_dataset(method, dataset, weight):
    """``vote_weight=dataset`` (default) weights the vote by IoU with the first proposal on Charades
    and votes unweighted elsewhere; ``topn_order=rank`` (default) keeps the reconstruction order
    for R@n and names the winner ``top1``; ``topn_order=vote`` is the earlier winner-first list."""
    assert vote_weighting("dataset", dataset) == weight
    b = _batch()
    ranked = _model(method, dataset, vote=False).eval().predict(b)  # reconstruction order
    assert torch.is_tensor(ranked) and ranked.shape == (3, 8, 2)
    got = _model(method, dataset).eval().predict(b)
    assert torch.equal(got["proposals"], ranked)
    assert torch.equal(got["top1"], ranked[torch.arange(3), vote_winner(ranked, weight)])
    for forced in ("iou", "uniform"):
        out = _model(method, dataset, vote_weight=forced).eval().predict(b)
        assert torch.equal(out["top1"], vote_prediction(ranked, True, forced)["top1"])
    old = _model(method, dataset, topn_order="vote").eval().predict(b)
    assert torch.is_tensor(old) and torch.equal(old[:, 0], got["top1"])
    assert torch.equal(old, vote_prediction(ranked, True, weight, "vote"))


def test_vote_options_parse_on_the_sweep_command_line():
    from orchestration.cli import sweep_args as config

    cfg = config.parse(["method=cpl", "model.vote_weight=uniform", "model.topn_order=vote"])
    assert cfg.model == {"vote_weight": "uniform", "topn_order": "vote"}
    with pytest.raises(config.ConfigError, match="model.vote_weight='anet' is not an option; allowed: dataset, iou"):
        config.parse(["method=ccr", "model.vote_weight=anet"])
    for method in ("cpl", "ccr"):
        text = config.help_text(method)
        assert "model.vote_weight      dataset" in text and "model.topn_order       rank" in text


def test_proposals_are_clamped_centre_width():
    p = proposals_from(torch.tensor([0.1, 0.5]), torch.tensor([0.4, 0.2]))
    assert torch.allclose(p, torch.tensor([[0.0, 0.3], [0.4, 0.6]]))


def test_config_validation_messages():
    with pytest.raises(ValueError, match="num_props"):
        registry.make_config("cpl", {"num_props": 0})
    with pytest.raises(ValueError, match="divisible"):
        registry.make_config("ccr", {"hidden_dim": 30, "heads": 4})
    with pytest.raises(KeyError, match="kl_weight"):
        registry.make_config("cpl", {"kl_weight": 1.0})
    with pytest.raises(ValueError, match="downsample"):
        registry.build("cpl", {"downsample": 16}, _info())
    with pytest.raises(ValueError, match="vote_weight='charades' is not an option; allowed: dataset, iou, uniform"):
        registry.make_config("cpl", {"vote_weight": "charades"})
    with pytest.raises(ValueError, match="topn_order='winner' is not an option; allowed: rank, vote"):
        registry.make_config("ccr", {"topn_order": "winner"})


# ------------------------------------------------------------------------------------- CCR
def test_aggregation_and_rectification():
    x, y = torch.tensor([2.0, -1.0]), torch.tensor([0.0, math.log(3.0)])
    assert torch.allclose(aggregate(x, y), torch.tensor([1.0, -0.75]))
    m = _model("ccr", rank="rectified")
    with torch.no_grad():
        m.mu.fill_(0.7)
    phi, words_in = torch.randn(2, 4, V), torch.randn(2, 4, 16)
    ids, wmask = torch.randint(1, V, (2, 4)), torch.ones(2, 4, dtype=torch.bool)
    psi = m.psi(words_in)
    rect = phi * torch.sigmoid(psi) - 0.7 * torch.sigmoid(psi)  # q - q_c = (phi - mu) sigmoid(psi)
    want = F.cross_entropy(rect.flatten(0, 1), ids.flatten(), reduction="none",
                           label_smoothing=m.cfg.label_smoothing).view(2, 4).mean(1)
    assert torch.allclose(m.rank_scores(phi, words_in, ids, wmask), want, atol=1e-5)


def test_kl_value_and_it_updates_mu_alone():
    m = _model("ccr")
    with torch.no_grad():
        m.mu.fill_(0.3)
    words_in = torch.randn(2, 3, 16, requires_grad=True)
    psi = m.psi(words_in)
    q_star = aggregate(m.fc_comp(words_in), psi)
    wmask = torch.tensor([[True, True, False], [True, True, True]])
    kl = kl_to_counterfactual(q_star, m.mu, psi, wmask)
    p = F.softmax(q_star, -1)
    q = F.softmax(0.3 * torch.sigmoid(psi), -1)
    per = (p * (p.log() - q.log())).sum(-1)
    assert kl.item() == pytest.approx(((per[0, :2].mean() + per[1].mean()) / 2).item(), rel=1e-5)
    assert kl.item() >= 0
    params = dict(m.named_parameters())
    grads = torch.autograd.grad(kl, [*params.values(), words_in], allow_unused=True)
    named = dict(zip([*params, "words_in"], grads))
    assert named["mu"] is not None and named["mu"].abs() > 0
    assert all(g is None or not g.abs().any() for k, g in named.items() if k != "mu")


@pytest.mark.parametrize("score", ["paper", "code"])
def test_mu_learns_only_through_the_kl_term(score):
    b = _batch()
    m = _model("ccr", kl_weight=0.0, score=score)
    loss, _ = m(b)
    loss.backward()
    assert m.mu.grad is None or m.mu.grad.abs().item() == 0
    m = _model("ccr", score=score)
    loss, logs = m(b)
    loss.backward()
    assert m.mu.grad.abs().item() > 0 and ("loss_kl" in logs) == (score == "paper")


# --------------------------------------------------------------------------------- smoke run
@pytest.mark.parametrize("method", ["cpl", "ccr"])
def test_one_epoch_on_the_smoke_benchmark(benchmark_root, method):
    ds = Dataset.open(benchmark_root("charades"))
    data = tasks.load(ds, splits=("train", "val"))
    assert data.info.dataset == "charades_cd_generated"  # -> the IoU-weighted vote (vote_weight=dataset)
    engine.seed_everything(0)
    model = registry.build(method, {}, data.info)
    cfg = engine.OptimConfig(lr=4e-4)
    logs = engine.train_one_epoch(model, engine.make_optimizer(model, cfg), data["train"], cfg, 0, 0)
    assert logs["steps"] >= 1 and math.isfinite(logs["loss"])
    metrics = engine.evaluate(model, data["val"], data.task, data.info)
    assert list(metrics) == list(data.task.metric_names)
    assert all(0 <= v <= 1 for v in metrics.values())


@pytest.mark.parametrize("method", ["cpl", "ccr"])
def test_search_space_names_and_paper_point(method):
    import search_spaces
    from grounding.engine import OPTIM_KEYS

    mod = search_spaces.load(method)
    space = mod.space({"L": 64, "D": 128})
    fields = registry.config_fields(method)
    assert set(space) <= set(fields) | set(OPTIM_KEYS)
    assert {"div_lambda", "alpha_p", "alpha_n", "num_props", "sigma", "mask_ratio", "lr"} <= set(space)
    for name, value in mod.PAPER.items():
        assert space[name].contains(value), name
        if name in fields:
            assert fields[name].default == value, name  # the config defaults are the paper's
    _, points = search_spaces.resolve(method, {"L": 64, "D": 128}, {})
    assert points == [mod.PAPER]
