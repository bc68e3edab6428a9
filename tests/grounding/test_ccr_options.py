"""``ccr``'s paper/code switches: score, rank, side_head, rec_norm, each against a hand computation."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from grounding.models import registry
from grounding.models.ccr import aggregate
from grounding.models.cpl import hinge

from test_moment_models import V, _batch, _info

SMALL = {"hidden_dim": 16, "heads": 2, "layers": 1, "downsample": 2}
EPS = 0.1  # label smoothing (the published value, the config default)


def _build(method: str, **kw):
    torch.manual_seed(0)
    return registry.build(method, {**SMALL, **kw}, _info())


def _ce(logits: torch.Tensor, ids: torch.Tensor, wmask: torch.Tensor) -> torch.Tensor:
    """Label-smoothed CE per sequence, written out: (1 - eps) (-log p_y) + eps mean_v (-log p_v)."""
    logp = logits.log_softmax(-1)
    per = -(1 - EPS) * logp.gather(-1, ids[..., None])[..., 0] - EPS * logp.mean(-1)
    m = wmask.float()
    return (per * m).sum(1) / m.sum(1)


def test_config_defaults_follow_the_code_and_bad_values_are_named():
    cfg = registry.make_config("ccr", {})
    assert (cfg.score, cfg.rank, cfg.side_head, cfg.rec_norm) == ("code", "main", "separate", "quarter")
    for key, bad, allowed in [("score", "both", "code, paper"), ("rank", "phi", "main, rectified"),
                              ("side_head", "four", "separate, shared, copy"),
                              ("rec_norm", "third", "quarter, halves")]:
        with pytest.raises(ValueError, match=f"^{key}='{bad}' is unknown; allowed: {allowed}$"):
            registry.make_config("ccr", {key: bad})


@pytest.mark.parametrize("score, side_head", list(itertools.product(["paper", "code"], ["separate", "shared", "copy"])))
def test_rank_main_ranks_exactly_as_cpl(score, side_head):
    """With CPL's parameters copied into it, ``ccr rank=main`` predicts what ``cpl`` predicts,
    whatever it trained with; ``rank=rectified`` ranks by something else."""
    cpl = _build("cpl")
    ccr = _build("ccr", rank="main", score=score, side_head=side_head)
    with torch.no_grad():
        ccr.mu.fill_(2.0)
        for p in [*ccr.psi_heads.parameters(), *ccr.psi_extra.parameters()]:
            p.normal_()
    missing, unexpected = cpl.load_state_dict(ccr.state_dict(), strict=False)
    assert not missing and all(k.startswith(("psi_", "mu")) for k in unexpected)
    cpl.eval(), ccr.eval()
    b = _batch(B=5, W=6, seed=3)
    got, want = ccr.predict(b), cpl.predict(b)  # {"proposals", "top1"} (topn_order=rank)
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    logits, words_in = torch.randn(4, 6, V), torch.randn(4, 6, 16)
    ids, wmask = torch.randint(1, V, (4, 6)), torch.ones(4, 6, dtype=torch.bool)
    assert torch.equal(ccr.rank_scores(logits, words_in, ids, wmask), cpl.rank_scores(logits, words_in, ids, wmask))
    ccr.cfg.rank = "rectified"
    psi = ccr.psi(words_in, 0)
    want = _ce((logits - 2.0) * torch.sigmoid(psi), ids, wmask)  # q - q_c = (phi - mu) sigmoid(psi)
    got = ccr.rank_scores(logits, words_in, ids, wmask)
    assert torch.allclose(got, want, atol=1e-5) and not torch.allclose(got, cpl.rank_scores(logits, words_in, ids, wmask))


def test_side_heads():
    words_in = torch.randn(2, 3, 16)
    shared = _build("ccr", side_head="shared")
    assert len(shared.psi_heads) == 0 and torch.equal(shared.psi(words_in, 2), shared.fc_comp(words_in))
    copy = _build("ccr", side_head="copy")
    assert len(copy.psi_heads) == 1 and len(copy.psi_extra) == 0
    assert torch.equal(copy.psi(words_in, 3), copy.fc_comp(words_in))  # initialised from pi
    sep = _build("ccr", side_head="separate")
    assert len(sep.psi_heads) == 4 and [tuple(x.weight.shape) for x in sep.psi_extra] == [(V, V)] * 4
    assert all(torch.equal(sep.psi(words_in, k), sep.fc_comp(words_in)) for k in range(4))
    # the separate heads' side CE goes through the kind's V x V layer, over the valid words
    ids = torch.randint(1, V, (2, 3))
    wmask = torch.tensor([[True, True, False], [True, True, True]])
    psi = sep.psi(words_in, 1)
    assert torch.allclose(sep.side_nll(psi, 1, ids, wmask), _ce(sep.psi_extra[1](psi), ids, wmask), atol=1e-5)
    assert torch.allclose(copy.side_nll(psi, 1, ids, wmask), _ce(psi, ids, wmask), atol=1e-5)


def _hand_loss(m, b, seed: int) -> torch.Tensor:
    """The ccr loss assembled by hand from the model's own forward pieces (same random mask)."""
    cfg = m.cfg
    torch.manual_seed(seed)
    out = m.score_all(b)
    ids, wmask, words_in = out["ids"], out["wmask"], out["words_in"]
    B, K = out["center"].shape
    ar = torch.arange(B)
    nll_pos = _ce(out["logits_pos"], ids.repeat_interleave(K, 0), wmask.repeat_interleave(K, 0)).view(B, K)
    best = nll_pos.argmin(1)
    assert torch.equal(best, out["best"])
    phi = [out["logits_pos"].view(B, K, -1, V)[ar, best], *out["logits_rest"].view(3, B, -1, V)]
    ce_phi = [_ce(f, ids, wmask) for f in phi]
    heads = range(4) if cfg.side_head == "separate" else [0] * 4
    psis = [m.psi(words_in, k) for k in heads]
    mu = m.mu.detach()
    s = []
    for k, (f, p) in enumerate(zip(phi, psis)):
        q = f * torch.sigmoid(p)
        if cfg.score == "paper":
            s.append(_ce(q - mu * torch.sigmoid(p), ids, wmask) + _ce(q, ids, wmask))
        else:
            side = m.psi_extra[k](p) if cfg.side_head == "separate" else p
            pq = F.softmax(q.detach(), -1)
            kl = -(pq * F.log_softmax(mu * torch.sigmoid(p.detach()), -1)).sum(-1)  # [B, W]
            kl = (kl * wmask).sum(1).mean() / V
            s.append(_ce(q, ids, wmask) + _ce(side, ids, wmask) + kl)

    def contrast(x):
        rec = (x[0] + x[3]).mean() / 2
        ivc = (hinge(x[0], x[3], cfg.alpha_p) + hinge(x[0], x[1], cfg.alpha_n) + hinge(x[0], x[2], cfg.alpha_n)).mean()
        return rec, ivc

    (rec, ivc), (s_rec, s_ivc) = contrast(ce_phi), contrast(s)
    rec_all = (rec + s_rec) / 2 if cfg.rec_norm == "quarter" else rec + s_rec
    gn = m.cpl_terms(out)["div"]
    loss = rec_all + ivc + s_ivc + 5.0 * gn
    if cfg.score == "paper":
        l_psi = torch.stack([m.side_nll(psis[k], k, ids, wmask).mean()
                             for k in (range(4) if cfg.side_head == "separate" else [0])]).mean()
        p_log = F.log_softmax(aggregate(phi[0], psis[0]).detach(), -1)
        q_log = F.log_softmax(mu * torch.sigmoid(psis[0]), -1)
        kl = ((p_log.exp() * (p_log - q_log)).sum(-1) * wmask).sum(1) / wmask.sum(1)
        loss = loss + l_psi + kl.mean()
    return loss


