"""The causal-intervention equations (ACL content/style sets, memory banks, BDA) on tiny tensors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from grounding.losses import log_loss
from grounding.models.base import DataInfo
from grounding.models.causal import LEGACY, Causal, CausalConfig
from grounding.models.memory import MemoryBank
from grounding.models.stvg import STVG, STVGConfig

T, N, D, K, WORD = 3, 5, 6, 3, 5


def tiny_info(priors=(1.0, 2.0, 1.0), class_vectors=None, seed=0) -> DataInfo:
    rng = np.random.default_rng(seed)
    cv = rng.standard_normal((K, WORD)).astype(np.float32) if class_vectors is None else class_vectors
    return DataInfo(task="wsvog", dims={"T": T, "N": N, "D": D}, class_vectors=np.asarray(cv, np.float32),
                    class_priors=np.asarray(priors, np.float64), seed=seed)


def tiny_causal(info=None, seed=0, **kw) -> Causal:
    """Today's (LEGACY) options unless overridden: these tests pin the paper-literal equations."""
    torch.manual_seed(seed)
    params = dict(embed_dim=4, heads=2, dropout=0.0, J=3, W=3, B_r=2, B_f=1, protocol="joint", **LEGACY)
    params.update(kw)
    return Causal(CausalConfig(**params), info or tiny_info())


