"""A frozen copy of ``causal`` (with its ``stvg`` backbone, memory bank and losses) as it was at
commit 7525269, before the authors' code options existed. ``test_causal_options.py`` checks that
``Causal`` with ``protocol=joint`` and ``LEGACY`` options computes exactly this model's loss.
Never edit this file: it is the reference, not an implementation."""

# ruff: noqa
from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from grounding.models.base import DataInfo, GroundingModel, ModelConfig, check_config


# ------------------------------------------------------------------ losses.py
def log_loss(x: torch.Tensor, eta: float) -> torch.Tensor:
    """``l(x) = log(1 + exp(x / eta))``, computed stably."""
    return F.softplus(x / eta)


def mil_ranking_loss(p_pos: torch.Tensor, p_neg_video: torch.Tensor, p_neg_query: torch.Tensor,
                     eta: float) -> torch.Tensor:
    """``L_MIL = l(p[V'Q] - p[VQ]) + l(p[VQ'] - p[VQ])``, averaged over the batch."""
    return (log_loss(p_neg_video - p_pos, eta) + log_loss(p_neg_query - p_pos, eta)).mean()


# ------------------------------------------------------------------ memory.py
class MemoryBank(nn.Module):
    def __init__(self, init: torch.Tensor, alpha: float, pool_key: bool, renormalise: bool = True):
        super().__init__()
        self.register_buffer("memory", init.clone().float())
        self.alpha = float(alpha)
        self.pool_key = pool_key  # frames: key = max over proposals
        self.renormalise = renormalise
        self._synced = False

    @property
    def num(self) -> int:
        return self.memory.shape[0]

    def keys_of(self, x: torch.Tensor) -> torch.Tensor:
        """``[M, *entry_shape] -> [M, D]`` normalised keys."""
        k = x.max(dim=-2).values if self.pool_key else x
        return F.normalize(k, dim=-1)

    @torch.no_grad()
    def _sync_once(self) -> None:
        """Take rank 0's entries the first time the bank is used under ``torch.distributed``."""
        if self._synced:
            return
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.broadcast(self.memory, src=0)
        self._synced = True

    @torch.no_grad()
    def nearest(self, x: torch.Tensor) -> torch.Tensor:
        """Index of the most similar entry for each of ``x [M, *entry_shape]``."""
        self._sync_once()
        return (self.keys_of(x) @ self.keys_of(self.memory).T).argmax(dim=-1)

    @torch.no_grad()
    def update(self, replaced: torch.Tensor, index: torch.Tensor) -> None:
        """Momentum update with the vectors ``replaced [M, *entry_shape]`` and their entries."""
        self._sync_once()
        flat = replaced.reshape(replaced.shape[0], -1).float()
        sums = torch.zeros(self.num, flat.shape[1], device=flat.device).index_add_(0, index, flat)
        counts = torch.zeros(self.num, device=flat.device).index_add_(
            0, index, torch.ones_like(index, dtype=torch.float32))
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(sums)
            dist.all_reduce(counts)
        hit = counts > 0
        mean = sums[hit] / counts[hit, None]
        mem = self.memory.view(self.num, -1)
        new = self.alpha * mem[hit] + (1 - self.alpha) * mean
        if self.renormalise:
            new = F.normalize(new.view(-1, *self.memory.shape[1:]), dim=-1).reshape(new.shape)
        mem[hit] = new


# ------------------------------------------------------------------ stvg.py
@dataclasses.dataclass
class LegacySTVGConfig(ModelConfig):
    embed_dim: int = 512  # E, the joint embedding size
    heads: int = 8  # self-attention heads over the proposals of a frame
    dropout: float = 0.1
    eta: float = 0.2  # temperature of the log loss l(x) = log(1 + exp(x / eta))

    def __post_init__(self):
        check_config(self, {"embed_dim": (1, None), "heads": (1, None), "dropout": (0, 0.9),
                            "eta": (1e-4, None)})
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
        V = self.drop(torch.tanh(self.proj(x)) + torch.tanh(a))
        return F.normalize(V, dim=-1).view(*lead, N, E)


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


class LegacySTVG(GroundingModel):
    task = "wsvog"
    Config = LegacySTVGConfig

    def __init__(self, cfg: LegacySTVGConfig, info: DataInfo):
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
        roll = lambda x: torch.roll(x, shifts=-1, dims=0)  # noqa: E731
        p_neg_video, _, _ = self.score(Q, mask, Qs, roll(V))
        p_neg_query, _, _ = self.score(roll(Q), roll(mask), roll(Qs), V)
        loss = mil_ranking_loss(p, p_neg_video, p_neg_query, self.cfg.eta)
        return loss, dict(R=R, V=V, Q=Q, mask=mask, Qs=Qs, p=p, M=M, G=G,
                          p_neg_video=p_neg_video, p_neg_query=p_neg_query)

    def forward(self, batch):
        loss, parts = self.mil(batch)
        return loss, {"loss_mil": float(loss.detach())}

    @torch.no_grad()
    def predict(self, batch) -> torch.Tensor:
        V = self.visual(self.regions(batch))
        Q, _, _ = self.embed_queries(batch["queries"])
        return self.similarity(Q, V)


