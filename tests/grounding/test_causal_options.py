"""The authors' code options of ``causal`` against hand-made examples, the staged components and
their ensemble, the diagnostics, and ``protocol=joint`` + ``LEGACY`` against a frozen copy of the
model as it was before the options existed (``_legacy_causal.py``)."""

from __future__ import annotations

import dataclasses
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from grounding.losses import log_loss, mil_ranking_loss, symmetric_mil_loss
from grounding.models import registry
from grounding.models.base import DataInfo
from grounding.models.causal import (COMPONENT_FIELDS, COMPONENT_INIT, COMPONENTS, LEGACY, Causal, CausalConfig,
                                     component_config, staged_components)
from grounding.models.memory import MemoryBank
from grounding.models.recipe import sigmoid_ensemble
from grounding.models.stvg import STVG, STVGConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _legacy_causal import LegacyCausal, LegacyCausalConfig  # noqa: E402

T, N, D, K, WORD = 3, 5, 6, 4, 5


def info_for(T=T, N=N, D=D, seed=0, features=True) -> DataInfo:
    rng = np.random.default_rng(seed)
    feats = rng.standard_normal((9, T, N, D)).astype(np.float32) if features else None
    return DataInfo(task="wsvog", dims={"T": T, "N": N, "D": D},
                    class_vectors=rng.standard_normal((K, WORD)).astype(np.float32),
                    class_priors=np.asarray([1.0, 2.0, 1.0, 3.0]), train_features=feats, seed=seed)


def batch_for(B=4, T=T, N=N, D=D, seed=1, queries=None):
    g = torch.Generator().manual_seed(seed)
    q = torch.tensor([[0, 2], [1, -1], [3, 1], [2, 0]])[:B] if queries is None else torch.tensor(queries)
    return {"features": torch.randn(B, T, N, D, generator=g), "queries": q}


def model_for(info=None, seed=0, **kw) -> Causal:
    torch.manual_seed(seed)
    params = dict(embed_dim=4, heads=2, dropout=0.0, J=3, W=3, B_r=2, B_f=1)
    params.update(kw)
    return Causal(CausalConfig(**params), info or info_for())


def _one_pair(parts):
    return {"pb": torch.tensor([0]), "pk": torch.tensor([0]), "Q1": parts["Q"][:, :1], "Qs1": parts["Qs"],
            "m1": torch.ones(1, 1, dtype=torch.bool)}