def tiny_batch(B=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    return {"features": torch.randn(B, T, N, D, generator=g),
            "queries": torch.tensor([[0, 2], [1, -1], [2, 1]])[:B]}


# ------------------------------------------------------------ content/style
@pytest.mark.parametrize("n,k", [(6, 3), (6, 4), (6, 5), (5, 1), (7, 2), (2, 1)])
def test_content_style_sizes_and_disjointness(n, k):
    m = min(k, n - k)
    for seed in range(20):
        torch.manual_seed(seed)
        scores = torch.randperm(4 * n).view(4, n).float()  # distinct scores per row
        content, style = Causal._content_style(scores, k)
        assert content.shape == (4, m) and style.shape == (4, m)
        for row in range(4):
            order = scores[row].argsort(descending=True).tolist()
            top_k = set(order[:k])
            # the intervened content items are the top m (of the top-k content set)
            assert set(content[row].tolist()) == set(order[:m])
            st = style[row].tolist()
            assert len(set(st)) == m and not (set(st) & top_k)  # style: m distinct non-content items
            if k >= n / 2:  # m = n - k: every style item is intervened
                assert set(st) == set(order[k:])


def test_content_style_works_on_leading_dims_and_draws_style_at_random():
    # scores [B, T, n]; n = 6, k = 2 -> m = 2 of the 4 style items, drawn uniformly
    scores = torch.arange(6.0).repeat(2, 3, 1)  # top-2 = items 5, 4 everywhere
    seen = set()
    for seed in range(30):
        torch.manual_seed(seed)
        content, style = Causal._content_style(scores, 2)
        assert content.shape == style.shape == (2, 3, 2)
        assert torch.all(content.sort(-1).values == torch.tensor([4, 5]))
        assert torch.all(style < 4)
        seen.update(map(tuple, style.sort(-1).values.view(-1, 2).tolist()))
    assert len(seen) == 6  # every pair of the 4 style items occurs (C(4, 2) = 6)


def test_pick_query_only_picks_valid_slots():
    torch.manual_seed(0)
    mask = torch.tensor([[False, True, False], [True, True, True], [False, False, False]])
    picks = torch.stack([Causal._pick_query(mask) for _ in range(200)])
    assert torch.all(picks[:, 0] == 1)
    assert set(picks[:, 1].tolist()) == {0, 1, 2}
    assert picks[:, 2].min() >= 0 and picks[:, 2].max() <= 2  # no valid slot: any index, no error


# ----------------------------------------------------------------- memory bank
def test_region_bank_nearest_is_cosine_not_dot_product():
    # entry 0 = [3, 0] (long), entry 1 = [0.6, 0.8]; x = [0.5, 0.9]:
    # dot: 1.5 vs 1.02 -> entry 0; cosine: 0.486 vs 0.991 -> entry 1.
    bank = MemoryBank(torch.tensor([[3.0, 0.0], [0.6, 0.8], [-1.0, 0.0]]), 0.9, pool_key=False)
    x = torch.tensor([[0.5, 0.9], [-5.0, 0.1], [2.0, 0.1]])
    assert bank.nearest(x).tolist() == [1, 2, 0]


def test_frame_bank_nearest_compares_max_pooled_frames():
    # entries [N=2, D=2]: entry 0 max-pools to [1, 0], entry 1 to [0, 1] (its mean is [0, 0]).
    mem = torch.tensor([[[1.0, 0.0], [1.0, 0.0]], [[0.0, 1.0], [0.0, -1.0]]])
    bank = MemoryBank(mem, 0.9, pool_key=True)
    # x max-pools to [1, 2]: cos 0.447 with entry 0, 0.894 with entry 1 -> entry 1.
    # (first proposal [1, 0.1] -> entry 0; mean [0.5, 1.05] vs entry 1's zero mean -> entry 0.)
    x = torch.tensor([[[1.0, 0.1], [0.0, 2.0]], [[0.3, -0.2], [0.9, 0.1]]])
    assert bank.nearest(x).tolist() == [1, 0]


def test_bank_momentum_update_hand_values():
    # alpha = 0.5; entries m0 = [1, 0], m1 = [0, 1], m2 = [0.6, 0.8].
    # m0 replaced [0, 1] and [1, 1] -> mean [0.5, 1]; 0.5*[1, 0] + 0.5*[0.5, 1] = [0.75, 0.5]
    #   -> renormalised [3, 2] / sqrt(13)
    # m1 replaced [1, 0] -> 0.5*[0, 1] + 0.5*[1, 0] = [0.5, 0.5] -> [1, 1] / sqrt(2)
    # m2 replaced nothing -> unchanged
    init = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    replaced = torch.tensor([[0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
    index = torch.tensor([0, 1, 0])
    bank = MemoryBank(init, 0.5, pool_key=False)
    bank.update(replaced, index)
    expected = [[3 / math.sqrt(13), 2 / math.sqrt(13)], [1 / math.sqrt(2), 1 / math.sqrt(2)], [0.6, 0.8]]
    np.testing.assert_allclose(bank.memory.numpy(), expected, rtol=1e-6)
    # without renormalisation the raw momentum values stay
    raw = MemoryBank(init, 0.5, pool_key=False, renormalise=False)
    raw.update(replaced, index)
    np.testing.assert_allclose(raw.memory.numpy(), [[0.75, 0.5], [0.5, 0.5], [0.6, 0.8]], rtol=1e-6)
    assert torch.equal(init, torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]]))  # init not aliased


def test_frame_bank_momentum_update_renormalises_each_proposal():
    # alpha = 0.25, entry 0 = [[1, 0], [0, 1]] replaced by [[0, 1], [0, 1]]:
    # 0.25*[[1, 0], [0, 1]] + 0.75*[[0, 1], [0, 1]] = [[0.25, 0.75], [0, 1]]
    # -> rows normalised: [[1, 3]/sqrt(10), [0, 1]]
    init = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[0.6, 0.8], [0.8, 0.6]]])
    bank = MemoryBank(init, 0.25, pool_key=True)
    bank.update(torch.tensor([[[0.0, 1.0], [0.0, 1.0]]]), torch.tensor([0]))
    np.testing.assert_allclose(bank.memory[0].numpy(), [[1 / math.sqrt(10), 3 / math.sqrt(10)], [0.0, 1.0]],
                               rtol=1e-6)
    assert torch.equal(bank.memory[1], init[1])


