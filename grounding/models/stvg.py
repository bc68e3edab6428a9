"""``stvg``: the frame-level multiple-instance-learning baseline for WSVOG.

Equations (shapes per video b: T frames, N proposals, Kq queried objects):

* Visual embedding: region features ``R`` are L2-normalised, then
  ``V = normalise(dropout(tanh(W_p R) + tanh(SA(R))))`` where ``SA`` is multi-head
  self-attention over the N proposals of a frame (queries/keys/values projected from R).
* Text embedding: ``Q_k = normalise(dropout(relu(W_q w_k)))`` from the object's word vector
  ``w_k``; ``Q_sent = max_k Q_k`` over the video's queried objects.
* ``M[k, t, n] = Q_k . V[t, n]`` (cosine similarity); ``F[k, t] = max_n M[k, t, n]``.
* Temporal weights ``G[k, :] = softmax_t Temp([Vf_t * Q_k, Vf_t, Q_sent, Q_k])`` with
  ``Vf_t = max_n V[t, n]`` and ``Temp`` = Linear(4E, E) - Tanh - Dropout - Linear(E, 1).
* ``p[VQ] = mean_k sum_t F[k, t] G[k, t]`` over the valid queries.
* ``L_MIL = l(p[V'Q] - p[VQ]) + l(p[VQ'] - p[VQ])``, ``l(x) = log(1 + exp(x / eta))``.

Choices where the paper is silent:

* In-batch negatives (``negatives``): ``next`` (default) pairs video ``b`` with the video and
  the queries of ``b+1 mod B`` (one negative video and one negative sentence per positive, as the
  authors' code samples one negative pair); ``disjoint`` pairs it with the first video after
  ``b`` (cyclically, in the shuffled batch) whose queried-object set shares no object with
  ``b``'s, as the authors' code draws a training segment with a disjoint object set (falling back
  to ``b+1`` when no video of the batch is disjoint). Batches need at least two videos.
* MIL form (``mil_form``): ``project`` (default) is the equation above; ``code`` is the authors'
  symmetric form, ``(l(p[V'Q] - p[VQ]) + l(p[VQ'] - p[VQ]) + l(p[V'Q] - p[V'Q']) +
  l(p[VQ'] - p[V'Q'])) / 2``: the negative's own pair is ranked above both cross pairs too.
* The self-attention projects Q/K/V directly from the D-dim region features (as the authors'
  attention does from 4096-d), which costs half of attending over the E-dim embedding.
* Prediction: top-1 proposal of ``M`` per (query, frame).

Gradient probe (:func:`grounding.engine.grad_probe`): one term, ``mil`` (``L_MIL``), and three
parameter groups, ``visual`` (the proposal encoder: ``W_p`` and the self-attention), ``query``
(``W_q``, the class-word embedding) and ``temporal`` (``Temp``).
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn

from ..losses import mil_ranking_loss, symmetric_mil_loss
from .base import DataInfo, GroundingModel, ModelConfig, check_choice, check_config, trainable
from .registry import register


@dataclasses.dataclass
class STVGConfig(ModelConfig):
    embed_dim: int = 512  # E, the joint embedding size
    heads: int = 8  # self-attention heads over the proposals of a frame
    dropout: float = 0.1
    eta: float = 0.2  # temperature of the log loss l(x) = log(1 + exp(x / eta))
    negatives: str = "next"  # in-batch negative of video b: next = b+1; disjoint = no shared object
    mil_form: str = "project"  # project = one ranking per positive; code = the authors' symmetric form

    def __post_init__(self):
        check_config(self, {"embed_dim": (1, None), "heads": (1, None), "dropout": (0, 0.9),
                            "eta": (1e-4, None)})
        check_choice(self, {"negatives": ("next", "disjoint"), "mil_form": ("project", "code")})
        if self.embed_dim % self.heads:
            raise ValueError(f"embed_dim={self.embed_dim} must be divisible by heads={self.heads}")


class ProposalEncoder(nn.Module):
    """``V = normalise(dropout(tanh(W_p R) + tanh(SA(R))))`` over the proposals of each frame."""

    def __init__(self, D: int, E: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.proj = nn.Linear(D, E)
        self.qkv = nn.Linear(D, 3 * E)
        self.out = nn.Linear(E, E)
        self.drop = nn.Dropout(dropout)

    def forward(self, R: torch.Tensor) -> torch.Tensor:
        *lead, N, D = R.shape
        x = R.reshape(-1, N, D)
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        E = q.shape[-1]
        split = lambda t: t.view(t.shape[0], N, self.heads, E // self.heads).transpose(1, 2)  # noqa: E731
        a = F.scaled_dot_product_attention(split(q), split(k), split(v),
                                           dropout_p=self.dropout if self.training else 0.0)
        a = self.out(a.transpose(1, 2).reshape(-1, N, E))
        V = self.drop(self.fuse(torch.tanh(self.proj(x)) + torch.tanh(a)))
        return F.normalize(V, dim=-1).view(*lead, N, E)

    def fuse(self, h: torch.Tensor) -> torch.Tensor:
        """Hook on the summed branches before dropout and L2 (``causal``'s BDA fusion); identity."""
        return h


class TemporalAttention(nn.Module):
    """``G = softmax_t Temp([Vf * Q, Vf, Q_sent, Q])``."""

    def __init__(self, E: int, dropout: float):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(4 * E, E), nn.Tanh(), nn.Dropout(dropout), nn.Linear(E, 1))

    def forward(self, Vf: torch.Tensor, Q: torch.Tensor, Qs: torch.Tensor) -> torch.Tensor:
        # Vf [B, T, E], Q [B, Kq, E], Qs [B, E] -> G [B, Kq, T]
        B, T, E = Vf.shape
        Kq = Q.shape[1]
        vf = Vf[:, None].expand(B, Kq, T, E)
        q = Q[:, :, None].expand(B, Kq, T, E)
        qs = Qs[:, None, None].expand(B, Kq, T, E)
        logits = self.mlp(torch.cat([vf * q, vf, qs, q], dim=-1)).squeeze(-1)
        return logits.softmax(dim=-1)