class _Recorder(torch.nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner, self.calls = inner, []

    def forward(self, x):
        self.calls.append(x.detach().clone())
        return self.inner(x)


# ----------------------------------------------------------- protocol=joint
@pytest.mark.parametrize("terms", [dict(), dict(acl_temporal=False), dict(acl_spatial=False, bda=False)])
def test_joint_with_legacy_options_is_exactly_todays_model(terms):
    """Same seed, same batch, dropout on: loss, logs, banks, parameters after 3 Adam steps, and
    predictions are bit-identical to the frozen copy of the model before the options existed."""
    info = info_for()
    params = dict(embed_dim=8, heads=2, dropout=0.2, J=4, W=5, B_r=2, B_f=1, **terms)
    torch.manual_seed(0)
    old = LegacyCausal(LegacyCausalConfig(**params), info)
    torch.manual_seed(0)
    new = Causal(CausalConfig(**params, protocol="joint", **LEGACY), info)
    new_state = new.state_dict()
    assert all(torch.equal(v, new_state[k]) for k, v in old.state_dict().items())  # same initialisation
    opt_old = torch.optim.Adam(old.parameters(), lr=1e-2)
    opt_new = torch.optim.Adam(new.parameters(), lr=1e-2)
    for step in range(3):
        batch = batch_for(seed=10 + step)
        torch.manual_seed(100 + step)
        loss_old, logs_old = old(batch)
        torch.manual_seed(100 + step)
        loss_new, logs_new = new(batch)
        assert torch.equal(loss_old, loss_new), (step, float(loss_old), float(loss_new))
        assert {k: logs_new[k] for k in logs_old} == logs_old
        for opt, loss in ((opt_old, loss_old), (opt_new, loss_new)):
            opt.zero_grad()
            loss.backward()
            opt.step()
    new_state = new.state_dict()
    for k, v in old.state_dict().items():
        assert torch.equal(v, new_state[k]), k
    old.eval(), new.eval()
    assert torch.equal(old.predict(batch_for()), new.predict(batch_for()))


# ------------------------------------------------------------ intervention
def _hand_spatial(intervention):
    """One video, one frame of N=4 regions, a bank of the 3 unit axes. By M the content set is
    regions 0, 1 (both nearest e0); the style draw is fixed to regions 3, 2 (nearest e2, e1)."""
    info = info_for(T=2, N=4, D=3)
    model = model_for(info, J=3, B_r=2, acl_temporal=False, bda=False, intervention=intervention,
                      bank_update="project", alpha=1.0)
    with torch.no_grad():
        model.region_bank.memory.copy_(torch.eye(3))
    R = F.normalize(torch.tensor([[[1.0, 0.1, 0.0], [0.9, 0.0, 0.2], [0.0, 1.0, 0.1], [0.0, 0.1, 1.0]]] * 2), dim=-1)
    R = R[None]  # [B=1, T=2, N=4, D=3]
    Q = F.normalize(torch.randn(1, 1, 4), dim=-1)
    parts = {"R": R, "M": torch.tensor([[[4.0, 3.0, 2.0, 1.0]] * 2]), "Q": Q, "Qs": Q[:, 0],
             "mask": torch.ones(1, 1, dtype=torch.bool)}
    model._content_style = lambda scores, k, replace: (torch.tensor([[[0, 1]] * 2]), torch.tensor([[[3, 2]] * 2]))
    rec = _Recorder(model.visual)
    model.visual = rec
    model._acl_spatial(parts, _one_pair(parts), {})
    content_video, style_video = rec.calls
    e = torch.eye(3)
    return R, content_video[0, 0], style_video[0, 0], e


def test_paper_intervention_replaces_each_item_by_its_own_nearest_entry():
    R, content, style, e = _hand_spatial("paper")
    for slot, entry in ((0, 0), (1, 0)):  # content regions 0, 1 -> their own nearest, e0
        assert torch.equal(content[slot], e[entry])
    assert torch.equal(content[2:], R[0, 0, 2:])  # style regions untouched in the content video
    assert torch.equal(style[3], e[2]) and torch.equal(style[2], e[1])  # style: own nearest
    assert torch.equal(style[:2], R[0, 0, :2])


def test_code_intervention_gives_content_slots_the_entries_nearest_to_the_style_items():
    R, content, style, e = _hand_spatial("code")
    # the i-th content slot gets the entry nearest to the i-th drawn style item (3 -> e2, 2 -> e1)
    assert torch.equal(content[0], e[2]) and torch.equal(content[1], e[1])
    assert torch.equal(content[2:], R[0, 0, 2:])
    assert torch.equal(style[3], e[2]) and torch.equal(style[2], e[1])  # style slots: own nearest
    assert torch.equal(style[:2], R[0, 0, :2])
    # e0, the entry nearest to the content (object) regions, is never inserted
    assert not any(torch.equal(x, e[0]) for x in (*content, *style))


@pytest.mark.parametrize("intervention", ["code", "paper"])
def test_temporal_intervention_semantics(intervention):
    """3 frames; frame entries whose max-pool keys are the 3 axes; frame 0 is nearest entry 0, 1
    nearest 1, 2 nearest 2. Content = frame 0 (top by G), style drawn = frame 2."""
    info = info_for(T=3, N=2, D=3)
    model = model_for(info, W=3, B_f=1, acl_spatial=False, bda=False, intervention=intervention,
                      frame_norm="region", alpha=1.0)
    mem = torch.stack([torch.stack([torch.eye(3)[j], -torch.eye(3)[j]]) for j in range(3)])  # [3, N=2, D=3]
    with torch.no_grad():
        model.frame_bank.memory.copy_(mem)
    frames = [torch.stack([torch.eye(3)[t] + 0.1, -torch.eye(3)[t]]) for t in range(3)]
    R = F.normalize(torch.stack(frames), dim=-1)[None]
    V = model.visual(R)
    Q = F.normalize(torch.randn(1, 1, 4), dim=-1)
    parts = {"R": R, "V": V, "Q": Q, "Qs": Q[:, 0], "G": torch.tensor([[[0.7, 0.2, 0.1]]]),
             "mask": torch.ones(1, 1, dtype=torch.bool)}
    model._content_style = lambda scores, k, replace: (torch.tensor([[0]]), torch.tensor([[2]]))
    rec = _Recorder(model.visual)
    model.visual = rec
    model._acl_temporal(parts, _one_pair(parts), {})
    into_content, into_style = (c[0, 0] for c in rec.calls)  # the frames embedded into each slot
    assert torch.equal(into_style, mem[2])  # the style frame gets its own nearest frame
    assert torch.equal(into_content, mem[2] if intervention == "code" else mem[0])


def test_style_draw_with_replacement():
    scores = torch.arange(6.0).repeat(2, 3, 1)  # top-2 = items 5, 4
    seen_dup = False
    for seed in range(40):
        torch.manual_seed(seed)
        content, style = Causal._content_style(scores, 2, replace=True)
        assert content.shape == style.shape == (2, 3, 2)
        assert torch.all(content.sort(-1).values == torch.tensor([4, 5]))
        assert torch.all(style < 4)
        seen_dup |= bool((style[..., 0] == style[..., 1]).any())
    assert seen_dup  # drawn with replacement
    # B_r > N / 2: still B_r style draws from the N - B_r others
    content, style = Causal._content_style(torch.arange(5.0)[None], 4, replace=True)
    assert content.shape == style.shape == (1, 4) and torch.all(style == 0)


# ------------------------------------------------------------------ queries
def test_all_queries_averages_each_videos_query_scores_before_the_log_loss():
    info = info_for(N=4)
    model = model_for(info, B_r=2, acl_temporal=False, bda=False, intervention="paper", style_draw="distinct",
                      acl_queries="all")
    batch = batch_for(B=3, N=4, queries=[[0, 2, -1], [1, -1, -1], [3, 1, 2]])
    _, parts = model.mil(batch)
    mem0 = model.region_bank.memory.clone()
    pairs = model._pairs(parts)
    assert list(zip(pairs["pb"].tolist(), pairs["pk"].tolist())) == [(0, 0), (0, 1), (1, 0), (2, 0), (2, 1), (2, 2)]
    logs = {}
    loss = model._acl_spatial(parts, pairs, logs)
    # by hand: N - B_r = B_r, so every style item is intervened and the sets do not depend on the draw
    diffs = []
    for b, ks in ((0, [0, 1]), (1, [0]), (2, [0, 1, 2])):
        pc, ps = [], []
        for k in ks:
            Rb, Mk = parts["R"][b], parts["M"][b, k]
            top = Mk.argsort(-1, descending=True)[..., :2]
            is_top = torch.zeros_like(Mk, dtype=torch.bool).scatter(-1, top, True)
            near = model.region_bank.keys_of(Rb) @ model.region_bank.keys_of(mem0).T
            swapped = mem0[near.argmax(-1)]
            Rc = torch.where(is_top[..., None], swapped, Rb)[None]
            Rs = torch.where(is_top[..., None], Rb, swapped)[None]
            Q1, Qs1 = parts["Q"][b:b + 1, k:k + 1], parts["Qs"][b:b + 1]
            m1 = torch.ones(1, 1, dtype=torch.bool)
            pc.append(model.score(Q1, m1, Qs1, model.visual(Rc))[0])
            ps.append(model.score(Q1, m1, Qs1, model.visual(Rs))[0])
        diffs.append(torch.cat(pc).mean() - torch.cat(ps).mean())
    expected = log_loss(torch.stack(diffs), model.cfg.acl_scale).mean()
    torch.testing.assert_close(loss, expected)
    d = torch.stack(diffs)
    assert logs["acl_spatial_cge_step"] == float(d.mean() >= 0)
    assert logs["acl_spatial_cge_video"] == pytest.approx(float((d >= 0).float().mean()))


# ------------------------------------------------------------- bank update
def test_two_step_bank_update_hand_values():
    # alpha = 0.5; m0 = [1, 0], m1 = [0, 1], m2 = [0.6, 0.8]
    # content: [0, 2] and [2, 2] -> m0: mean [1, 2] -> normalised [1, 2]/sqrt5;
    #   m0 <- normalise(0.5 [1, 0] + 0.5 [1, 2]/sqrt5)
    # style: [3, 0] -> m0 (second step), [0, 5] -> m1; m2 untouched
    init = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    bank = MemoryBank(init, 0.5, pool_key=False)
    content, jc = torch.tensor([[0.0, 2.0], [2.0, 2.0]]), torch.tensor([0, 0])
    style, js = torch.tensor([[3.0, 0.0], [0.0, 5.0]]), torch.tensor([0, 1])
    bank.update_two_step([(content, jc), (style, js)])
    m0 = F.normalize(0.5 * torch.tensor([1.0, 0.0]) + 0.5 * torch.tensor([1.0, 2.0]) / math.sqrt(5), dim=0)
    m0 = F.normalize(0.5 * m0 + 0.5 * torch.tensor([1.0, 0.0]), dim=0)
    m1 = F.normalize(0.5 * torch.tensor([0.0, 1.0]) + 0.5 * torch.tensor([0.0, 1.0]), dim=0)
    torch.testing.assert_close(bank.memory, torch.stack([m0, m1, torch.tensor([0.6, 0.8])]))
    # the one-step rule on the same vectors differs: raw mean of all four hits of m0 and m1 together
    one = MemoryBank(init, 0.5, pool_key=False)
    one.update(torch.cat([content, style]), torch.cat([jc, js]))
    raw0 = F.normalize(0.5 * torch.tensor([1.0, 0.0]) + 0.5 * torch.tensor([5.0, 4.0]) / 3, dim=0)
    torch.testing.assert_close(one.memory[0], raw0)
    assert not torch.allclose(one.memory[0], bank.memory[0])


def test_frame_bank_flat_normalisation():
    # entry [[3, 0], [0, 4]]: flat normalisation divides by 5 (norm of the flattened frame); region by 3 and 4
    init = F.normalize(torch.tensor([[[1.0, 0.0], [0.0, 1.0]]]).view(1, -1), dim=-1).view(1, 2, 2)
    flat = MemoryBank(init, 0.5, pool_key=True, norm="flat")
    flat.update_two_step([(torch.tensor([[[3.0, 0.0], [0.0, 4.0]]]), torch.tensor([0]))])
    mean = torch.tensor([3.0, 0.0, 0.0, 4.0]) / 5
    expected = F.normalize(0.5 * init.view(-1) + 0.5 * mean, dim=0).view(2, 2)
    torch.testing.assert_close(flat.memory[0], expected)
    assert flat.memory[0].norm() == pytest.approx(1.0)
    region = MemoryBank(torch.tensor([[[1.0, 0.0], [0.0, 1.0]]]), 0.5, pool_key=True, norm="region")
    region.update_two_step([(torch.tensor([[[3.0, 0.0], [0.0, 4.0]]]), torch.tensor([0]))])
    torch.testing.assert_close(region.memory[0], torch.eye(2))
    model = model_for(frame_norm="flat", acl_spatial=False, bda=False)  # flat frames from the start
    norms = model.frame_bank.memory.flatten(1).norm(dim=-1)
    torch.testing.assert_close(norms, torch.ones_like(norms))


def test_code_bank_update_uses_the_items_own_nearest_entries():
    """Under intervention=code the content slots get the style items' entries, but the bank moves
    the entries nearest to the content items (as the authors' code does)."""
    R, *_ = _hand_spatial("code")
    info = info_for(T=2, N=4, D=3)
    model = model_for(info, J=3, B_r=2, acl_temporal=False, bda=False, intervention="code", alpha=0.5)
    with torch.no_grad():
        model.region_bank.memory.copy_(torch.eye(3))
    Q = F.normalize(torch.randn(1, 1, 4), dim=-1)
    parts = {"R": R, "M": torch.tensor([[[4.0, 3.0, 2.0, 1.0]] * 2]), "Q": Q, "Qs": Q[:, 0],
             "mask": torch.ones(1, 1, dtype=torch.bool)}
    model._content_style = lambda scores, k, replace: (torch.tensor([[[0, 1]] * 2]), torch.tensor([[[3, 2]] * 2]))
    model._acl_spatial(parts, _one_pair(parts), {})
    e = torch.eye(3)
    m0 = F.normalize(0.5 * e[0] + 0.5 * F.normalize(R[0, 0, :2].mean(0), dim=0), dim=0)  # content regions 0, 1
    torch.testing.assert_close(model.region_bank.memory[0], m0)
    torch.testing.assert_close(model.region_bank.memory[1], F.normalize(0.5 * e[1] + 0.5 * R[0, 0, 2], dim=0))
    torch.testing.assert_close(model.region_bank.memory[2], F.normalize(0.5 * e[2] + 0.5 * R[0, 0, 3], dim=0))


# -------------------------------------------------------------- negatives
def test_disjoint_negatives_by_hand():
    model = model_for(negatives="disjoint")
    q = torch.tensor([[0, 1], [1, -1], [2, -1], [0, 2]])
    # 0 {0,1}: 1 shares 1 -> 2 {2}; 1 {1}: 2; 2 {2}: 3 shares 2 -> 0; 3 {0,2}: 0 shares -> 1 {1}
    assert model.negative_index(q).tolist() == [2, 2, 0, 1]
    assert model.negative_index(torch.tensor([[0], [0], [0]])).tolist() == [1, 2, 0]  # none disjoint: next
    nxt = model_for(negatives="next")
    assert nxt.negative_index(q).tolist() == [1, 2, 3, 0]
    _, logs = model(batch_for(queries=[[0, 1], [1, -1], [2, -1], [0, 2]]))
    assert logs["neg_shared"] == 0.0
    _, logs = nxt(batch_for(queries=[[0, 1], [1, -1], [2, -1], [0, 2]]))
    assert logs["neg_shared"] == 0.75  # 0-1 share 1, 2-3 share 2, 3-0 share 0


def test_symmetric_mil_form():
    p, own = torch.tensor([0.5, 0.2]), torch.tensor([0.4, 0.1])
    nv, nq = torch.tensor([0.1, 0.3]), torch.tensor([0.0, 0.6])
    eta = 0.2
    l = lambda x: math.log1p(math.exp(x / eta))  # noqa: E731
    expected = np.mean([(l(nv[i] - p[i]) + l(nq[i] - p[i]) + l(nv[i] - own[i]) + l(nq[i] - own[i])) / 2
                        for i in range(2)])
    assert float(symmetric_mil_loss(p, own, nv, nq, eta)) == pytest.approx(expected, rel=1e-6)
    # in the model: the negative's own pair is the negative row's positive score
    model = model_for(mil_form="code", negatives="disjoint", acl_spatial=False, acl_temporal=False, bda=False)
    batch = batch_for()
    loss, parts = model.mil(batch)
    neg = parts["neg"]
    torch.testing.assert_close(loss, symmetric_mil_loss(parts["p"], parts["p"][neg], parts["p_neg_video"],
                                                        parts["p_neg_query"], 0.2))
    proj = model_for(mil_form="project", negatives="disjoint", acl_spatial=False, acl_temporal=False, bda=False)
    loss, parts = proj.mil(batch)
    torch.testing.assert_close(loss, mil_ranking_loss(parts["p"], parts["p_neg_video"], parts["p_neg_query"], 0.2))


# ----------------------------------------------------------------------- BDA
def test_code_bda_fuses_the_prior_weighted_object_shift_before_dropout_and_l2():
    model = model_for(acl_spatial=False, acl_temporal=False, bda=True, bda_form="code", fusion_coef=0.9)
    enc = model.visual
    assert not hasattr(model, "bda_visual")  # no extra visual map
    R = F.normalize(torch.randn(2, T, N, D), dim=-1)
    P = torch.tensor([1.0, 2.0, 1.0, 3.0]) / 7
    shift = sum(P[k] * (enc.object.weight @ model.class_vectors[k] + enc.object.bias) for k in range(K))
    x = R.reshape(-1, N, D)
    q, k, v = enc.qkv(x).chunk(3, dim=-1)
    split = lambda t: t.view(t.shape[0], N, 2, 2).transpose(1, 2)  # noqa: E731
    a = enc.out(F.scaled_dot_product_attention(split(q), split(k), split(v)).transpose(1, 2).reshape(-1, N, 4))
    h = torch.tanh(enc.proj(x)) + torch.tanh(a)
    torch.testing.assert_close(enc(R), F.normalize(0.9 * h + 0.1 * shift, dim=-1).view(2, T, N, 4))
    # MIL reaches the fusion's object map (nothing is detached) and there is no separate BDA loss
    loss, logs = model(batch_for())
    assert "loss_bda" not in logs
    assert enc.object.weight in {p for p in model.parameters()}
    assert torch.autograd.grad(loss, enc.object.weight)[0].abs().sum() > 0
    # at test the fusion is applied (bda_at_test) or not
    model.eval()
    batch = batch_for()
    Q, _, _ = model.embed_queries(batch["queries"])
    h_fused = enc(model.regions(batch))
    torch.testing.assert_close(model.predict(batch), model.similarity(Q, h_fused))
    plain = model_for(acl_spatial=False, acl_temporal=False, bda=True, bda_form="code", bda_at_test=False)
    plain.load_state_dict(model.state_dict())
    plain.eval()
    backbone = model_for(acl_spatial=False, acl_temporal=False, bda=False)
    backbone.load_backbone(model.state_dict())
    backbone.eval()
    torch.testing.assert_close(plain.predict(batch), backbone.predict(batch))


# ---------------------------------------------------------------- components
def test_component_configs_and_staged_members():
    cfg = CausalConfig(embed_dim=4, heads=2)
    assert COMPONENTS == ("backbone", "spatial", "temporal", "deconf")
    switches = {n: (c.acl_spatial, c.acl_temporal, c.bda) for n in COMPONENTS
                for c in [component_config(cfg, n)]}
    assert switches == {"backbone": (False, False, False), "spatial": (True, False, False),
                        "temporal": (False, True, False), "deconf": (False, False, True)}
    other = cfg.replace(intervention="paper", J=7, W=9, w_spatial=0.1, protocol="joint", bda_form="project")
    assert component_config(other, "spatial").intervention == "paper" and component_config(other, "spatial").J == 7
    # a component's config ignores what it does not depend on: one backbone for every trial
    assert component_config(other, "backbone") == component_config(cfg, "backbone")
    assert component_config(other.replace(eta=0.1), "backbone") != component_config(cfg, "backbone")
    assert component_config(other, "temporal").W == 9 and component_config(other, "temporal").J == 100
    assert component_config(other, "deconf").bda_form == "project" and component_config(other, "deconf").W == 1000
    assert all(set(f) <= set(CausalConfig.__dataclass_fields__) for f in COMPONENT_FIELDS.values())
    assert COMPONENT_INIT == {"backbone": None, "spatial": "backbone", "temporal": "backbone", "deconf": None}
    assert staged_components(cfg) == ("spatial", "temporal", "deconf")
    assert staged_components(cfg.replace(bda=False)) == ("spatial", "temporal")  # "Baseline + ACL"
    assert staged_components(cfg.replace(acl_spatial=False, acl_temporal=False)) == ("deconf",)
    assert staged_components(cfg.replace(acl_spatial=False, acl_temporal=False, bda=False)) == ("backbone",)
    with pytest.raises(KeyError, match="allowed: backbone, spatial, temporal, deconf"):
        component_config(cfg, "both")


def test_backbone_component_is_stvg_and_initialises_the_acl_components():
    info = info_for()
    cfg = CausalConfig(embed_dim=4, heads=2, dropout=0.0, J=3, W=3, B_r=2, B_f=1)
    torch.manual_seed(0)
    backbone = Causal(component_config(cfg, "backbone"), info)
    stvg = STVG(STVGConfig(embed_dim=4, heads=2, dropout=0.0, negatives="disjoint", mil_form="code"), info)
    stvg.load_state_dict(backbone.state_dict())  # same keys: a stvg checkpoint is a backbone
    batch = batch_for()
    torch.testing.assert_close(backbone(batch)[0], stvg(batch)[0])
    for name in ("spatial", "temporal"):
        torch.manual_seed(1)
        comp = Causal(component_config(cfg, name), info)
        left = comp.load_backbone(stvg.state_dict())
        assert left == sorted(k for k in comp.state_dict() if "bank" in k)  # only its own bank is new
        comp.eval(), backbone.eval()
        torch.testing.assert_close(comp.proposal_scores(batch), backbone.proposal_scores(batch))
        backbone.train()


def test_staged_ensemble_by_hand_and_the_ensemble_predictor():
    """The staged recipe's ``combine`` is ``sum_c w_c sigmoid(S_c)`` with the config's weights."""
    cfg = CausalConfig(embed_dim=4, heads=2)
    s = {"spatial": torch.tensor([0.0, 1.0]), "temporal": torch.tensor([2.0, -1.0]), "deconf": torch.tensor([0.5, 0.0])}
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    expected = [0.5 * sig(0.0) + 0.5 * sig(2.0) + 1.0 * sig(0.5), 0.5 * sig(1.0) + 0.5 * sig(-1.0) + 1.0 * sig(0.0)]
    np.testing.assert_allclose(sigmoid_ensemble({"spatial": 0.5, "temporal": 0.5, "deconf": 1.0})(s).numpy(),
                               expected, rtol=1e-6)
    combine = Causal.recipe(dataclasses.asdict(cfg)).combine
    assert combine.weights == {"spatial": 0.5, "temporal": 0.5, "deconf": 1.0}
    np.testing.assert_allclose(combine(s).numpy(), expected, rtol=1e-6)
    cfg2 = cfg.replace(w_spatial=0.2, w_temporal=0.0, w_deconf=2.0)
    np.testing.assert_allclose(Causal.recipe(dataclasses.asdict(cfg2)).combine(s).numpy(),
                               [0.2 * sig(0.0) + 2.0 * sig(0.5), 0.2 * sig(1.0) + 2.0 * sig(0.0)], rtol=1e-6)
    # over real component models' scores
    info = info_for()
    comps = {n: Causal(component_config(cfg.replace(J=3, W=3, B_r=2, B_f=1), n), info).eval()
             for n in ("spatial", "temporal", "deconf")}
    batch = batch_for()
    got = combine({n: m.proposal_scores(batch) for n, m in comps.items()})
    want = sum(w * torch.sigmoid(comps[n].proposal_scores(batch)) for n, w in
               (("spatial", 0.5), ("temporal", 0.5), ("deconf", 1.0)))
    torch.testing.assert_close(got, want)
    assert got.shape == (4, 2, T, N)


# -------------------------------------------------------------- diagnostics
def test_bank_drift_and_cge_diagnostics():
    model = model_for(bda=False)
    assert model.epoch_end_logs() == {"bank_drift_region": pytest.approx(1.0), "bank_drift_frame": pytest.approx(1.0)}
    _, logs = model(batch_for())
    for term in ("spatial", "temporal"):
        assert logs[f"acl_{term}_cge_step"] in (0.0, 1.0) and 0.0 <= logs[f"acl_{term}_cge_video"] <= 1.0
    before = model.region_bank.snapshot.clone()
    drift = model.epoch_end_logs()
    cos = F.cosine_similarity(model.region_bank.memory, before, dim=-1).mean()
    assert drift["bank_drift_region"] == pytest.approx(float(cos)) and drift["bank_drift_region"] < 1.0
    assert model.epoch_end_logs() == drift  # a second caller at the same epoch end sees the same drift
    model(batch_for())
    again = model.epoch_end_logs()["bank_drift_region"]
    assert again < 1.0 and again != drift["bank_drift_region"]
    assert model_for(acl_spatial=False, acl_temporal=False).epoch_end_logs() == {}
    # the step flag and the per-video fraction, by hand
    logs = {}
    model._acl_loss("spatial", torch.tensor([0.5, 0.1]), torch.tensor([0.2, 0.3]), torch.arange(2), 2, logs)
    assert logs == {"acl_spatial_cge_step": 1.0, "acl_spatial_cge_video": 0.5}


# ------------------------------------------------------------------- config
def test_options_are_validated_and_have_the_codes_defaults():
    cfg = CausalConfig()
    assert (cfg.protocol, cfg.intervention, cfg.style_draw, cfg.acl_queries, cfg.bank_update, cfg.frame_norm,
            cfg.bda_form, cfg.negatives, cfg.mil_form) == ("staged", "code", "replace", "all", "code", "flat",
                                                           "code", "disjoint", "code")
    assert (cfg.w_spatial, cfg.w_temporal, cfg.w_deconf, cfg.fusion_coef) == (0.5, 0.5, 1.0, 0.9)
    assert STVGConfig().negatives == "next" and STVGConfig().mil_form == "project"  # stvg unchanged
    with pytest.raises(ValueError, match="intervention='eq10' is not an option; allowed: code, paper"):
        CausalConfig(intervention="eq10")
    with pytest.raises(ValueError, match="negatives"):
        registry.build("causal", {"negatives": "random"}, info_for())
    fields = {f.name for f in dataclasses.fields(CausalConfig)}
    assert set(LEGACY) <= fields


def test_default_options_train_on_a_batch():
    model = model_for(dropout=0.1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for step in range(2):
        loss, logs = model(batch_for(seed=step))
        assert torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert {"loss_mil", "loss_acl_spatial", "loss_acl_temporal"} <= set(logs) and "loss_bda" not in logs


class _Rows:
    """A handful of WSVOG rows with the ``len``/``batch`` interface the engine trains on."""

    def __init__(self, n=8):
        g = torch.Generator().manual_seed(5)
        self.features = torch.randn(n, T, N, D, generator=g)
        self.queries = torch.tensor([[0, 2], [1, -1], [3, 1], [2, 0]] * (n // 4))

    def __len__(self):
        return len(self.features)

    def batch(self, idx, device="cpu"):
        idx = torch.as_tensor(idx)
        return {"features": self.features[idx], "queries": self.queries[idx]}


def test_the_engine_logs_the_diagnostics_per_epoch():
    from grounding import engine

    model = model_for(bda=False)
    cfg = engine.OptimConfig(lr=1e-2, batch_size=4)
    opt = engine.make_optimizer(model, cfg)
    logs = [engine.train_one_epoch(model, opt, _Rows(), cfg, epoch=e, seed=0) for e in range(2)]
    for epoch in logs:
        assert 0.0 < epoch["bank_drift_region"] < 1.0 and 0.0 < epoch["bank_drift_frame"] < 1.0
        for term in ("spatial", "temporal"):
            assert epoch[f"acl_{term}_cge_step"] in (0.0, 0.5, 1.0)  # 2 steps per epoch
    assert model.epoch_end_logs() == {k: logs[-1][k] for k in ("bank_drift_region", "bank_drift_frame")}