# --------------------------------------------------------------------------- ACL
class _Recorder(torch.nn.Module):
    """Wraps ``model.visual`` and keeps every input it was called on."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.calls = inner, []

    def forward(self, x):
        self.calls.append(x.detach().clone())
        return self.inner(x)


def _cos_nearest(keys: torch.Tensor, mem_keys: torch.Tensor) -> list[int]:
    out = []
    for k in keys:
        sims = [float(torch.dot(k, m) / (k.norm() * m.norm())) for m in mem_keys]
        out.append(int(np.argmax(sims)))
    return out


def _explicit_momentum(mem, vectors, assigned, alpha):
    new = mem.clone()
    for j in range(len(mem)):
        sel = [v for v, a in zip(vectors, assigned) if a == j]
        if sel:
            upd = alpha * mem[j] + (1 - alpha) * torch.stack(sel).mean(0)
            new[j] = F.normalize(upd, dim=-1)
    return new


def _acl_parts(model, batch, slot=0):
    _, parts = model.mil(batch)
    B = batch["features"].shape[0]
    Q1 = parts["Q"][:, slot:slot + 1]
    m1 = torch.ones(B, 1, dtype=torch.bool)
    parts["M_q"] = parts["M"][:, slot].detach()
    parts["G_q"] = parts["G"][:, slot]
    parts["pairs"] = {"pb": torch.arange(B), "pk": torch.full((B,), slot), "Q1": Q1, "m1": m1, "Qs1": parts["Qs"]}
    return parts, Q1, m1


def test_spatial_acl_replaces_content_and_style_regions_by_their_nearest_bank_entry():
    # N = 5, B_r = 2 -> m = 2 content regions (the top 2 by M) and 2 of the 3 others per frame
    model = tiny_causal(acl_temporal=False, bda=False, J=3)
    batch = tiny_batch()
    parts, Q1, m1 = _acl_parts(model, batch)
    R = parts["R"]
    mem0 = model.region_bank.memory.clone()
    rec = _Recorder(model.visual)
    model.visual = rec
    loss = model._acl_spatial(parts, parts["pairs"], {})
    model.visual = rec.inner
    assert len(rec.calls) == 2  # content-intervened and style-intervened videos
    replaced, assigned = [], []
    for which, Rint in zip(("content", "style"), rec.calls):
        changed = (Rint != R).any(-1)  # [B, T, N]
        for b in range(R.shape[0]):
            for t in range(T):
                ns = changed[b, t].nonzero().flatten().tolist()
                top2 = parts["M_q"][b, t].argsort(descending=True)[:2].tolist()
                assert len(ns) == 2
                if which == "content":
                    assert set(ns) == set(top2)
                else:
                    assert not set(ns) & set(top2)
                near = _cos_nearest(R[b, t, ns], mem0)
                for n, j in zip(ns, near):
                    torch.testing.assert_close(Rint[b, t, n], mem0[j])
                replaced += [R[b, t, n] for n in ns]
                assigned += near
    # L_ACL = mean l(p_content - p_style) with l at temperature acl_scale
    p_c = model.score(Q1, m1, parts["Qs"], model.visual(rec.calls[0]))[0]
    p_s = model.score(Q1, m1, parts["Qs"], model.visual(rec.calls[1]))[0]
    expected = torch.log1p(torch.exp((p_c - p_s) / model.cfg.acl_scale)).mean()
    torch.testing.assert_close(loss, expected)
    # every replaced region moved its entry by momentum (loop implementation, not index_add_)
    torch.testing.assert_close(model.region_bank.memory, _explicit_momentum(mem0, replaced, assigned, 0.9))


def test_temporal_acl_replaces_whole_frames_by_their_nearest_frame_entry():
    # T = 3, B_f = 1 -> m = 1: the top frame by G and one other frame per video
    model = tiny_causal(acl_spatial=False, bda=False, W=4)
    batch = tiny_batch()
    parts, Q1, m1 = _acl_parts(model, batch)
    R, V = parts["R"], parts["V"]
    mem0 = model.frame_bank.memory.clone()
    rec = _Recorder(model.visual)
    model.visual = rec
    scores = []
    orig_score = model.score
    model.score = lambda *a: scores.append(a[3]) or orig_score(*a)  # noqa: E731 - keep V_int
    loss = model._acl_temporal(parts, parts["pairs"], {})
    model.visual, model.score = rec.inner, orig_score
    top = parts["G_q"].argmax(-1)
    frames, assigned = [], []
    for call, Vint, which in zip(rec.calls, scores, ("content", "style")):
        # visual() re-embeds only the bank entries put in place of the chosen frames: [B, 1, N, D]
        assert call.shape == (R.shape[0], 1, N, D)
        changed = (Vint != V).any(-1).any(-1)  # [B, T]
        for b in range(R.shape[0]):
            ts = changed[b].nonzero().flatten().tolist()
            assert len(ts) == 1
            assert (ts[0] == top[b].item()) == (which == "content")
            j = _cos_nearest(R[b, ts[0]].max(0).values[None], mem0.max(1).values)[0]
            torch.testing.assert_close(call[b, 0], mem0[j])
            frames.append(R[b, ts[0]])
            assigned.append(j)
    expected = log_loss(orig_score(Q1, m1, parts["Qs"], scores[0])[0]
                        - orig_score(Q1, m1, parts["Qs"], scores[1])[0], model.cfg.acl_scale).mean()
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(model.frame_bank.memory, _explicit_momentum(mem0, frames, assigned, 0.9))


def test_banks_start_from_normalised_training_features():
    feats = np.random.default_rng(0).standard_normal((7, T, N, D)).astype(np.float16)
    info = tiny_info()
    info.train_features = feats
    model = tiny_causal(info=info, J=4, W=2)
    regions = F.normalize(torch.from_numpy(feats.astype(np.float32)), dim=-1).view(-1, D)
    for entry in model.region_bank.memory:  # every region entry is some training region
        assert torch.isclose(regions, entry).all(-1).any()
    frames = F.normalize(torch.from_numpy(feats.astype(np.float32)), dim=-1).view(-1, N, D)
    for entry in model.frame_bank.memory:
        assert torch.isclose(frames, entry).all(-1).all(-1).any()
    again = tiny_causal(info=info, J=4, W=2, seed=5)  # bank draws depend on info.seed only
    assert torch.equal(again.region_bank.memory, model.region_bank.memory)


# --------------------------------------------------------------------------- BDA
def _set_bda_by_hand(model, obj_bias=(0.0, 0.0, 0.0, 0.0)):
    with torch.no_grad():
        model.bda_visual.weight.copy_(torch.eye(4))
        model.bda_visual.bias.zero_()
        model.bda_object.weight.copy_(torch.eye(4, WORD))  # Eq(w) = first 4 coordinates of w
        model.bda_object.bias.copy_(torch.tensor(obj_bias))


def test_deconfounded_hand_values():
    # classes o_k = e_k (k = 0, 1, 2) in word space; counts [1, 2, 1] -> P = [0.25, 0.5, 0.25]
    # sum_k P(o_k) Eq(o_k) = [0.25, 0.5, 0.25, 0]
    info = tiny_info(priors=[1.0, 2.0, 1.0], class_vectors=np.eye(K, WORD))
    model = tiny_causal(info=info)
    _set_bda_by_hand(model)
    np.testing.assert_allclose(model.priors.numpy(), [0.25, 0.5, 0.25])
    assert model.priors.sum().item() == pytest.approx(1.0)
    V = torch.tensor([[0.0, 0.0, 0.0, 1.0], [2.0, 0.0, 0.0, 0.0]])
    # V0: [0.25, 0.5, 0.25, 1] / sqrt(1.375); V1: [2.25, 0.5, 0.25, 0] / sqrt(5.375)
    expected = [[0.25 / math.sqrt(1.375), 0.5 / math.sqrt(1.375), 0.25 / math.sqrt(1.375), 1 / math.sqrt(1.375)],
                [2.25 / math.sqrt(5.375), 0.5 / math.sqrt(5.375), 0.25 / math.sqrt(5.375), 0.0]]
    np.testing.assert_allclose(model.deconfounded(V).detach().numpy(), expected, rtol=1e-6)
    # Eq's bias is added once (the priors sum to 1): [0.25, 0.5, 0.25, 1.5] / sqrt(2.625)
    _set_bda_by_hand(model, obj_bias=(0.0, 0.0, 0.0, 0.5))
    s = math.sqrt(0.0625 + 0.25 + 0.0625 + 2.25)
    np.testing.assert_allclose(model.deconfounded(V[:1]).detach().numpy(),
                               [[0.25 / s, 0.5 / s, 0.25 / s, 1.5 / s]], rtol=1e-6)


def test_prior_weighting_matters():
    V = torch.tensor([[0.0, 0.0, 0.0, 1.0]])
    outs = []
    for priors, expected in (([4.0, 0.0, 0.0], [1, 0, 0, 1]), ([0.0, 0.0, 3.0], [0, 0, 1, 1]),
                             ([1.0, 1.0, 2.0], [0.25, 0.25, 0.5, 1])):
        model = tiny_causal(info=tiny_info(priors=priors, class_vectors=np.eye(K, WORD)))
        _set_bda_by_hand(model)
        out = model.deconfounded(V).detach()
        e = torch.tensor(expected, dtype=torch.float32)
        torch.testing.assert_close(out[0], e / e.norm())
        outs.append(out)
    assert not torch.allclose(outs[0], outs[1]) and not torch.allclose(outs[1], outs[2])


def test_deconfounded_equals_the_explicit_formula_with_the_module_layers():
    model = tiny_causal(info=tiny_info(priors=[3.0, 1.0, 6.0]))
    P = torch.tensor([0.3, 0.1, 0.6])
    V = torch.randn(2, T, N, 4)
    Wv, bv = model.bda_visual.weight, model.bda_visual.bias
    Wq, bq = model.bda_object.weight, model.bda_object.bias
    cv = model.class_vectors
    shift = sum(P[k] * (Wq @ cv[k] + bq) for k in range(K))
    expected = F.normalize(V @ Wv.T + bv + shift, dim=-1)
    torch.testing.assert_close(model.deconfounded(V), expected)


def test_bda_and_main_branch_gradients_are_separated():
    model = tiny_causal()
    batch = tiny_batch()
    bda = [p for n, p in model.named_parameters() if n.startswith("bda_")]
    main = [p for n, p in model.named_parameters() if not n.startswith("bda_")]
    assert len(bda) == 4 and len(main) > 4
    loss_mil, parts = model.mil(batch)
    loss_bda = model._bda_loss(parts)
    g_main = torch.autograd.grad(loss_bda, main, allow_unused=True, retain_graph=True)
    assert all(g is None for g in g_main)  # L_BDA never reaches the main branch
    g_bda = torch.autograd.grad(loss_bda, bda, allow_unused=True, retain_graph=True)
    assert all(g is not None and g.abs().sum() > 0 for g in g_bda)
    g = torch.autograd.grad(loss_mil, bda, allow_unused=True)
    assert all(x is None for x in g)  # L_MIL never reaches BDA
    # nor does anything else of the training loss but L_BDA (ACL included)
    model.cfg = model.cfg.replace(bda=False)
    total, logs = model(batch)
    assert {k for k in logs if k.startswith("loss")} == {"loss_mil", "loss_acl_spatial", "loss_acl_temporal"}
    assert all(x is None for x in torch.autograd.grad(total, bda, allow_unused=True))


def test_deconfounded_detaches_its_input():
    model = tiny_causal()
    V = torch.randn(1, T, N, 4, requires_grad=True)
    out = model.deconfounded(V)
    assert torch.autograd.grad(out.sum(), V, allow_unused=True)[0] is None


# ---------------------------------------------------------------------- ablation
@pytest.mark.parametrize("spatial,temporal,bda", [(a, b, c) for a in (True, False) for b in (True, False)
                                                  for c in (True, False)])
def test_ablation_switches_remove_modules_and_loss_terms(spatial, temporal, bda):
    model = tiny_causal(acl_spatial=spatial, acl_temporal=temporal, bda=bda)
    assert hasattr(model, "region_bank") == spatial
    assert hasattr(model, "frame_bank") == temporal
    assert hasattr(model, "bda_visual") == bda and hasattr(model, "bda_object") == bda
    assert hasattr(model, "priors") == bda
    loss, logs = model(tiny_batch())
    want = {"loss_mil"} | ({"loss_acl_spatial"} if spatial else set()) \
        | ({"loss_acl_temporal"} if temporal else set()) | ({"loss_bda"} if bda else set())
    losses = {k: v for k, v in logs.items() if k.startswith("loss")}
    assert set(losses) == want
    diagnostics = {f"acl_{t}_cge_{u}" for t, on in (("spatial", spatial), ("temporal", temporal)) if on
                   for u in ("step", "video")}
    assert set(logs) - set(losses) == diagnostics | {"neg_shared"}
    assert loss.item() == pytest.approx(sum(losses.values()), rel=1e-5)  # total = sum of its terms


def test_everything_off_is_the_stvg_baseline():
    causal = tiny_causal(acl_spatial=False, acl_temporal=False, bda=False)
    stvg = STVG(STVGConfig(embed_dim=4, heads=2, dropout=0.0, negatives=causal.cfg.negatives,
                           mil_form=causal.cfg.mil_form), causal.info)
    stvg.load_state_dict(causal.state_dict())  # same parameters, nothing extra
    batch = tiny_batch()
    torch.testing.assert_close(causal(batch)[0], stvg(batch)[0])
    torch.testing.assert_close(causal.predict(batch), stvg.predict(batch))


def test_predict_adds_the_bda_similarity():
    model = tiny_causal().eval()
    batch = tiny_batch()
    with torch.no_grad():
        V = model.visual(model.regions(batch))
        Q, _, _ = model.embed_queries(batch["queries"])
        expected = model.similarity(Q, V) + model.similarity(Q, model.deconfounded(V))
    torch.testing.assert_close(model.predict(batch), expected)
    assert model.predict(batch).shape == (3, 2, T, N)


def test_content_set_sizes_are_checked():
    with pytest.raises(ValueError, match="B_r"):
        tiny_causal(B_r=N)
    with pytest.raises(ValueError, match="B_f"):
        tiny_causal(B_f=T)
    tiny_causal(B_r=N, acl_spatial=False)  # no spatial ACL: B_r is unused
    tiny_causal(B_f=T, acl_temporal=False)


# ------------------------------------------------------------ gradient probe and diagnostics
def _norm(grads) -> float:
    return math.sqrt(sum(float((g ** 2).sum()) for g in grads if g is not None))


@pytest.mark.parametrize("bda_form", ["code", "project"])
def test_grad_probe_reports_every_term_and_group_and_zero_where_a_term_cannot_reach(bda_form):
    from grounding import engine

    model = tiny_causal(dropout=0.1, bda_form=bda_form, intervention="code", acl_queries="all").train()
    groups = model.grad_groups()
    params = [p for ps in groups.values() for p in ps]
    # the groups partition the trainable parameters
    assert sorted(map(id, params)) == sorted(id(p) for p in model.parameters() if p.requires_grad)
    assert set(groups) == {"visual", "query", "temporal", "bda"}
    banks = (model.region_bank.memory.clone(), model.frame_bank.memory.clone())
    probe = engine.grad_probe(model, tiny_batch(), seed=3)
    terms = ["mil", "acl_spatial", "acl_temporal"] + (["bda"] if bda_form == "project" else [])
    assert set(probe) == {f"grad/{t}/{g}" for t in terms for g in groups}
    assert all(math.isfinite(v) and v >= 0 for v in probe.values())
    for t in ("mil", "acl_spatial", "acl_temporal"):  # each reaches the encoders and the temporal module
        assert probe[f"grad/{t}/visual"] > 0 and probe[f"grad/{t}/query"] > 0 and probe[f"grad/{t}/temporal"] > 0
    if bda_form == "project":  # the deconfounded branch reads detached inputs: it trains only its own layers
        assert probe["grad/bda/bda"] > 0
        assert probe["grad/bda/visual"] == probe["grad/bda/query"] == probe["grad/bda/temporal"] == 0.0
        assert probe["grad/mil/bda"] == 0.0  # and MIL does not train them
    else:  # code: the fused object map is inside L_MIL's embedding
        assert probe["grad/mil/bda"] > 0
    # the probe leaves the banks as they were (a training step moves them)
    assert torch.equal(model.region_bank.memory, banks[0]) and torch.equal(model.frame_bank.memory, banks[1])
    model(tiny_batch())
    assert not torch.equal(model.region_bank.memory, banks[0])


def test_grad_probe_is_the_norm_of_each_terms_own_gradient_and_the_terms_sum_to_the_loss():
    from grounding import engine

    model = tiny_causal(dropout=0.1, intervention="code").train()
    batch = tiny_batch()
    probe = engine.grad_probe(model, batch, seed=7)
    torch.manual_seed(7)  # the probe's draws (dropout, style items) with the probe's seed
    terms = model.loss_terms(batch)
    for t, value in terms.items():
        for g, ps in model.grad_groups().items():
            want = _norm(torch.autograd.grad(value, ps, retain_graph=True, allow_unused=True))
            assert probe[f"grad/{t}/{g}"] == pytest.approx(want, rel=1e-5, abs=1e-12), (t, g)
    torch.manual_seed(7)
    loss, _ = model(batch)  # the training loss is the sum of the terms (before its bank update)
    torch.testing.assert_close(sum(terms.values()), loss)


def _boxes_batch():
    """Two videos, T frames, N proposals: the queried object's box is proposal 0's in every frame
    but the last (not visible there); other proposals are far away."""
    b = tiny_batch(B=2)
    b["queries"] = torch.tensor([[0, -1], [1, -1]])
    props = torch.zeros(2, T, N, 4)
    for n in range(N):
        props[:, :, n] = torch.tensor([100.0 * n, 0.0, 100.0 * n + 50, 50.0])
    b["proposals"] = props
    b["gt_class"] = torch.tensor([[0, 2], [1, -1]])
    b["gt_boxes"] = torch.zeros(2, 2, T, 4)
    b["gt_boxes"][:, 0] = torch.tensor([0.0, 0.0, 50.0, 50.0])
    b["gt_boxes"][0, 1] = torch.tensor([200.0, 0.0, 250.0, 50.0])  # another class, on proposal 2
    b["gt_valid"] = torch.ones(2, 2, T, dtype=torch.bool)
    b["gt_valid"][:, :, -1] = False
    return b


def test_content_set_ground_truth_shares_by_hand():
    model = tiny_causal(B_r=2, B_f=1)
    b = _boxes_batch()
    pb, pk = torch.tensor([0, 1]), torch.tensor([0, 0])
    hit, visible = model._gt_hits(b, pb, pk)
    want = torch.zeros(2, T, N, dtype=torch.bool)
    want[:, :-1, 0] = True  # proposal 0 in the visible frames; proposal 2 is the other class's
    assert torch.equal(hit, want) and torch.equal(visible, want.any(-1))
    # content: video 0 holds proposal 0 in slot 0 of every frame, video 1 never; style never
    content = torch.tensor([[0, 1], [3, 4]])[:, None].expand(2, T, 2)
    style = torch.tensor([[2, 3], [2, 3]])[:, None].expand(2, T, 2)
    model._count_spatial((hit, visible), content, style)
    # temporal: video 0's content frame is visible (frame 0), video 1's is not (the last frame)
    model._count_temporal((hit, visible), torch.tensor([[0], [T - 1]]), torch.tensor([[1], [1]]))
    logs = model.epoch_end_logs()
    frames = 2 * (T - 1)  # (pair, frame)s with a ground-truth proposal
    assert logs["acl_spatial_content_gt_share"] == pytest.approx((T - 1) / (2 * frames))
    assert logs["acl_spatial_content_gt_recall"] == pytest.approx(0.5)
    assert logs["acl_spatial_style_gt_share"] == 0.0
    assert logs["acl_temporal_content_visible"] == pytest.approx(0.5)
    assert logs["acl_temporal_style_visible"] == 1.0
    # counted once: the next epoch starts from zero (and a batch without boxes counts nothing)
    model(tiny_batch())
    assert not any(k.startswith("acl_spatial_content") for k in model.epoch_end_logs())
    model(b)  # a training step with boxes counts; the probe's loss_terms does not
    model.loss_terms(b)
    assert 0.0 <= model.epoch_end_logs()["acl_spatial_content_gt_recall"] <= 1.0
    model.loss_terms(b)
    assert "acl_spatial_content_gt_recall" not in model.epoch_end_logs()