# ------------------------------------------------------------------ causal.py
@dataclasses.dataclass
class LegacyCausalConfig(LegacySTVGConfig):
    J: int = 100  # region memory bank size
    W: int = 1000  # frame memory bank size
    B_r: int = 10  # top regions per frame forming the spatial content set
    B_f: int = 1  # top frames forming the temporal content set
    alpha: float = 0.9  # momentum of the memory updates
    acl_scale: float = 0.3  # temperature of the ACL log loss
    acl_spatial: bool = True
    acl_temporal: bool = True
    bda: bool = True

    def __post_init__(self):
        super().__post_init__()
        check_config(self, {"J": (1, None), "W": (1, None), "B_r": (1, None), "B_f": (1, None),
                            "alpha": (0, 1), "acl_scale": (1e-4, None)})


def _init_bank(info: DataInfo, num: int, frames: bool, seed: int) -> torch.Tensor:
    T, N, D = info.dims["T"], info.dims["N"], info.dims["D"]
    rng = np.random.default_rng([seed, 31337, int(frames)])
    feats = info.train_features
    if feats is None or len(feats) == 0:
        shape = (num, N, D) if frames else (num, D)
        return F.normalize(torch.from_numpy(rng.standard_normal(shape)).float(), dim=-1)
    n = len(feats)
    rows = rng.integers(0, n, num)
    ts = rng.integers(0, T, num)
    if frames:
        x = np.stack([feats[r, t] for r, t in zip(rows, ts)])
    else:
        ns = rng.integers(0, N, num)
        x = np.stack([feats[r, t, k] for r, t, k in zip(rows, ts, ns)])
    return F.normalize(torch.from_numpy(x.astype(np.float32)), dim=-1)