@register("stvg")
class STVG(GroundingModel):
    task = "wsvog"
    Config = STVGConfig

    def __init__(self, cfg: STVGConfig, info: DataInfo):
        super().__init__(cfg, info)
        D, E = info.dims["D"], cfg.embed_dim
        vectors = torch.as_tensor(info.class_vectors, dtype=torch.float32)
        self.register_buffer("class_vectors", vectors, persistent=False)
        self.query_proj = nn.Linear(vectors.shape[1], E)
        nn.init.xavier_uniform_(self.query_proj.weight, gain=nn.init.calculate_gain("relu"))
        self.query_drop = nn.Dropout(cfg.dropout)
        self.visual = ProposalEncoder(D, E, cfg.heads, cfg.dropout)
        self.temporal = TemporalAttention(E, cfg.dropout)

    # ------------------------------------------------------------------ parts
    @staticmethod
    def regions(batch) -> torch.Tensor:
        """Normalised region features ``[B, T, N, D]``, the space memory banks live in."""
        return F.normalize(batch["features"], dim=-1)

    def embed_queries(self, queries: torch.Tensor):
        """``Q [B, Kq, E]``, mask ``[B, Kq]``, ``Q_sent [B, E]``."""
        mask = queries >= 0
        w = self.class_vectors[queries.clamp(min=0)]
        Q = F.normalize(self.query_drop(torch.relu(self.query_proj(w))), dim=-1)
        Q = Q * mask[..., None]
        Qs = Q.masked_fill(~mask[..., None], -math.inf).max(dim=1).values
        Qs = torch.where(mask.any(1, keepdim=True), Qs, torch.zeros_like(Qs))
        return Q, mask, Qs

    @staticmethod
    def similarity(Q: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
        """``M [B, Kq, T, N]`` from ``Q [B, Kq, E]`` and ``V [B, T, N, E]``."""
        return torch.einsum("bke,btne->bktn", Q, V)

    @staticmethod
    def video_score(M: torch.Tensor, G: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``p = mean_k sum_t F G`` with ``F = max_n M`` over the valid queries."""
        per_query = (M.max(dim=-1).values * G).sum(-1)  # [B, Kq]
        return (per_query * mask).sum(-1) / mask.sum(-1).clamp(min=1)

    def score(self, Q, mask, Qs, V):
        """``(p [B], M, G)`` for queries and embedded videos paired row by row."""
        M = self.similarity(Q, V)
        G = self.temporal(V.max(dim=2).values, Q, Qs)
        return self.video_score(M, G, mask), M, G

    # ------------------------------------------------------------- interface
    def mil(self, batch):
        """Positive and in-batch negative scores; returns the pieces later terms reuse."""
        if batch["features"].shape[0] < 2:
            raise ValueError("MIL training needs batches of at least two videos")
        R = self.regions(batch)
        V = self.visual(R)
        Q, mask, Qs = self.embed_queries(batch["queries"])
        p, M, G = self.score(Q, mask, Qs, V)
        neg = self.negative_index(batch["queries"])
        take = self.negative_take(neg)
        p_neg_video, _, _ = self.score(Q, mask, Qs, take(V))
        p_neg_query, _, _ = self.score(take(Q), take(mask), take(Qs), V)
        if self.cfg.mil_form == "code":
            loss = symmetric_mil_loss(p, take(p), p_neg_video, p_neg_query, self.cfg.eta)
        else:
            loss = mil_ranking_loss(p, p_neg_video, p_neg_query, self.cfg.eta)
        return loss, dict(R=R, V=V, Q=Q, mask=mask, Qs=Qs, p=p, M=M, G=G, neg=neg,
                          p_neg_video=p_neg_video, p_neg_query=p_neg_query)

    def negative_take(self, neg: torch.Tensor):
        """``x -> x[neg]`` along the batch; ``negatives=next`` rolls (same values and gradients as
        before the option existed)."""
        if self.cfg.negatives == "next":
            return lambda x: torch.roll(x, shifts=-1, dims=0)
        return lambda x: x[neg]

    def negative_index(self, queries: torch.Tensor) -> torch.Tensor:
        """``neg [B]``: the batch row that serves as video ``b``'s negative (see ``negatives``)."""
        B = queries.shape[0]
        ar = torch.arange(B, device=queries.device)
        nxt = (ar + 1) % B
        if self.cfg.negatives == "next":
            return nxt
        valid = queries >= 0
        objects = (F.one_hot(queries.clamp(min=0), self.class_vectors.shape[0]) * valid[..., None]).amax(1)
        shared = (objects.float() @ objects.float().T) > 0  # [B, B]: the two object sets intersect
        offset = (ar[None, :] - ar[:, None]) % B  # how far after b row j comes, cyclically
        cost = torch.where(shared, offset + B, offset)  # disjoint rows first, nearest first
        cost = cost.masked_fill(torch.eye(B, dtype=torch.bool, device=queries.device), 3 * B)
        return cost.argmin(dim=1)

    def forward(self, batch):
        loss, parts = self.mil(batch)
        return loss, {"loss_mil": float(loss.detach())}

    def loss_terms(self, batch) -> dict[str, torch.Tensor]:
        """The loss's one term, ``mil`` (the engine's gradient probe)."""
        loss, _ = self.mil(batch)
        return {"mil": loss}

    def grad_groups(self) -> dict[str, list[nn.Parameter]]:
        """``visual`` (proposal encoder), ``query`` (class-word embedding), ``temporal``."""
        return {"visual": trainable(self.visual), "query": trainable(self.query_proj),
                "temporal": trainable(self.temporal)}

    @torch.no_grad()
    def predict(self, batch) -> torch.Tensor:
        V = self.visual(self.regions(batch))
        Q, _, _ = self.embed_queries(batch["queries"])
        return self.similarity(Q, V)
