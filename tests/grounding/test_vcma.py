"""VCMA's invariants (spec vcma.md §8 items 2-8) on small batches shaped as the tube batch contract says (docs/shards.md).

Item 1 (linking permutations) and 9 (tube metrics) belong to the tube family's linking and
``grounding/metrics/tube.py`` and are tested there; the model consumes ``batch["tubes"]``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from grounding import engine
from grounding.models import registry
from grounding.models.base import DataInfo
from grounding.models.vcma import VCMA, VCMAConfig, decode_segment, entity_index, gaussian
from search_spaces import vcma as vcma_space

V, DW, DR, DF = 30, 300, 12, 10


def info(T=8, N=5, L=6, R=2, P=3) -> DataInfo:
    g = np.random.default_rng(0)
    vectors = g.standard_normal((V, DW)).astype(np.float32)
    vectors[0] = 0
    dims = {"T": T, "N": N, "Df": DF, "Dr": DR, "L": L, "R": R, "P": P, "M": N}
    return DataInfo(task="tube", dims=dims, word_vectors=vectors, class_vectors=vectors[:5])


def make_batch(B=4, T=8, N=5, L=6, R=2, P=3, frames=None, seed=0, videos=None) -> dict:
    g = torch.Generator().manual_seed(seed)
    frames = frames or [T] * B
    tokens = torch.randint(1, V, (B, L), generator=g)
    tokens[:, L - 1] = 0  # one pad token
    fv = torch.arange(T)[None] < torch.tensor(frames)[:, None]
    xy = torch.rand(B, T, N, 2, generator=g) * 0.6
    boxes = torch.cat([xy, xy + 0.3], -1)
    tubes = torch.stack([torch.stack([torch.randperm(N, generator=g) for _ in range(T)], 1) for _ in range(B)])
    rel_pred = torch.randint(1, V, (B, R, P), generator=g)
    rel_pred[:, :, -1] = 0
    ent = torch.full((B, L), -1)
    ent[:, 1], ent[:, 3] = 0, 1  # two one-word entity phrases: the subject (token 1) and the object (3)
    return {
        "frame_feats": torch.randn(B, T, DF, generator=g),
        "region_feats": torch.randn(B, T, N, DR, generator=g),
        "boxes": boxes, "frame_valid": fv, "tokens": tokens, "token_mask": tokens > 0,
        "subject_pos": torch.tensor([1] * (B - 1) + [-1]),
        "subject_class": torch.zeros(B, dtype=torch.long), "sentence_form": torch.arange(B) % 2,
        "rel_subj": torch.tensor([[1, 0]] * B), "rel_obj": torch.tensor([[3, -1]] * B),
        "rel_pred": rel_pred, "rel_valid": torch.tensor([[True, b % 2 == 0] for b in range(B)]),
        "tubes": tubes, "gt_segment": torch.tensor([[1, 4]] * B), "gt_boxes": boxes[:, :, 0],
        "gt_box_valid": fv.clone(),
        "video_index": torch.tensor(videos if videos is not None else list(range(B))),
        "entity_ids": ent,
    }


def model(**kw) -> VCMA:
    torch.manual_seed(0)
    return VCMA(VCMAConfig(**kw), info())


def test_registered():
    assert registry.get("vcma") is VCMA and registry.task_of("vcma") == "tube"
    with pytest.raises(ValueError, match="em_schedule"):
        VCMAConfig(em_schedule="round-robin")


# ----------------------------------------------------------------- 2-3 assignment normalisation
def test_assignments_normalised():
    m = model().eval()
    b = make_batch(frames=[8, 5, 8, 3])
    for net in (m.q_phi, m.p_theta):
        out = net(b, m.word_vectors)
        assert out["zs"].shape == (4, 8, 2, 5) and out["ent_mask"].all()  # the two entity phrases
        torch.testing.assert_close(out["zs"].sum(-1), torch.ones(4, 8, 2))
        zt = out["zt"]
        assert (zt[b["frame_valid"]] > 0).all() and (zt[b["frame_valid"]] < 1).all()
        assert (zt[~b["frame_valid"]] == 0).all()


def test_gaussian_peak_and_segment():
    valid = torch.arange(11)[None] < torch.tensor([11, 6])[:, None]
    c, s = torch.tensor([0.5, 0.2]), torch.tensor([0.2, 0.3])
    z = gaussian(c, s, valid, 1.0)
    assert z[0].argmax() == 5 and z[1].argmax() == 1  # p_t = t / (T_b - 1)
    assert (z[1, 6:] == 0).all()
    seg = decode_segment(z, valid, math.exp(-0.5))
    # one Gaussian at theta_T = e^-1/2: [c - sigma, c + sigma] on p_t (to one frame)
    assert seg[0].tolist() == [3, 8]  # p in [0.3, 0.7] -> t 3..7
    assert seg[1].tolist() == [0, 3]  # p in [0, 0.5] over 6 frames (p_t = t/5) -> t 0..2 (0.4), 0.6 out


# ----------------------------------------------------------------- 4 beta extremes
@pytest.mark.parametrize("beta,net", [(1.0, "q_phi"), (0.0, "p_theta")])
def test_beta_extremes_decode_one_network(beta, net):
    m = model(beta=beta).eval()
    b = make_batch()
    pred = m.predict(b)
    out = getattr(m, net)(b, m.word_vectors)
    i = m.target_entity(b)
    assert i.tolist() == [0, 0, 0, 0]  # subject_pos 1 is entity 0; -1 (unknown) falls back to entity 0
    own = out["zs"][torch.arange(4), :, i]  # [B, T, N]
    assert torch.equal(pred["proposal"], own.argmax(-1))
    assert torch.equal(pred["segment"], decode_segment(out["zt"], b["frame_valid"], m.cfg.seg_threshold))
    mixed = model(beta=0.5).eval().predict(b)
    assert not torch.allclose(mixed["scores"], pred["scores"])


# ----------------------------------------------------------------- 6 E/M gradient isolation
def _grads(m, params):
    return [p.grad for p in params]


@pytest.mark.parametrize("schedule", ["epoch", "step"])
def test_em_gradient_isolation(schedule):
    m = model(em_schedule=schedule).train()
    b = make_batch()
    phases = []
    for epoch in range(2):
        m.epoch_start(epoch)
        m.zero_grad(set_to_none=True)
        loss, logs = m(b)
        loss.backward()
        phi, theta = m.phi_parameters(), m.theta_parameters()
        phases.append(logs["phase_e"])
        trained, frozen = (phi, theta) if logs["phase_e"] else (theta, phi)
        assert all(g is None for g in _grads(m, frozen))
        assert sum(p.grad is not None and p.grad.abs().sum() > 0 for p in trained) > 0.5 * len(trained)
    assert phases == [1.0, 0.0]  # E then M, for both the per-epoch and the per-step schedule


def test_engine_calls_epoch_start_and_adamw_skips_frozen():
    m = model(em_schedule="epoch")
    b = make_batch(B=4)

    class Data:
        def __len__(self):
            return 4

        def batch(self, idx, device):
            return {k: v[torch.as_tensor(idx)] for k, v in b.items()}

    cfg = engine.OptimConfig(lr=1e-3, batch_size=4, optimizer="adamw", weight_decay=0.1)
    opt = engine.make_optimizer(m, cfg)
    before = [p.detach().clone() for p in m.theta_parameters()]
    logs = engine.train_one_epoch(m, opt, Data(), cfg, epoch=0, seed=0)
    assert logs["phase_e"] == 1.0 and m.phase == "E"
    assert all(torch.equal(a, p) for a, p in zip(before, m.theta_parameters()))  # no decay either
    logs = engine.train_one_epoch(m, opt, Data(), cfg, epoch=1, seed=0)
    assert logs["phase_e"] == 0.0 and "loss_rec" in logs


def test_joint_detaches_targets():
    m = model(em_schedule="joint").train()
    b = make_batch()
    loss, logs = m(b)
    # the E part alone gives gradient to phi only, the M part to theta only
    q = m.q_phi(b, m.word_vectors)
    p = m.p_theta(b, m.word_vectors)
    le, _, _ = m.e_loss(b, p={k: v.detach() for k, v in p.items()}, q=q)
    m.zero_grad(set_to_none=True)
    le.backward(retain_graph=True)
    assert all(g is None for g in _grads(m, m.theta_parameters()))
    lm, _, _ = m.m_loss(b, q={k: v.detach() for k, v in q.items()}, p=p)
    m.zero_grad(set_to_none=True)
    lm.backward()
    assert all(g is None for g in _grads(m, m.phi_parameters()))
    assert "loss_contra" in logs and "loss_rec" in logs


# ----------------------------------------------------------------- 7 InfoNCE limit
def test_infonce_limit_and_same_video_mask():
    m = model()
    B = 6
    s = torch.full((B, B), 3.7)
    assert math.isclose(float(m.infonce(s, torch.arange(B))), math.log(B), rel_tol=1e-6)
    vids = torch.tensor([0, 0, 1, 2, 3, 4])  # sentences 0 and 1 share a video: not negatives
    got = m.infonce(s, vids)
    expect = (2 * math.log(B - 1) + 4 * math.log(B)) / B
    assert math.isclose(float(got), expect, rel_tol=1e-6)
    s2 = s.clone()
    s2[0, 1] = s2[1, 0] = 100.0  # a masked pair's score has no effect
    assert math.isclose(float(m.infonce(s2, vids)), expect, rel_tol=1e-6)


@pytest.mark.parametrize("neg", ["pair", "own", "uniform"])
def test_pair_scores_diagonal_is_own_video(neg):
    m = model(neg_temporal=neg, dropout=0.0).eval()
    b = make_batch()
    q = m.q_phi(b, m.word_vectors)
    S = m.pair_scores(q, b)
    assert S.shape == (4, 4)
    # the diagonal equals the sentence's score against its own video, computed directly
    s = torch.einsum("bld,btnd->btln", m.q_phi.g_S(q["ent"]), m.q_phi.g_V(q["V"])).max(-1).values
    z = q["zt"] if neg != "uniform" else b["frame_valid"].float()
    tm = q["ent_mask"].float()
    own = ((z[..., None] * s).sum(1) / z.sum(1, keepdim=True) * tm).sum(-1) / tm.sum(-1)
    torch.testing.assert_close(S.diagonal(), own, rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------- 8 reconstruction leak check
def _planted(seed=0, B=8, T=6, N=4, L=6):
    """Each video has one planted region whose feature encodes the predicate word (one word per
    relation); the subject token is 1."""
    b = make_batch(B=B, T=T, N=N, L=L, R=1, P=2, seed=seed)
    g = torch.Generator().manual_seed(seed)
    words = torch.randint(1, 6, (B,), generator=g)
    b["rel_pred"] = torch.stack([words, torch.zeros_like(words)], -1)[:, None]
    b["rel_valid"] = torch.ones(B, 1, dtype=torch.bool)
    b["rel_subj"], b["rel_obj"] = torch.ones(B, 1, dtype=torch.long), -torch.ones(B, 1, dtype=torch.long)
    j = torch.randint(0, N, (B,), generator=g)
    code = torch.zeros(B, DR)
    code[torch.arange(B), words] = 5.0
    b["region_feats"][torch.arange(B), :, j] = code[:, None]
    oracle = torch.zeros(B, T, L, N)
    oracle[torch.arange(B), :, :, j] = 1.0
    return b, oracle, words


def test_reconstruction_uses_the_assignment_not_the_relation():
    """L_rec drops when Z selects the planted region, rises when Z selects another region or the
    relations are shuffled: the decoder reads the predicate from what Z grounds (fresh plantings
    every step, scored on an unseen one)."""
    torch.manual_seed(0)
    m = VCMA(VCMAConfig(dropout=0.0, enc_blocks=0), info(T=6, N=4, R=1, P=2))
    params = (list(m.W_r.parameters()) + list(m.decoder.parameters()) + list(m.dec_in.parameters())
              + list(m.dec_out.parameters()) + [m.bos, m.null] + list(m.p_theta.W_v.parameters()))
    opt = torch.optim.Adam(params, lr=3e-3)
    for step in range(120):
        b, oracle, _ = _planted(seed=100 + step, B=16)
        loss = m.reconstruction(m.p_theta.W_v(b["region_feats"]), oracle, b["frame_valid"].float(), b)
        opt.zero_grad()
        loss.backward()
        opt.step()
    m.eval()
    with torch.no_grad():
        b, oracle, _ = _planted(seed=1, B=16)
        zt = b["frame_valid"].float()
        V = m.p_theta.W_v(b["region_feats"])
        wrong = oracle.roll(1, -1)  # one-hot on a region that carries no planted word
        l_oracle = float(m.reconstruction(V, oracle, zt, b))
        l_wrong = float(m.reconstruction(V, wrong, zt, b))
        l_shuffled = float(m.reconstruction(V, oracle, zt, dict(b, rel_pred=b["rel_pred"].roll(1, 0))))
    assert l_oracle < 0.5 * math.log(5)  # well below chance over the 5 planted words
    assert l_wrong > l_oracle + 1.0
    assert l_shuffled > l_oracle + 1.0


def test_rec_z_source_q_phi_gives_theta_no_assignment_gradient_from_rec():
    m = model(rec_z_source="q_phi", em_schedule="step")
    b = make_batch()
    m.set_phase("M")
    q = {k: v.detach() for k, v in m.q_phi(b, m.word_vectors).items()}
    p = m.p_theta(b, m.word_vectors)
    rec = m.reconstruction(p["V"], q["zs"], q["zt"], b)
    m.zero_grad(set_to_none=True)
    rec.backward()
    assert m.p_theta.g_S[0].weight.grad is None and m.p_theta.head.weight.grad is None
    m2 = model()  # the default p_theta source trains p_theta's assignment through L_rec
    p = m2.p_theta(b, m2.word_vectors)
    m2.reconstruction(p["V"], p["zs"], p["zt"], b).backward()
    assert m2.p_theta.g_S[0].weight.grad.abs().sum() > 0 and m2.p_theta.head.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("kw", [{"networks": "q_only"}, {"networks": "p_only"}, {"recon": False},
                                {"pseudo_label": "soft", "match_norm": "sum"}, {"pseudo_label": "argmax"}])
def test_variants_train_and_predict(kw):
    m = model(**kw).train()
    b = make_batch(frames=[8, 6, 8, 4])
    for epoch in range(2):
        m.epoch_start(epoch)
        loss, logs = m(b)
        assert torch.isfinite(loss)
        loss.backward()
    pred = m.eval().predict(b)
    assert pred["segment"].shape == (4, 2) and pred["proposal"].shape == (4, 8)
    assert ((pred["segment"][:, 0] < pred["segment"][:, 1])
            & (pred["segment"][:, 1] <= b["frame_valid"].sum(1))).all()


# ----------------------------------------------------------------- planted toy: q_phi learns
TOY_K, TOY_FUNCTION, TOY_PRED = 8, ("a", "the", "is", "near"), 3  # classes, function words, predicates


def toy_info(T=6, N=10, Dr=16, Df=8, L=8) -> DataInfo:
    """Vocabulary: 0 pad, 1..K class nouns, then the function words, then the predicate words."""
    g = np.random.default_rng(7)
    V = 1 + TOY_K + len(TOY_FUNCTION) + TOY_PRED
    vectors = g.standard_normal((V, DW)).astype(np.float32)
    vectors[0] = 0
    dims = {"T": T, "N": N, "Df": Df, "Dr": Dr, "L": L, "R": 1, "P": 2, "M": N}
    return DataInfo(task="tube", dims=dims, word_vectors=vectors, class_vectors=vectors[1:1 + TOY_K])


def planted_toy(B: int, seed: int, T=6, N=10, Dr=16, Df=8, L=8, scene=1.5, signal=1.0,
                noise=0.5) -> tuple[dict, torch.Tensor]:
    """A batch of B videos, one sentence each: "a <subject> is near the <object>".

    Per frame, one region carries the subject class's prototype, one the object's, one a third
    class's (distractors), the other N - 3 only the video's scene; every region also carries the
    shared scene vector (norm ``scene``) and noise; slots are shuffled per frame and the tubes follow
    the objects; the entity phrases are the two nouns. Returns the batch and the subject's slot per
    frame ``[B, T]`` (chance 1/N).
    """
    world = np.random.default_rng(11)
    proto = world.standard_normal((TOY_K, Dr))
    proto /= np.linalg.norm(proto, axis=1, keepdims=True)
    g = np.random.default_rng(seed)
    cls = np.stack([g.choice(TOY_K, 3, replace=False) for _ in range(B)])  # subject, object, distractor
    perm = np.argsort(g.random((B, T, N)), -1)  # perm[b, t, k]: slot of item k (0..2 objects, rest background)
    sc = g.standard_normal((B, Dr))
    sc = scene * sc / np.linalg.norm(sc, axis=1, keepdims=True)
    reg = sc[:, None, None] + noise * g.standard_normal((B, T, N, Dr)) / math.sqrt(Dr)
    bi, ti = np.meshgrid(np.arange(B), np.arange(T), indexing="ij")
    for k in range(3):
        reg[bi, ti, perm[:, :, k]] += signal * proto[cls[:, k]][:, None]
    frames = sc[:, None, :Df] + noise * g.standard_normal((B, T, Df)) / math.sqrt(Df)
    f0 = 1 + TOY_K
    words = [f0, 1 + cls[:, 0], f0 + 2, f0 + 3, f0 + 1, 1 + cls[:, 1]]  # a <subj> is near the <obj>
    tokens = np.zeros((B, L), np.int64)
    for j, w in enumerate(words):
        tokens[:, j] = w
    ent = np.full((B, L), -1)
    ent[:, 1], ent[:, 5] = 0, 1
    xy = g.random((B, T, N, 2)) * 0.6
    boxes = np.concatenate([xy, xy + 0.3], -1)
    pred = 1 + TOY_K + len(TOY_FUNCTION) + g.integers(0, TOY_PRED, B)
    t = lambda a, dt=torch.float32: torch.as_tensor(np.asarray(a), dtype=dt)  # noqa: E731
    batch = {
        "frame_feats": t(frames), "region_feats": t(reg), "boxes": t(boxes),
        "frame_valid": torch.ones(B, T, dtype=torch.bool), "tokens": t(tokens, torch.long),
        "token_mask": t(tokens > 0, torch.bool), "subject_pos": torch.ones(B, dtype=torch.long),
        "subject_class": t(cls[:, 0], torch.long), "sentence_form": torch.zeros(B, dtype=torch.long),
        "rel_subj": torch.ones(B, 1, dtype=torch.long), "rel_obj": torch.full((B, 1), 5),
        "rel_pred": t(np.stack([pred, np.zeros(B, np.int64)], 1)[:, None], torch.long),
        "rel_valid": torch.ones(B, 1, dtype=torch.bool), "tubes": t(perm.transpose(0, 2, 1), torch.long),
        "gt_segment": torch.tensor([[0, T]] * B), "gt_boxes": t(boxes[:, :, 0]),
        "gt_box_valid": torch.ones(B, T, dtype=torch.bool), "video_index": torch.arange(B),
        "entity_ids": t(ent, torch.long),
    }
    return batch, t(perm[:, :, 0], torch.long)


@torch.no_grad()
def q_box_accuracy(m: VCMA, batches) -> float:
    """Fraction of frames where q_phi's assignment of the target entity picks the subject's region."""
    m.eval()
    hits = []
    for b, subj in batches:
        zs = m.q_phi(b, m.word_vectors)["zs"]
        i = m.target_entity(b)
        hits.append((zs[torch.arange(len(i)), :, i].argmax(-1) == subj).float().mean())
    m.train()
    return float(torch.stack(hits).mean())


def train_toy(steps: int, lr: float, B: int = 16, seed: int = 0, T: int = 6, **kw) -> tuple[float, float]:
    """q_phi's held-out box accuracy before and after ``steps`` updates of the model's first epoch
    (AdamW at ``lr``, weight decay 1e-4 as the search space's paper point), config ``kw`` on top of
    the defaults."""
    torch.manual_seed(seed)
    m = VCMA(VCMAConfig(**kw), toy_info(T=T))
    held = [planted_toy(64, seed=10_000 + k, T=T) for k in range(2)]
    before = q_box_accuracy(m, held)
    opt = torch.optim.AdamW(m.parameters(), lr=lr, weight_decay=1e-4)
    m.epoch_start(0)
    m.train()
    for step in range(steps):
        loss, _ = m(planted_toy(B, seed=seed * 100_000 + step, T=T)[0])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return before, q_box_accuracy(m, held)


def test_q_phi_learns_the_planted_toy_at_default_settings():
    """Issue 23's acceptance: from the config defaults (pre-norm layers, contrastive-only first
    E-phase, noun-phrase entities) and the search space's short-run learning rate, q_phi picks the
    subject's region far above chance (0.10) after 100 updates of its first E-step (held-out
    videos). bench/vcma_toy.py has the longer curves and the ablations."""
    lr = vcma_space.POINTS["short_run"]["lr"]
    before, after = train_toy(100, lr, T=4)
    assert after > 0.45 and after > before + 0.2, (before, after)


def test_e_warmup_rounds_drop_the_pull_towards_p_theta():
    b = make_batch()
    for schedule, epochs in (("epoch", [(0, True), (1, None), (2, False)]), ("step", [(0, True), (1, False)])):
        m = model(em_schedule=schedule, e_warmup_rounds=1).train()
        for epoch, warm in epochs:
            m.epoch_start(epoch)
            if warm is None:  # an M epoch: untouched by the warm-up
                assert m.current_phase() == "M"
                continue
            m._calls = 0  # step schedule: an E call
            loss, logs = m(b)
            assert logs["phase_e"] == 1.0 and logs["e_warmup"] == float(warm)
            assert ("loss_zs_phi" in logs) is (not warm) and ("loss_zt_phi" in logs) is (not warm)
            if warm:
                assert math.isclose(float(loss.detach()), logs["loss_contra"], rel_tol=1e-6)  # L_contra alone
    m = model(e_warmup_rounds=0)
    m.epoch_start(0)
    assert "loss_zs_phi" in m.train()(b)[1]  # 0: Algorithm 1 literally, the pull from the first step
    assert "e_warmup" not in model(networks="q_only").train()(b)[1]
    with pytest.raises(ValueError, match="e_warmup_rounds"):
        VCMAConfig(e_warmup_rounds=-1)


@pytest.mark.parametrize("norm_first", [True, False])
def test_norm_first_reaches_every_transformer_layer(norm_first):
    m = model(norm_first=norm_first)
    layers = [x for x in m.modules() if isinstance(x, (torch.nn.TransformerEncoderLayer, torch.nn.TransformerDecoderLayer))]
    assert len(layers) == 2 * (2 * 2 + 2 + 2) + 2  # per network: video (2 x 2), language, temporal head; decoder
    assert all(x.norm_first is norm_first for x in layers)


def test_entities_are_phrases_and_function_words_do_not_count():
    """With ``entities=phrases`` a word outside every phrase changes nothing q_phi computes; a
    two-word phrase is one entity (mean of its words); ``heads`` keeps its last word, ``tokens``
    every word."""
    b = make_batch()
    b["entity_ids"][:, 2] = 0  # tokens 1-2 are one phrase now, token 3 the second one
    other = dict(b, tokens=b["tokens"].clone())
    other["tokens"][:, 4] = (b["tokens"][:, 4] % (V - 1)) + 1  # another word outside every phrase
    assert entity_index(b, "phrases")[0].tolist() == [-1, 0, 0, 1, -1, -1]
    assert entity_index(b, "heads")[0].tolist() == [-1, -1, 0, 1, -1, -1]
    assert entity_index(b, "tokens")[0].tolist() == [0, 1, 2, 3, 4, -1]
    for mode, same in (("phrases", True), ("heads", True), ("tokens", False)):
        m = model(entities=mode, dropout=0.0).eval()
        q1, q2 = m.q_phi(b, m.word_vectors), m.q_phi(other, m.word_vectors)
        assert torch.allclose(q1["logit"], q2["logit"]) is same and torch.allclose(q1["zt"], q2["zt"]) is same
    m = model(dropout=0.0).eval()
    ent, mask, _, _ = m.q_phi.language(b, m.word_vectors)
    assert ent.shape[1] == 2 and mask.all()
    # without language layers an entity is its words' mean vector through W_w, plus the order PE and type
    m0 = model(dropout=0.0, lang_layers=0).eval()
    ent0 = m0.q_phi.language(b, m0.word_vectors)[0]
    e0 = m0.q_phi.W_w(m0.word_vectors[b["tokens"][:, 1:3]].mean(1))
    torch.testing.assert_close(ent0[:, 0], e0 + m0.q_phi.type_emb.weight[0] + torch.tensor([0.0, 1.0] * 16))
    # the target and the relation arguments are read through the phrases
    assert m.target_entity(b).tolist() == [0, 0, 0, 0]
    assert m.target_entity(dict(b, subject_pos=torch.tensor([2, 3, 1, 0]))).tolist() == [0, 1, 0, 0]


def test_a_sentence_without_phrases_is_one_entity():
    b = make_batch()
    b["entity_ids"][0] = -1
    assert entity_index(b, "phrases")[0].tolist() == [0, 0, 0, 0, 0, -1]  # its real words
    m = model().eval()
    out = m.q_phi(b, m.word_vectors)
    assert out["ent_mask"][0].tolist() == [True, False]


# ----------------------------------------------------------------- E/M isolation under DDP
def _ddp_worker(rank, port, out):
    import os

    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        m = model()
        d = torch.nn.parallel.DistributedDataParallel(
            m, broadcast_buffers=False, find_unused_parameters=m.ddp_find_unused_parameters)
        b = make_batch(seed=rank)
        rows = []
        for epoch in range(3):
            m.epoch_start(epoch)
            d.zero_grad(set_to_none=True)
            loss, logs = d(b)
            loss.backward()
            e = bool(logs["phase_e"])
            frozen, trained = (m.theta_parameters(), m.phi_parameters()) if e else (m.phi_parameters(), m.theta_parameters())
            rows.append((e, all(p.grad is None for p in frozen), all(p.grad is not None for p in trained)))
        torch.save(rows, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_em_isolation_under_ddp(tmp_path):
    """Two gloo ranks: the E/M phases alternate and the frozen network keeps ``grad is None``
    (the trial wraps vcma with ``find_unused_parameters=True``)."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(port, str(tmp_path)), nprocs=2, join=True)
    for r in range(2):
        assert torch.load(tmp_path / f"rank{r}.pt") == [(True, True, True), (False, True, True), (True, True, True)]