class LegacyCausal(LegacySTVG):
    task = "wsvog"
    Config = LegacyCausalConfig

    def __init__(self, cfg: LegacyCausalConfig, info: DataInfo):
        super().__init__(cfg, info)
        T, N = info.dims["T"], info.dims["N"]
        if cfg.acl_spatial and cfg.B_r >= N:
            raise ValueError(f"CausalConfig.B_r={cfg.B_r} must be below N={N} proposals")
        if cfg.acl_temporal and cfg.B_f >= T:
            raise ValueError(f"CausalConfig.B_f={cfg.B_f} must be below T={T} frames")
        E = cfg.embed_dim
        if cfg.acl_spatial:
            self.region_bank = MemoryBank(_init_bank(info, cfg.J, False, info.seed), cfg.alpha, pool_key=False)
        if cfg.acl_temporal:
            self.frame_bank = MemoryBank(_init_bank(info, cfg.W, True, info.seed), cfg.alpha, pool_key=True)
        if cfg.bda:
            priors = torch.as_tensor(info.class_priors, dtype=torch.float32)
            self.register_buffer("priors", priors / priors.sum().clamp(min=1e-12), persistent=False)
            self.bda_visual = nn.Linear(E, E)  # Ev
            self.bda_object = nn.Linear(self.class_vectors.shape[1], E)  # Eq

    # ------------------------------------------------------------------- ACL
    @staticmethod
    def _pick_query(mask: torch.Tensor) -> torch.Tensor:
        """One valid query slot per video, uniformly."""
        weights = mask.float() + (~mask.any(1, keepdim=True)).float()
        return torch.multinomial(weights, 1).squeeze(1)

    @staticmethod
    def _content_style(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Indices of the intervened content and style items along the last dim of ``scores``.

        Content = the top-``k`` items; style = the rest. ``m = min(k, n - k)`` items are
        intervened in each: the top ``m`` content items and ``m`` random style items.
        """
        n = scores.shape[-1]
        m = min(k, n - k)
        content_all = scores.topk(k, dim=-1).indices
        content = content_all[..., :m]
        noise = torch.rand(scores.shape, device=scores.device)
        noise.scatter_(-1, content_all, -1.0)  # content items are never style
        style = noise.topk(m, dim=-1).indices
        return content, style

    def _acl_spatial(self, parts, Q1, m1, Qs):
        R = parts["R"]
        B, T, N, D = R.shape
        Mq = parts["M_q"]  # [B, T, N] for the picked query
        content, style = self._content_style(Mq, self.cfg.B_r)
        scores, replaced, index = [], [], []
        for idx in (content, style):
            gather = idx[..., None].expand(*idx.shape, D)
            x = torch.gather(R, 2, gather)  # [B, T, m, D]
            j = self.region_bank.nearest(x.reshape(-1, D))
            Rint = R.scatter(2, gather, self.region_bank.memory[j].view_as(x))
            p, _, _ = self.score(Q1, m1, Qs, self.visual(Rint))
            scores.append(p)
            replaced.append(x.reshape(-1, D))
            index.append(j)
        loss = log_loss(scores[0] - scores[1], self.cfg.acl_scale).mean()
        self.region_bank.update(torch.cat(replaced), torch.cat(index))
        return loss

    def _acl_temporal(self, parts, Q1, m1, Qs):
        R, V = parts["R"], parts["V"]
        B, T, N, D = R.shape
        content, style = self._content_style(parts["G_q"].detach(), self.cfg.B_f)  # [B, m]
        scores, replaced, index = [], [], []
        for idx in (content, style):
            m = idx.shape[1]
            x = torch.gather(R, 1, idx[:, :, None, None].expand(B, m, N, D))  # [B, m, N, D]
            j = self.frame_bank.nearest(x.reshape(-1, N, D))
            new = self.visual(self.frame_bank.memory[j].view(B, m, N, D))
            Vint = V.scatter(1, idx[:, :, None, None].expand(B, m, N, V.shape[-1]), new)
            p, _, _ = self.score(Q1, m1, Qs, Vint)
            scores.append(p)
            replaced.append(x.reshape(-1, N, D))
            index.append(j)
        loss = log_loss(scores[0] - scores[1], self.cfg.acl_scale).mean()
        self.frame_bank.update(torch.cat(replaced), torch.cat(index))
        return loss

    # ------------------------------------------------------------------- BDA
    def deconfounded(self, V: torch.Tensor) -> torch.Tensor:
        """``normalise(sum_k P(o_k) (Ev(V) + Eq(o_k)))`` on the detached embedding ``V``."""
        shift = self.priors @ self.bda_object(self.class_vectors)  # sum_k P(o_k) Eq(o_k)
        return F.normalize(self.bda_visual(V.detach()) + shift, dim=-1)

    def _bda_loss(self, parts):
        Vd = self.deconfounded(parts["V"])
        Q, mask, G = parts["Q"].detach(), parts["mask"], parts["G"].detach()
        roll = lambda x: torch.roll(x, shifts=-1, dims=0)  # noqa: E731
        p = self.video_score(self.similarity(Q, Vd), G, mask)
        # negatives: the next video's embedding under this video's queries (and vice versa);
        # the temporal weights of a negative pair come from the pair's own query side.
        p_nv = self.video_score(self.similarity(Q, roll(Vd)), G, mask)
        p_nq = self.video_score(self.similarity(roll(Q), Vd), roll(G), roll(mask))
        return mil_ranking_loss(p, p_nv, p_nq, self.cfg.eta)

    # -------------------------------------------------------------- interface
    def forward(self, batch):
        loss_mil, parts = self.mil(batch)
        logs = {"loss_mil": float(loss_mil.detach())}
        total = loss_mil
        if self.cfg.acl_spatial or self.cfg.acl_temporal:
            k = self._pick_query(parts["mask"])
            ar = torch.arange(len(k), device=k.device)
            Q1 = parts["Q"][ar, k][:, None]  # [B, 1, E]
            m1 = torch.ones_like(k, dtype=torch.bool)[:, None]
            parts["M_q"] = parts["M"][ar, k].detach()
            parts["G_q"] = parts["G"][ar, k]
            if self.cfg.acl_spatial:
                l_s = self._acl_spatial(parts, Q1, m1, parts["Qs"])
                logs["loss_acl_spatial"] = float(l_s.detach())
                total = total + l_s
            if self.cfg.acl_temporal:
                l_t = self._acl_temporal(parts, Q1, m1, parts["Qs"])
                logs["loss_acl_temporal"] = float(l_t.detach())
                total = total + l_t
        if self.cfg.bda:
            l_b = self._bda_loss(parts)
            logs["loss_bda"] = float(l_b.detach())
            total = total + l_b
        return total, logs

    @torch.no_grad()
    def predict(self, batch) -> torch.Tensor:
        V = self.visual(self.regions(batch))
        Q, _, _ = self.embed_queries(batch["queries"])
        M = self.similarity(Q, V)
        if self.cfg.bda:
            M = M + self.similarity(Q, self.deconfounded(V))
        return M