@pytest.mark.parametrize("score, side_head, rec_norm",
                         [("code", "separate", "quarter"), ("paper", "separate", "quarter"),
                          ("code", "shared", "halves"), ("paper", "copy", "halves"), ("paper", "shared", "quarter")])
def test_each_score_option_on_a_hand_made_batch(score, side_head, rec_norm):
    m = _build("ccr", score=score, side_head=side_head, rec_norm=rec_norm)
    with torch.no_grad():
        m.mu.fill_(0.4)
    m.eval()  # no dropout; the training mask is drawn from the seeded generator
    b = _batch(B=4, W=5, seed=1)
    torch.manual_seed(7)
    loss, logs = m(b)
    want = _hand_loss(m, b, 7)
    assert loss.item() == pytest.approx(want.item(), rel=1e-5)
    assert ("loss_psi" in logs) == (score == "paper")


def test_score_code_never_trains_the_rectified_logits_and_paper_does():
    """Under score=code the loss is unchanged by mu's value (mu enters only the detached-target KL,
    whose value moves with mu but whose gradient reaches mu alone); under score=paper the
    rectified CE depends on mu through q_c."""
    b = _batch(B=4, W=5, seed=2)
    for score, moves in (("code", False), ("paper", True)):
        m = _build("ccr", score=score, kl_weight=0.0)
        m.eval()
        losses = []
        for mu in (0.0, 3.0):
            with torch.no_grad():
                m.mu.fill_(mu)
            torch.manual_seed(0)
            losses.append(m(b)[0].item())
        assert (abs(losses[0] - losses[1]) > 1e-4) == moves, score


def test_switches_parse_on_the_sweep_command_line():
    from orchestration.cli import sweep_args as config

    cfg = config.parse(["method=ccr", "model.rank=main", "model.score=paper", "model.side_head=shared",
                        "model.rec_norm=halves", "optim.schedule=warmup_rsqrt", "optim.warmup_steps=400"])
    assert cfg.model == {"rank": "main", "score": "paper", "side_head": "shared", "rec_norm": "halves"}
    with pytest.raises(config.ConfigError, match="model.rank='best' is unknown; allowed: main, rectified"):
        config.parse(["method=ccr", "model.rank=best"])
    text = config.help_text("ccr")
    for line in ("model.score            code", "model.rank             main",
                 "model.side_head        separate", "model.rec_norm         quarter"):
        assert line in text


@pytest.mark.parametrize("method", ["cpl", "ccr"])
def test_variants_are_valid_configurations(method):
    """Every named variant of the search space is a valid (model config, optimiser) pair on top
    of the sweep's fixed values; ccr's hold the 2 x 2 of score x rank."""
    import search_spaces
    from grounding.engine import OPTIM_KEYS, OptimConfig

    mod = search_spaces.load(method)
    fields = registry.config_fields(method)
    for name, over in mod.VARIANTS.items():
        merged = {**mod.FIXED, **{k: v for k, v in mod.PAPER.items() if k in OPTIM_KEYS}, **over}
        assert set(merged) <= set(fields) | set(OPTIM_KEYS), name
        registry.make_config(method, {k: v for k, v in merged.items() if k in fields})
        OptimConfig(**{k: v for k, v in merged.items() if k in OPTIM_KEYS})
    if method == "ccr":
        grid = {(v.get("score"), v.get("rank")) for v in mod.VARIANTS.values() if set(v) == {"score", "rank"}}
        assert grid == set(itertools.product(["paper", "code"], ["rectified", "main"]))
