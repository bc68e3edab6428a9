"""``scl`` unit tests: stvg parity with the extra terms off, CAOS on a
hand-made batch, the context selector's gate, the transfer distances, negative sampling, gradient
flow, predict() without text features, determinism, the bi-LSTM context."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from grounding.data.manifest import DataError
from grounding.models import registry
from grounding.models.base import DataInfo

T, N, D, DT, K_CLS = 3, 5, 8, 12, 6
SMALL = {"embed_dim": 16, "heads": 2}


def _info(seed=0, text=True, words=True) -> DataInfo:
    g = np.random.default_rng(0)
    return DataInfo(task="wsvog", dims={"T": T, "N": N, "D": D, **({"D_text": DT} if text else {})},
                    class_vectors=g.standard_normal((K_CLS, 300)).astype(np.float32),
                    class_priors=np.full(K_CLS, 1 / K_CLS),
                    word_vectors=g.standard_normal((20, 300)).astype(np.float32) if words else None,
                    seed=seed, text={"key": "minilm", "encoder": "sentence-transformers/all-MiniLM-L6-v2"} if text else None)


def _batch(B=4, seed=0, text=True):
    g = torch.Generator().manual_seed(seed)
    queries = torch.tensor([[0, 1, -1], [2, -1, -1], [1, 3, 4], [5, 0, -1]][:B])
    b = {"features": torch.randn(B, T, N, D, generator=g), "queries": queries}
    if text:
        b["text_query"] = torch.randn(B, 3, DT, generator=g)
        b["text_sentence"] = torch.randn(B, DT, generator=g)
        b["word_ids"] = torch.tensor([[1, 2, 3, 4, -1], [5, 6, -1, -1, -1], [7, 8, 9, 10, 11], [12, 13, 14, -1, -1]][:B])
        b["word_pos"] = torch.tensor([[0, 2, -1], [1, -1, -1], [0, 3, -1], [2, 0, -1]][:B])
    return b


def _build(name, seed=0, **params):
    torch.manual_seed(seed)
    return registry.build(name, {**SMALL, **params}, _info(seed))


def test_registered_under_its_own_name():
    assert "scl" in registry.names() and registry.task_of("scl") == "wsvog"
    assert registry.get("scl").__module__ == "grounding.models.scl"


def test_loss_equals_stvg_exactly_with_the_extra_terms_off():
    stvg = _build("stvg")
    scl = _build("scl", lambda1=0.0, lambda2=0.0, contextual_mil=False)
    sd = scl.state_dict()
    for k, v in stvg.state_dict().items():  # same seed -> the same stvg weights
        assert torch.equal(sd[k], v), k
    batch = _batch()
    for model in (stvg, scl):
        model.train()
    torch.manual_seed(5)
    a, _ = stvg(batch)
    torch.manual_seed(5)
    b, logs = scl(batch)
    assert torch.equal(a, b) and set(logs) == {"loss_mil_f"}
    # stvg's negative and MIL-form options carry over (to both branches)
    for opts in ({"negatives": "disjoint"}, {"mil_form": "code"}):
        a_model, b_model = _build("stvg", **opts), _build("scl", lambda1=0.0, lambda2=0.0, contextual_mil=False, **opts)
        torch.manual_seed(5)
        a2, _ = a_model(batch)
        torch.manual_seed(5)
        b2, _ = b_model(batch)
        assert torch.equal(a2, b2), opts
        full, logs = _build("scl", **opts)(batch)
        assert torch.isfinite(full) and "loss_mil_c" in logs
    # and the whole loss differs as soon as one term is on
    on = _build("scl", lambda1=0.0, lambda2=0.0, contextual_mil=True)
    torch.manual_seed(5)
    c, logs = on(batch)
    assert not torch.equal(a, c) and "loss_mil_c" in logs


def test_caos_matches_the_formula_on_a_hand_made_batch(monkeypatch):
    model = _build("scl", dropout=0.0)
    E = 2
    # two sentences: sentence 0 has classes (0, 1), sentence 1 has (0, 2); concepts z = Co - Cs
    queries = torch.tensor([[0, 1], [0, 2]])
    mask = queries >= 0
    Cs = torch.tensor([[0.0, 0.0], [1.0, 0.0]])
    Co = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[2.0, 1.0], [1.0, -1.0]]])
    z = {(0, 0): [1.0, 0.0], (0, 1): [0.0, 1.0], (1, 0): [1.0, 1.0], (1, 1): [0.0, -1.0]}
    P = {0: [1.0, 0.0], 1: [0.0, 1.0], 2: [-1.0, 0.0]}  # stable concepts E_f(class)
    monkeypatch.setattr(model, "embed_stable", lambda c: torch.tensor([P[int(i)] for i in c]))
    cos = lambda a, b: float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))  # noqa: E731
    labels = {(0, 0): 0, (0, 1): 1, (1, 0): 0, (1, 1): 2}
    ratios = []
    for c in (0, 1, 2):
        pos = [cos(P[c], z[j]) for j in z if labels[j] == c]
        neg = [cos(P[c], z[j]) for j in z if labels[j] != c]
        ratios.append(np.mean(pos) / max(np.mean(neg), 0.1))
    got = model.caos_loss(Co, Cs, queries, mask)
    assert float(got) == pytest.approx(-np.mean(ratios), abs=1e-6)
    assert len(ratios) == 3 and E == 2
    # d- <= 0 for class 1 here (its negatives point away): the floor keeps the loss finite
    neg1 = np.mean([cos(P[1], z[j]) for j in z if labels[j] != 1])
    assert neg1 <= 0 and math.isfinite(float(got))
    # the per-class pooling option: mean over the other classes of their mean cosines
    model.cfg = model.cfg.replace(clust_neg_pool="class")
    ratios = []
    for c in (0, 1, 2):
        pos = np.mean([cos(P[c], z[j]) for j in z if labels[j] == c])
        per = [np.mean([cos(P[c], z[j]) for j in z if labels[j] == o]) for o in (0, 1, 2) if o != c]
        ratios.append(pos / max(np.mean(per), 0.1))
    assert float(model.caos_loss(Co, Cs, queries, mask)) == pytest.approx(-np.mean(ratios), abs=1e-6)
    # one class only: no negatives, no loss
    one = model.caos_loss(Co[:1, :1], Cs[:1], queries[:1, :1], mask[:1, :1])
    assert float(one) == 0.0


def test_context_selector_gate():
    model = _build("scl", dropout=0.0)
    E = SMALL["embed_dim"]
    g = torch.Generator().manual_seed(1)
    X = torch.randn(2, 3, E, generator=g)
    Fq = torch.randn(2, 3, E, generator=g)
    mask = torch.tensor([[True, True, False], [True, False, False]])
    want = F.normalize(X * (Fq @ model.gate.weight.T + model.gate.bias + 1), dim=-1) * mask[..., None]
    torch.testing.assert_close(model.selector(X, Fq, mask), want)
    assert (model.selector(X, Fq, mask)[~mask] == 0).all()
    with torch.no_grad():
        model.gate.weight.zero_()
        model.gate.bias.zero_()  # g = 0: the residual alone, U = normalise(X)
    torch.testing.assert_close(model.selector(X, Fq, mask), F.normalize(X, dim=-1) * mask[..., None])
    with torch.no_grad():
        model.gate.bias.fill_(-1.0)  # footnote 3's g(x) = -1: the selector closes completely
    assert model.selector(X, Fq, mask).abs().max() == 0


def test_transfer_distances_are_zero_for_identical_branches(monkeypatch):
    model = _build("scl", contextual_mil=False, lambda1=0.0, dropout=0.0)
    model.train()
    batch = _batch()
    mask = batch["queries"] >= 0
    M = torch.randn(4, 3, T, N)
    G = torch.randn(4, 3, T).softmax(-1)
    assert (model.spatial_distance(M, M, mask) == 0).all()
    assert (model.temporal_distance(G, G, mask) == 0).all()
    assert (model.spatial_distance(M, M + 1.0, mask).abs() < 1e-6).all()  # softmax is shift-invariant
    assert (model.spatial_distance(M, -M, mask) > 0).all()
    # at most 2/N: the mean of |p - q| over N entries of two distributions
    assert (model.spatial_distance(M * 50, -M * 50, mask) <= 2 / N + 1e-6).all()
    # the whole c-branch equal to the f-branch (U = E_f, footnote 3's naive solution) and the
    # negative equal too: A+ = A- = 0, each transfer loss is l(0) = log 2
    monkeypatch.setattr(model, "selector", lambda X, Fq, m: Fq)
    _, logs = model(batch)
    assert logs["loss_stran"] == pytest.approx(math.log(2), abs=1e-6)
    assert logs["loss_ttran"] == pytest.approx(math.log(2), abs=1e-6)
    # with tau = 1 the softened temporal weights are stvg's weights themselves
    torch.testing.assert_close(model._soft_time(G), G)


def test_negative_object_has_another_class_where_one_exists():
    model = _build("scl")
    queries = torch.tensor([[0, 1, -1], [0, 2, -1], [3, -1, -1], [3, 3, -1]])
    mask = queries >= 0
    X = queries.clamp(min=0).float()[..., None].expand(4, 3, 5).clone()  # X carries its own class id
    for _ in range(20):
        Xn = model.negative_contexts(X, queries, mask)[..., 0]
        # row 0 (classes 0, 1) -> row 1 (0, 2): class 0 must take 2, class 1 may take 0 or 2
        assert Xn[0, 0] == 2 and Xn[0, 1] in (0, 2)
        assert Xn[1, 0] == 3 and Xn[1, 1] == 3  # row 2 has only class 3
        assert Xn[2, 0] == 3  # row 3 has only class 3 = its own: fallback to any real object
        assert Xn[3, 0] in (0, 1) and Xn[3, 1] in (0, 1)  # row 0; never a padding slot


def test_transfer_gradients_reach_the_gate_and_the_context_encoder():
    model = _build("scl", contextual_mil=False, lambda1=0.0, lambda2=1.0)
    model.train()
    loss, logs = model(_batch())
    loss.backward()
    assert {"loss_stran", "loss_ttran"} <= set(logs)
    assert model.gate.weight.grad.abs().sum() > 0 and model.ctx_proj.weight.grad.abs().sum() > 0
    # detach_teacher: the transfer no longer trains the c-branch
    model = _build("scl", contextual_mil=False, lambda1=0.0, lambda2=1.0, detach_teacher=True)
    loss, _ = model(_batch())
    loss.backward()
    assert model.ctx_proj.weight.grad is None or model.ctx_proj.weight.grad.abs().sum() == 0


def test_full_loss_is_finite_and_every_term_logged_and_switchable():
    model = _build("scl")
    model.train()
    loss, logs = model(_batch())
    assert torch.isfinite(loss)
    assert set(logs) == {"loss_mil_f", "loss_mil_c", "loss_clust", "loss_stran", "loss_ttran"}
    for switch, gone in (("caos", "loss_clust"), ("spatial_transfer", "loss_stran"),
                         ("temporal_transfer", "loss_ttran"), ("contextual_mil", "loss_mil_c")):
        _, logs = _build("scl", **{switch: False})(_batch())
        assert gone not in logs and "loss_mil_f" in logs, switch


def test_predict_uses_the_stable_branch_and_needs_no_text_features():
    model = _build("scl")
    stvg = _build("stvg")
    model.eval()
    stvg.eval()
    bare = _batch(text=False)
    scores = model.predict(bare)
    assert scores.shape == (4, 3, T, N)
    torch.testing.assert_close(scores, stvg.predict(bare))  # same initial stvg weights
    ctx = _build("scl", inference="context")
    ctx.eval()
    with pytest.raises(DataError, match="no text features"):
        ctx.predict(bare)
    assert ctx.predict(_batch()).shape == (4, 3, T, N)
    both = _build("scl", inference="both")
    both.eval()
    assert both.predict(_batch()).shape == (4, 3, T, N)


def test_seeded_training_is_deterministic():
    from grounding import engine

    losses = []
    for _ in range(2):
        engine.seed_everything(3)
        model = registry.build("scl", SMALL, _info(3))
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        run = []
        for step in range(3):
            loss, _ = model(_batch(seed=step))
            opt.zero_grad()
            loss.backward()
            opt.step()
            run.append(float(loss.detach()))
        losses.append(run)
    assert losses[0] == losses[1]


def test_bilstm_context_trains_end_to_end():
    model = _build("scl", context="bilstm", lstm_hidden=8)
    model.train()
    batch = _batch()
    batch.pop("text_query"), batch.pop("text_sentence")  # the bi-LSTM reads word ids only
    loss, logs = model(batch)
    loss.backward()
    assert torch.isfinite(loss) and "loss_mil_c" in logs
    assert model.lstm.weight_ih_l0.grad.abs().sum() > 0
    x_o, x_s = model.context_inputs(batch)
    assert x_o.shape == (4, 3, 16) and x_s.shape == (4, 16)


def test_missing_text_features_and_bad_options_are_one_line_errors():
    with pytest.raises(DataError, match="add-text-features"):
        registry.build("scl", SMALL, _info(text=False))
    with pytest.raises(DataError, match="words table"):
        registry.build("scl", {**SMALL, "context": "bilstm"}, _info(words=False))
    for bad in ({"context": "bert"}, {"clust_form": "x"}, {"inference": "u"}, {"tau": 0.0}, {"lambda1": -1.0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            registry.make_config("scl", bad)


# ------------------------------------------------------------ gradient probe and diagnostics
def _norm(grads) -> float:
    return math.sqrt(sum(float((g ** 2).sum()) for g in grads if g is not None))


@pytest.mark.parametrize("context", ["minilm", "bilstm"])
def test_grad_probe_reports_every_term_and_group_and_zero_where_a_term_cannot_reach(context):
    from grounding import engine

    model = _build("scl", context=context, lstm_hidden=8).train()
    groups = model.grad_groups()
    assert set(groups) == {"stable", "context", "gate", "visual", "temporal"}
    params = [p for ps in groups.values() for p in ps]  # the groups partition the trainable parameters
    assert sorted(map(id, params)) == sorted(id(p) for p in model.parameters() if p.requires_grad)
    gen = model._neg_gen.get_state()
    probe = engine.grad_probe(model, _batch(), seed=1)
    assert torch.equal(model._neg_gen.get_state(), gen)  # the probe draws no negative of training's
    terms = ("mil_f", "mil_c", "caos", "stran", "ttran")
    assert set(probe) == {f"grad/{t}/{g}" for t in terms for g in groups}
    assert all(math.isfinite(v) and v >= 0 for v in probe.values())
    # L^f_MIL is stvg's loss: the context branch is not in it
    assert probe["grad/mil_f/stable"] > 0 and probe["grad/mil_f/visual"] > 0
    assert probe["grad/mil_f/context"] == probe["grad/mil_f/gate"] == 0.0
    # CAOS compares text concepts only: no visual, temporal or gate gradient
    assert probe["grad/caos/stable"] > 0 and probe["grad/caos/context"] > 0
    assert probe["grad/caos/visual"] == probe["grad/caos/temporal"] == probe["grad/caos/gate"] == 0.0
    for t in ("mil_c", "stran", "ttran"):  # the c-branch and the transfers reach the gate and E_c
        assert probe[f"grad/{t}/gate"] > 0 and probe[f"grad/{t}/context"] > 0, t
    assert probe["grad/stran/temporal"] == 0.0  # the spatial transfer compares M only


def test_probe_terms_are_weighted_as_in_eq_18_and_sum_to_the_loss():
    from grounding import engine

    model = _build("scl").train()
    batch = _batch()
    probe = engine.grad_probe(model, batch, seed=2)
    torch.manual_seed(2)
    terms = model.loss_terms(batch)
    for t, value in terms.items():
        for g, ps in model.grad_groups().items():
            want = _norm(torch.autograd.grad(value, ps, retain_graph=True, allow_unused=True))
            assert probe[f"grad/{t}/{g}"] == pytest.approx(want, rel=1e-5, abs=1e-12), (t, g)
    gen = model._neg_gen.get_state()
    torch.manual_seed(2)
    loss, logs = model(batch)  # a training step draws the same negatives as the probe did
    torch.testing.assert_close(sum(terms.values()), loss)
    assert float(terms["caos"].detach()) == pytest.approx(0.4 * logs["loss_clust"], rel=1e-6)
    assert float(terms["stran"].detach()) == pytest.approx(0.2 * logs["loss_stran"], rel=1e-6)
    assert not torch.equal(model._neg_gen.get_state(), gen)
    # doubling lambda2 doubles the transfer terms' gradients, and leaves MIL's
    double = _build("scl", lambda2=0.4).train()
    p2 = engine.grad_probe(double, batch, seed=2)
    for g in ("stable", "context", "visual"):
        assert p2[f"grad/stran/{g}"] == pytest.approx(2 * probe[f"grad/stran/{g}"], rel=1e-5)
        assert p2[f"grad/mil_f/{g}"] == pytest.approx(probe[f"grad/mil_f/{g}"], rel=1e-6)


def test_caos_floor_active_fraction_and_transfer_top_probability():
    batch = _batch()
    for eps, form, want in ((10.0, "ratio", 1.0), (1e-6, "shifted", 0.0)):  # (1 + cos) / 2 > 1e-6 always
        model = _build("scl", eps_clust=eps, clust_form=form).train()
        assert model.epoch_end_logs() == {}  # nothing counted yet
        model.loss_terms(batch)  # the probe counts nothing
        assert model.epoch_end_logs() == {}
        model(batch)
        model(batch)
        logs = model.epoch_end_logs()
        assert logs["caos_floor_active"] == want
        assert 1 / N <= logs["stran_top_prob"] <= 1.0
        assert model.epoch_end_logs() == {}  # reset for the next epoch
    # a colder transfer softmax is peakier
    tops = []
    for tau in (1.0, 0.01):
        model = _build("scl", tau=tau).train()
        torch.manual_seed(0)
        model(batch)
        tops.append(model.epoch_end_logs()["stran_top_prob"])
    assert tops[1] > tops[0]


def test_a_trained_model_is_read_under_another_inference_without_retraining():
    """``inference`` is one of scl's prediction_options: load_predictor(options=) rebuilds the
    delivered predictor with it on the same weights (the paper's Table 3 "Inference" rows); an
    option the method also trains with, or a value it does not allow, is refused by name."""
    from grounding import training
    from grounding.training import PACKAGE_FORMAT

    model = _build("scl")
    params = {**SMALL}
    pkg = {"format": PACKAGE_FORMAT, "method": "scl", "params": params, "combine": None,
           "stages": {"scl": {"method": "scl", "params": params, "model": model.state_dict()}}}
    batch = _batch()
    for inference in ("context", "both"):
        got = training.load_predictor(pkg, _info(), options={"inference": inference}).eval()
        want = _build("scl", inference=inference).eval()
        want.load_state_dict(model.state_dict())
        torch.testing.assert_close(got.predict(batch), want.predict(batch))
    assert not torch.equal(training.load_predictor(pkg, _info(), options={"inference": "context"}).eval().predict(batch),
                           training.load_predictor(pkg, _info()).eval().predict(batch))
    with pytest.raises(ValueError, match=r"^model.tau: not an option scl reads at prediction time; allowed: model.inference$"):
        training.load_predictor(pkg, _info(), options={"tau": 0.1})
    with pytest.raises(ValueError, match="inference"):
        training.load_predictor(pkg, _info(), options={"inference": "nope"})
