"""``scl``: Stable Context Learning for WSVOG ("Stable Context Learning for Weakly-Supervised Video
Object Grounding", ACM MM 2023; Sec. 3.1-3.5, Eq. 1-17).

No public code exists; where the paper is silent this project chose, and the labels A1..A23 below
name those choices (each is stated where it is used). SCL is the ``stvg`` frame-level MIL model (this class
subclasses :class:`~grounding.models.stvg.STVG` and reuses its encoders, temporal module, scores
and MIL loss unchanged for the f-branch) plus a contextualised text branch and two losses.

Shapes per batch: B videos, Kq queried objects (``mask [B, Kq]``), T frames, N proposals, E joint size.

* Stable object concept ``F = E_f(w) = normalise(dropout(relu(W_f w)))`` (stvg's query embedding
  of the class GloVe vector), ``[B, Kq, E]``; regions ``V = E_v(R)`` (stvg's), ``[B, T, N, E]``.
* Contextual features, **precomputed in the shards** (``grounding/data/text_features.py``): the
  object's token feature ``x_o [B, Kq, D_t]`` and the sentence's [CLS] feature ``x_s [B, D_t]``
  (``model.context=minilm``, all-MiniLM-L6-v2 standing in for the paper's BERT, A1), or the
  paper's "GloVe + bi-LSTM" (``model.context=bilstm``: a 1-layer bi-LSTM, ``lstm_hidden`` per
  direction (A21), learned end to end over the sentence's stored GloVe word ids; ``x_o`` = its
  output at the object's word, ``x_s`` = the mean of its outputs).
* ``C_o = E_c(x_o)``, ``C_s = E_c(x_s)``, one shared ``E_c = normalise(dropout(relu(W_c x)))``
  (A4; ``ctx_normalize=false`` drops the normalisation).
* Context selector, Eq. (8): ``U = (C_o + C_s) * (g(F) + 1)``, ``g`` a plain ``Linear(E, E)``
  (A8); ``Û = normalise(U)``. ``M^f = cos(F, V)``, ``M^c = cos(Û, V)`` ``[B, Kq, T, N]``; the
  c-branch uses stvg's temporal module with ``Û`` and ``Qs^c = max_k Û`` (A13).
* MIL, Eq. (16): ``L^f_MIL`` is stvg's loss; ``L^c_MIL`` the same ranking loss on the c-branch
  scores with the same negatives and form (stvg's ``negatives`` / ``mil_form`` options; default the
  in-batch roll by one, A15). Switch: ``contextual_mil``.
* CAOS, Eq. (5)-(6): concepts ``z = C_o - C_s`` of every real (b, k) of the batch; per distinct
  class c of the batch ``P_c = E_f(glove_c)``, ``d+_c`` = mean cosine of ``P_c`` with the concepts
  of class c, ``d-_c`` = mean cosine with the concepts of every other class (pooled, A5; option
  ``clust_neg_pool=class`` averages per-class means), ``L_Clust = -mean_c d+_c / max(d-_c,
  eps_clust)`` over classes that have negatives (A6: this project's floor ``eps_clust`` = 0.1; option
  ``clust_form=shifted`` uses ``(1 + cos) / 2``). Concepts are not detached (A7; option
  ``clust_detach_concepts``). Switch: ``caos``.
* Spatial transfer, Eq. (10)-(13): ``A+ = mean_{k,t,n} |softmax_n(M^f/tau) - softmax_n(M^c/tau)|``
  per sample over its K_b real objects (A11); the negative uses ``U- = (C_o[b',k'] + C_s[b']) *
  (g(F) + 1)`` with ``b'`` the MIL negative of ``b`` (default ``b+1 mod B``) and ``k'`` a random
  real object of ``b'`` of another class where one exists (A10, drawn with a generator seeded
  from the data seed), against the
  positive video; ``L_STran = mean_b l(A+ - A-)``, ``l(x) = log(1 + exp(x / eta))``. Eq. (12)'s
  ``g(E_f(o_k) + 1)`` is read as ``g(E_f(o_k)) + 1`` (A9). Switch: ``spatial_transfer``.
* Temporal transfer, Eq. (14)-(15): the same on the temporal weights, softened as
  ``softmax_t(logits / tau)`` of the temporal module's pre-softmax logits (A12; with tau = 1
  these are stvg's weights; ``ttran_on=weights`` is the literal ``softmax_t(Q / tau)``). The
  logits are recovered as ``log Q`` (equal up to a per-row constant, which softmax ignores), so
  stvg's module is used unchanged. Switch: ``temporal_transfer``.
* ``L = lambda1 * L_Clust + lambda2 * (L_STran + L_TTran) + L^f_MIL + L^c_MIL`` (Eq. 18;
  lambda1 = 0.4, lambda2 = 0.2, tau = 1, eta = 0.2). Nothing is detached (A14; option
  ``detach_teacher`` stops the transfer gradients into the c-branch). With lambda1 = lambda2 = 0
  and ``contextual_mil=false`` the loss is stvg's, bit for bit (the c-branch is not even run).
* Inference (Sec. 3.5): the stable branch only, ``M^f`` (stvg's ``predict``), so no text features
  are needed at test time. ``inference=context`` (``M^c``) and ``inference=both`` (mean of the two
  maps, A16) are Table 3's ablations and need the text columns.

Diagnostics and gradient probe. ``loss_terms`` gives the engine's once-per-epoch probe
(:func:`grounding.engine.grad_probe`) the terms as they enter Eq. (18): ``mil_f`` (``L^f_MIL``),
``mil_c`` (``L^c_MIL``), ``caos`` (``lambda1 * L_Clust``), ``stran`` and ``ttran`` (each times
``lambda2``); ``grad_groups`` names ``stable`` (``E_f``, stvg's query embedding), ``context``
(``E_c``, and the bi-LSTM under ``context=bilstm``), ``gate`` (``g``), ``visual`` (``E_v``) and
``temporal`` (the temporal module). Keys: ``grad/<term>/<group>``, e.g. ``grad/stran/stable``.
``epoch_end_logs()`` adds, counted over the epoch's training steps (summed over ranks):
``caos_floor_active``, the share of CAOS's class terms whose ``d-_c`` was below ``eps_clust`` (the
floor replaced it: the term is then a pure pull of ``d+_c``), and ``stran_top_prob``, the mean top
probability of ``softmax_n(M^f / tau)`` over real (object, frame)s (``1/N`` = uniform).

What the published ``tau = 1`` does here (measured with this probe, ``bench/mechanism_probe.py``;
generated YouCook2-BB, B = 32, T = 5, N = 20, D = 256, 128-d model): the region cosines lie in a
narrow band, so ``softmax_n(M / tau)`` is nearly uniform (top probability 0.054 against 1/N =
0.05 at initialisation, 0.061 after 3 epochs) and ``0.2 (L_STran + L_TTran)`` sends 1/300 of
``L^f_MIL``'s gradient into the stable encoder; the ratio grows about as 1/tau and reaches 1/10 at
``tau ~ 0.03`` (table in ``search_spaces/scl.py``, whose range now reaches 0.01). CAOS sits on its
floor for 99 % of the class terms at initialisation (92-94 % after 3 epochs) and sends 6x
``L^f_MIL``'s gradient into ``E_f`` (1.2 against 0.19; 2.5x after 3 epochs).

Choices where the paper is silent beyond those labelled: training from scratch (A18, no ``init_from``);
the negative object's generator state is not checkpointed (a resumed trial draws other negatives).
Not implemented: Fig. 2's "reconstruction loss" (A19: not in Eq. 18) and Table 3's fusion
baselines (A20).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data import text_features
from ..data.manifest import DataError
from ..data.text_features import missing_message
from ..losses import log_loss, mil_ranking_loss, symmetric_mil_loss
from .base import DataInfo, check_config, sum_over_ranks, trainable
from .registry import register
from .stvg import STVG, STVGConfig

CONTEXTS = {"minilm": "minilm", "bilstm": None}  # context -> text-feature encoder the shards must come from


@dataclasses.dataclass
class SCLConfig(STVGConfig):
    lambda1: float = 0.4  # weight of L_Clust (CAOS)
    lambda2: float = 0.2  # weight of L_STran + L_TTran (CMAKT)
    tau: float = 1.0  # softmax temperature of the transferred distributions
    eps_clust: float = 0.1  # floor of d- in L_Clust (choice A6)
    caos: bool = True
    spatial_transfer: bool = True
    temporal_transfer: bool = True
    contextual_mil: bool = True  # L^c_MIL
    context: str = "minilm"  # minilm (precomputed token/[CLS] features) | bilstm (GloVe + bi-LSTM)
    lstm_hidden: int = 256  # bi-LSTM hidden size per direction (context=bilstm)
    ctx_normalize: bool = True  # L2-normalise E_c's outputs
    clust_form: str = "ratio"  # ratio (Eq. 5) | shifted ((1 + cos) / 2 in d+ and d-)
    clust_neg_pool: str = "pooled"  # pooled over all other-class concepts | class (mean of per-class means)
    clust_detach_concepts: bool = False
    detach_teacher: bool = False
    ttran_on: str = "logits"  # logits (softmax_t(logits / tau)) | weights (softmax_t(Q / tau))
    inference: str = "stable"  # stable (M^f, the paper) | context (M^c) | both (mean)

    def __post_init__(self):
        super().__post_init__()
        check_config(self, {"lambda1": (0, None), "lambda2": (0, None), "tau": (1e-3, None),
                            "eps_clust": (1e-6, None), "lstm_hidden": (1, None)})
        for name, allowed in (("context", tuple(CONTEXTS)), ("clust_form", ("ratio", "shifted")),
                              ("clust_neg_pool", ("pooled", "class")), ("ttran_on", ("logits", "weights")),
                              ("inference", ("stable", "context", "both"))):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}={getattr(self, name)!r} is not allowed; allowed: {', '.join(allowed)}")


def _masked_max(X: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = X.masked_fill(~mask[..., None], -math.inf).max(dim=1).values
    return torch.where(mask.any(1, keepdim=True), m, torch.zeros_like(m))


@register("scl")
class SCL(STVG):
    task = "wsvog"
    Config = SCLConfig
    prediction_options = ("inference",)  # the paper's Table 3 "Inference" rows: one trained model, three readings

    @classmethod
    def check_data(cls, manifest, root: str, params: dict) -> None:
        """One-line DataError unless the dataset carries the text features this configuration needs."""
        context = params.get("context", SCLConfig.context)
        if context not in CONTEXTS:
            return  # the config's own validation names the allowed values
        text_features.check_encoder(manifest, root, CONTEXTS[context], need_words=context == "bilstm")

    def __init__(self, cfg: SCLConfig, info: DataInfo):
        super().__init__(cfg, info)  # stvg's parameters first: same seed, same initial stvg weights
        E = cfg.embed_dim
        if not info.text:
            raise DataError(missing_message("the dataset"))
        if cfg.context == "minilm":
            want = info.text.get("key")
            if want != "minilm":
                raise DataError(f"the dataset's text features come from {info.text.get('encoder')}; "
                                f"model.context=minilm expects all-MiniLM-L6-v2")
            ctx_in = int(info.dims["D_text"])
            self.lstm = None
        else:
            if info.word_vectors is None:
                raise DataError("model.context=bilstm needs the dataset's words table (GloVe vectors)")
            self.register_buffer("word_vectors", torch.tensor(np.array(info.word_vectors, dtype=np.float32)),
                                 persistent=False)
            self.lstm = nn.LSTM(self.word_vectors.shape[1], cfg.lstm_hidden, batch_first=True, bidirectional=True)
            ctx_in = 2 * cfg.lstm_hidden
        self.ctx_proj = nn.Linear(ctx_in, E)
        nn.init.xavier_uniform_(self.ctx_proj.weight, gain=nn.init.calculate_gain("relu"))
        self.ctx_drop = nn.Dropout(cfg.dropout)
        self.gate = nn.Linear(E, E)  # g of Eq. (8): no activation (choice A8)
        self._neg_gen = torch.Generator().manual_seed(int(info.seed) + 7919)
        # the epoch's diagnostic counts (epoch_end_logs)
        self._counts = dict.fromkeys(("caos_floor", "caos_classes", "stran_top_sum", "stran_top_n"), 0.0)

    # -------------------------------------------------------------- text side
    def embed_stable(self, classes: torch.Tensor) -> torch.Tensor:
        """``E_f`` of class ids (any shape), as in stvg's query embedding."""
        w = self.class_vectors[classes]
        return F.normalize(self.query_drop(torch.relu(self.query_proj(w))), dim=-1)

    def embed_context(self, x: torch.Tensor) -> torch.Tensor:
        y = self.ctx_drop(torch.relu(self.ctx_proj(x)))
        return F.normalize(y, dim=-1) if self.cfg.ctx_normalize else y

    def context_inputs(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """``x_o [B, Kq, D_c]`` and ``x_s [B, D_c]`` for the queries of ``batch``."""
        Kq = batch["queries"].shape[1]
        if self.lstm is None:
            if "text_query" not in batch:
                raise DataError("this batch has no text features (text_query/text_sentence); "
                                "SCL training needs a dataset with them")
            return batch["text_query"][:, :Kq], batch["text_sentence"]
        ids, pos = batch["word_ids"], batch["word_pos"][:, :Kq]
        valid = ids >= 0
        lengths = valid.sum(1).clamp(min=1)
        emb = self.word_vectors[ids.clamp(min=0)] * valid[..., None]
        packed = nn.utils.rnn.pack_padded_sequence(emb, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, _ = self.lstm(packed)
        H, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=ids.shape[1])  # [B, L, 2h]
        vmask = valid[..., None].to(H.dtype)
        mean = (H * vmask).sum(1) / vmask.sum(1).clamp(min=1)
        tok = torch.gather(H, 1, pos.clamp(min=0)[..., None].expand(-1, -1, H.shape[-1]))
        x_o = torch.where((pos >= 0)[..., None], tok, mean[:, None].expand_as(tok))
        return x_o, mean

    def selector(self, X: torch.Tensor, Fq: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``normalise((C_o + C_s) * (g(F) + 1))`` on the real queries, Eq. (8)."""
        U = X * (self.gate(Fq) + 1.0)
        return F.normalize(U, dim=-1) * mask[..., None]

    def negative_contexts(self, X: torch.Tensor, queries: torch.Tensor, mask: torch.Tensor, take=None) -> torch.Tensor:
        """Per (b, k): ``X[b', k']`` with ``b'`` the MIL negative of ``b`` (``take``; default
        ``b+1 mod B``) and ``k'`` a random real object of ``b'`` whose class differs from
        ``queries[b, k]`` (any real object of ``b'`` if none does)."""
        take = take or (lambda t: torch.roll(t, -1, 0))
        Xn, qn, mn = (take(t) for t in (X, queries, mask))
        cand = mn[:, None, :] & (qn[:, None, :] != queries[..., None])  # [B, Kq, Kq']
        cand = torch.where(cand.any(-1, keepdim=True), cand, mn[:, None, :].expand_as(cand))
        r = torch.rand(cand.shape, generator=self._neg_gen).to(X.device)
        k = r.masked_fill(~cand, -1.0).argmax(-1)  # [B, Kq]
        return torch.gather(Xn, 1, k[..., None].expand(-1, -1, X.shape[-1]))

    # ------------------------------------------------------------------ losses
    def caos_loss(self, Co, Cs, queries, mask, counts: dict | None = None) -> torch.Tensor:
        """``L_Clust``, Eq. (5)-(6) (module docstring); ``counts`` (if given) gets the number of class
        terms and of those whose ``d-`` the ``eps_clust`` floor replaced."""
        cfg = self.cfg
        z = (Co - Cs[:, None])[mask]  # [n, E]
        if cfg.clust_detach_concepts:
            z = z.detach()
        y = queries[mask]
        classes, inv = torch.unique(y, return_inverse=True)
        K = len(classes)
        if K < 2:
            return z.sum() * 0.0
        P = self.embed_stable(classes)  # [K, E]
        S = P @ F.normalize(z, dim=-1).T  # [K, n] cosines
        if cfg.clust_form == "shifted":
            S = (1 + S) / 2
        onehot = (inv[None, :] == torch.arange(K, device=inv.device)[:, None]).to(S.dtype)  # [K, n]
        d_pos = (S * onehot).sum(1) / onehot.sum(1)
        if cfg.clust_neg_pool == "pooled":
            neg = 1 - onehot
            d_neg = (S * neg).sum(1) / neg.sum(1)
        else:
            per_class = (S @ onehot.T) / onehot.sum(1)[None, :]  # [K, K]: mean cosine of P_c with class c'
            off = 1 - torch.eye(K, device=S.device, dtype=S.dtype)
            d_neg = (per_class * off).sum(1) / off.sum(1)
        if counts is not None:
            counts["caos_floor"] += float((d_neg.detach() < cfg.eps_clust).sum())
            counts["caos_classes"] += K
        return -(d_pos / d_neg.clamp(min=cfg.eps_clust)).mean()

    @staticmethod
    def _l1(p: torch.Tensor, q: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Per sample: mean of |p - q| over the real objects and the trailing dims ([B, Kq, ...] -> [B])."""
        d = (p - q).abs().flatten(2).mean(-1)  # [B, Kq]
        return (d * mask).sum(1) / mask.sum(1).clamp(min=1)

    def _soft_time(self, G: torch.Tensor) -> torch.Tensor:
        x = G.clamp_min(1e-38).log() if self.cfg.ttran_on == "logits" else G
        return (x / self.cfg.tau).softmax(-1)

    def spatial_distance(self, Mf: torch.Tensor, Mc: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``A_STran`` per sample, Eq. (10)-(11): mean |softmax_n(Mf/tau) - softmax_n(Mc/tau)| ``[B]``."""
        tau = self.cfg.tau
        return self._l1((Mf / tau).softmax(-1), (Mc / tau).softmax(-1), mask)

    def temporal_distance(self, Gf: torch.Tensor, Gc: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``A_TTran`` per sample, Eq. (14), on the softened temporal weights ``[B]``."""
        return self._l1(self._soft_time(Gf), self._soft_time(Gc), mask)

    # --------------------------------------------------------------- interface
    def _terms(self, batch, logs: dict, count: bool = True) -> dict[str, torch.Tensor]:
        """The unweighted loss terms switched on: ``mil_f`` (always), ``mil_c``, ``caos``, ``stran``,
        ``ttran``. ``count``: add to the epoch's diagnostics (a training step)."""
        cfg = self.cfg
        loss_f, parts = self.mil(batch)  # stvg's MIL loss and its pieces, unchanged
        terms = {"mil_f": loss_f}
        logs["loss_mil_f"] = float(loss_f.detach())
        use_clust = cfg.caos and cfg.lambda1 > 0
        use_st = cfg.spatial_transfer and cfg.lambda2 > 0
        use_tt = cfg.temporal_transfer and cfg.lambda2 > 0
        if not (cfg.contextual_mil or use_clust or use_st or use_tt):
            return terms
        V, Fq, mask, queries = parts["V"], parts["Q"], parts["mask"], batch["queries"]
        x_o, x_s = self.context_inputs(batch)
        Co, Cs = self.embed_context(x_o), self.embed_context(x_s)
        X = Co + Cs[:, None]
        Uh = self.selector(X, Fq, mask)
        Qs_c = _masked_max(Uh, mask)
        p_c, Mc, Gc = self.score(Uh, mask, Qs_c, V)
        take = self.negative_take(parts["neg"])  # the f-branch's negatives (stvg's ``negatives`` option)
        if cfg.contextual_mil:
            p_c_neg_video, _, _ = self.score(Uh, mask, Qs_c, take(V))
            p_c_neg_query, _, _ = self.score(take(Uh), take(mask), take(Qs_c), V)
            if cfg.mil_form == "code":
                loss_c = symmetric_mil_loss(p_c, take(p_c), p_c_neg_video, p_c_neg_query, cfg.eta)
            else:
                loss_c = mil_ranking_loss(p_c, p_c_neg_video, p_c_neg_query, cfg.eta)
            terms["mil_c"] = loss_c
            logs["loss_mil_c"] = float(loss_c.detach())
        if use_clust:
            terms["caos"] = self.caos_loss(Co, Cs, queries, mask, self._counts if count else None)
            logs["loss_clust"] = float(terms["caos"].detach())
        if use_st or use_tt:
            Un = self.selector(self.negative_contexts(X, queries, mask, take), Fq, mask)
            if cfg.detach_teacher:
                Mc, Gc = Mc.detach(), Gc.detach()
            if use_st:
                Mn = self.similarity(Un, V)
                if cfg.detach_teacher:
                    Mn = Mn.detach()
                if count:
                    top = (parts["M"].detach() / cfg.tau).softmax(-1).max(-1).values  # [B, Kq, T]
                    self._counts["stran_top_sum"] += float((top * mask[..., None]).sum())
                    self._counts["stran_top_n"] += float(mask.sum()) * top.shape[-1]
                a_pos = self.spatial_distance(parts["M"], Mc, mask)
                a_neg = self.spatial_distance(parts["M"], Mn, mask)
                terms["stran"] = log_loss(a_pos - a_neg, cfg.eta).mean()
                logs["loss_stran"] = float(terms["stran"].detach())
            if use_tt:
                Gn = self.temporal(V.max(dim=2).values, Un, _masked_max(Un, mask))
                if cfg.detach_teacher:
                    Gn = Gn.detach()
                a_pos = self.temporal_distance(parts["G"], Gc, mask)
                a_neg = self.temporal_distance(parts["G"], Gn, mask)
                terms["ttran"] = log_loss(a_pos - a_neg, cfg.eta).mean()
                logs["loss_ttran"] = float(terms["ttran"].detach())
        return terms

    def forward(self, batch):
        cfg = self.cfg
        logs: dict[str, float] = {}
        t = self._terms(batch, logs)
        loss = t["mil_f"]
        if "mil_c" in t:
            loss = loss + t["mil_c"]
        if "caos" in t:
            loss = loss + cfg.lambda1 * t["caos"]
        if "stran" in t or "ttran" in t:
            transfer = 0.0
            for k in ("stran", "ttran"):
                if k in t:
                    transfer = transfer + t[k]
            loss = loss + cfg.lambda2 * transfer
        return loss, logs

    def loss_terms(self, batch) -> dict[str, torch.Tensor]:
        """The terms as they enter Eq. (18): ``mil_f``, ``mil_c``, ``caos`` (times lambda1), ``stran``
        and ``ttran`` (each times lambda2), those switched on; the negative-object generator is left
        as it was and nothing is counted."""
        state = self._neg_gen.get_state()
        try:
            t = self._terms(batch, {}, count=False)
        finally:
            self._neg_gen.set_state(state)
        weight = {"caos": self.cfg.lambda1, "stran": self.cfg.lambda2, "ttran": self.cfg.lambda2}
        return {k: weight[k] * v if k in weight else v for k, v in t.items()}

    def grad_groups(self) -> dict[str, list[nn.Parameter]]:
        """``stable`` (``E_f``), ``context`` (``E_c``, with the bi-LSTM under ``context=bilstm``),
        ``gate`` (``g``), ``visual`` (``E_v``), ``temporal`` (the temporal module)."""
        return {"stable": trainable(self.query_proj), "context": trainable(self.ctx_proj, self.lstm),
                "gate": trainable(self.gate), "visual": trainable(self.visual), "temporal": trainable(self.temporal)}

    @torch.no_grad()
    def epoch_end_logs(self) -> dict[str, float]:
        """``caos_floor_active``: the share of CAOS's class terms, over the epoch's training steps,
        whose ``d-`` was below ``eps_clust`` (the floor replaced it); ``stran_top_prob``: the mean
        top probability of ``softmax_n(M^f / tau)`` (``1/N`` = uniform). Summed over ranks, then reset."""
        names = list(self._counts)
        c = dict(zip(names, sum_over_ranks([self._counts[n] for n in names])))
        self._counts = dict.fromkeys(names, 0.0)
        out = {}
        if c["caos_classes"] > 0:
            out["caos_floor_active"] = c["caos_floor"] / c["caos_classes"]
        if c["stran_top_n"] > 0:
            out["stran_top_prob"] = c["stran_top_sum"] / c["stran_top_n"]
        return out

    @torch.no_grad()
    def predict(self, batch) -> torch.Tensor:
        if self.cfg.inference == "stable":
            return super().predict(batch)  # M^f: no text features needed
        V = self.visual(self.regions(batch))
        Fq, mask, _ = self.embed_queries(batch["queries"])
        x_o, x_s = self.context_inputs(batch)
        X = self.embed_context(x_o) + self.embed_context(x_s)[:, None]
        Mc = self.similarity(self.selector(X, Fq, mask), V)
        return Mc if self.cfg.inference == "context" else (Mc + self.similarity(Fq, V)) / 2
