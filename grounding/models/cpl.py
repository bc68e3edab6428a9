"""``cpl``: Gaussian-based Contrastive Proposal Learning (Zheng et al., CVPR 2022).

Weakly supervised temporal sentence grounding: the model never sees a moment, only (video, query)
pairs. Shapes per batch: ``B`` queries with their videos' ``L`` clips of ``D`` dims, ``W`` words,
``K`` proposals, ``V`` vocabulary entries, ``d`` hidden units.

Equations.

* Proposal generation. Clip features get a learnable prediction token appended,
  ``F = W_f dropout([x_1 .. x_L, x_pred])``; the query is ``Q = W_w dropout([w_start, g_1 .. g_W])
  + PE`` (``g`` the frozen GloVe vectors, ``PE`` sinusoidal). A transformer encodes ``Q`` (the
  query stack, self-attention only) and a second stack decodes ``F`` attending to it; the output at
  the prediction token gives ``(c_k, w_k) = sigmoid(W_g h_pred)``, ``k = 1..K``.
* Gaussian masks. On ``L_p = L / downsample`` proposal positions ``t_i``,
  ``G_k(t) = exp(-(t - c_k)^2 / (2 (w_k / sigma)^2))`` divided by its maximum (``w_k`` clamped to
  at least 0.01), so ``sigma`` sets how narrow a mask is relative to its proposal.
* Masked query reconstruction. A fraction ``mask_ratio`` of the words (at least one) is replaced
  by a learnable mask token, content words ``exp(1)`` times as likely as function words (the
  authors' code weights nouns/verbs/adjectives/adverbs 2 and the rest 1 before a softmax). For a
  mask ``G`` the proposal stack encodes the clip tokens with self-attention reweighted by ``G``
  and the query stack decodes the masked query attending to them, cross-attention reweighted by
  ``G``: an attention map ``a`` becomes ``a G / sum(a G)``, implemented as the additive logit bias
  ``log(G + 1e-10)``, which is the same thing. ``W_c`` maps the output to word logits; the
  reconstruction loss ``L_ce(P)`` is the label-smoothed cross-entropy over the words.
* Scored proposals: the ``K`` positives ``P_k``; the reference ``P_ref`` = the whole video (no
  mask); two hard negatives per positive, Gaussians centred in the regions left and right of it:
  ``c_left = r (c - w/2)_+ / 2`` and ``c_right = 1 - r (1 - c - w/2)_+ / 2``, each with width
  parameter equal to its distance from the video's edge and standard deviation
  ``width / (sigma / 2)``, where ``r = min(1, step / neg_anneal_steps)^gamma`` grows the negatives
  from the video's edges to the middle of those regions over training.
* Losses, with ``k* = argmin_k L_ce(P_k)``:
  ``L_rec = (L_ce(P_k*) + L_ce(P_ref)) / 2``;
  ``L_ivc = [L_ce(P_k*) - L_ce(P_ref) + alpha_p]_+ + sum_{n in left, right}
  [L_ce(P_k*) - L_ce(P_n,k*) + alpha_n]_+``;
  ``L_div = || G~ G~^T - lambda I ||_F^2`` with ``G~`` the ``K`` masks normalised to sum 1
  (evaluated on ``div_grid`` positions, see below);
  ``L = L_rec + ivc_weight L_ivc + div_weight L_div``.
* Inference: proposals ``[clamp(c - w/2, 0), clamp(c + w/2, 1)]`` ranked by ``L_ce`` (lowest
  first), then the vote: ``votes_i = sum_j IoU(p_i, p_j) c_j`` and the winner ``argmax_i
  votes_i`` (:func:`grounding.metrics.moment.vote_winner`), with ``c_j = IoU(p_0, p_j)`` or
  ``c_j = 1`` (``vote_weight``, below).
* Scoring, as the authors' evaluation does it: R@1 and mIoU on the vote winner, R@5 on the first
  five proposals in reconstruction order, the winner not moved (``predict`` returns
  ``{"proposals", "top1"}``, :func:`grounding.metrics.moment.vote_prediction`).

Published values (Charades-STA config of the authors' code): ``K = 8``, ``sigma = 9``,
``gamma = 0.5``, ``alpha_p`` (their ``margin_1``, beta_1 in the paper) ``= 0.1``, ``alpha_n``
(``margin_2``, beta_2) ``= 0.15``, ``lambda = 0.146``, ``div_weight = 5``, ``ivc_weight = 1``,
``mask_ratio = 1/3``, label smoothing 0.1, dropout 0.1, Adam ``lr = 4e-4``, batch 32; the
authors' runner warms the rate up linearly from 1e-7 over 400 updates, then decays it as
``lr sqrt(400 / step)`` (fairseq ``inverse_sqrt``), and clips the gradient norm at 10: the
engine's ``optim.schedule=warmup_rsqrt``, which ``search_spaces/cpl.py`` fixes for the sweep.
Both reference runners pick their checkpoint on the test split; the project never does
(``bench/moment_benchmark.py`` reports the last and the best-validation epoch).

Choices where the paper is silent, or made for this project (all exposed unless stated):

* Size, for CPU training: ``hidden_dim`` 32 (paper 256), ``heads`` 4, ``layers`` 2 per stack
  (paper 3), ``downsample`` 4 on the generated 64-clip features, so ``L_p = 16`` (the authors keep
  every 4th of 200 clips, ``L_p = 50``; here groups of ``downsample`` clips are *averaged*, so no
  clip's evidence is dropped, and the Gaussian positions are the pooled tokens' centres
  ``(i + 0.5) / L_p`` instead of ``linspace(0, 1, L_p)``). ``hidden_dim=256 layers=3
  downsample=1`` is the paper's size. At the defaults an epoch of the generated Charades-CD
  train split (11071 queries, batch 32) takes about 55 s on one CPU core (ccr: about 67 s).
* As in the authors' code (whose transformer blocks are decoder blocks with a future mask): both
  stacks are shared by the two stages (the query stack encodes the query for proposal generation
  and decodes the masked query for reconstruction; the clip stack does the reverse), the query
  stack is causal and reconstruction is teacher-forced: the input ``[start, w_1 .. w_{W-1}]``
  predicts ``[w_1 .. w_W]`` and the loss covers every word, masked or not. The clip stack is
  causal too (``causal_frames`` True) and clips get no positional encoding (``frame_pos`` False):
  the future mask is what tells positions apart. Post-norm blocks with an FFN of ``2 d``.
* The diversity term's masks are evaluated on their own grid of ``div_grid`` [50] positions
  ``(i + 0.5) / 50``, the authors' 200 clips / 4, not on the model's ``L_p`` (16 here). The
  diagonal of ``G~ G~^T`` is about ``1 / (2 sqrt(pi) s)`` for a mask of standard deviation ``s``
  positions, so ``lambda`` fixes the masks' width *in positions*: on 16 positions the published
  0.146 pushes every width towards the whole video (measured on the generated benchmark: R@1
  IoU 0.7 stayed at 0 for three epochs, against 0.19 after one epoch on 50 positions),
  on 50 it means what it meant in the paper (widths about 0.35 of the video at ``sigma = 9``).
  The term costs nothing on a finer grid: it needs no features.
* Only words that appear in the shifted input (``w_1 .. w_{n-1}``) are candidates for masking;
  the count is ``max(1, floor(n * mask_ratio))`` capped at ``n - 1``.
* The hard negatives enter ``L_ivc`` only at ``k*``. The authors' code decodes them for all
  ``K`` proposals and then keeps ``k*``'s; decoding only ``k*``'s gives the same loss and
  gradients at ``(K + 3) / (3 K + 1)`` of the cost.
* Evaluation masks deterministically (the highest-weighted words, earliest first) so that
  predictions do not depend on the batch; the authors' code draws a fresh random mask at test.
* The negatives' growth is counted in training steps of this model (``neg_anneal_steps``,
  default 3000: about nine epochs of the generated train split at batch 32) because the engine
  does not tell models the epoch; the authors anneal over their 30 epochs.
* ``vote`` (True, the authors' Charades setting) and ``max_words`` (20, as theirs) are exposed.

Test-time options (``model.<name>=``; read by ``predict`` only; default in brackets):

* ``vote_weight`` -- the vote's weights ``c_j``. ``dataset`` [default]: as the authors' runner,
  which weights by ``IoU(p_0, p_j)`` on Charades-STA only (their comment: on Charades many
  proposals overlap little, so their votes are discounted) and votes unweighted on every other
  dataset: ``iou`` when :attr:`DataInfo.dataset` names a Charades set (``charades_sta``,
  ``charades_cd``, the generated ``charades_cd_generated``) or is unknown (None, as in hand-built
  infos; this project's behaviour before the option), ``uniform`` otherwise (ActivityNet
  Captions / ActivityNet-CD). ``iou`` / ``uniform`` force one. Charades-CD, which the authors'
  code never ran, is weighted as Charades-STA, its source.
* ``topn_order`` -- the list R@n (n > 1) scores. ``rank`` [default]: the reconstruction order,
  the winner left where it is (the authors' evaluation). ``vote``: the winner moved to the front
  and the others in reconstruction order, this project's scoring before these options (R@1 and
  mIoU are the same under both; R@5 differs whenever the winner ranks sixth or later).
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn

from ..metrics.moment import TOPN_ORDERS, VOTE_WEIGHTS, vote_prediction
from .base import DataInfo, GroundingModel, ModelConfig, check_choice, check_config
from .registry import register

GAUSS_EPS = 1e-10
VOTE_WEIGHT_OPTIONS = ("dataset", *VOTE_WEIGHTS)


def vote_weighting(option: str, dataset: str | None) -> str:
    """The vote's weights for ``vote_weight=option`` on ``dataset`` (:attr:`DataInfo.dataset`):
    ``iou`` or ``uniform`` as given; ``dataset``: ``iou`` for a Charades set or an unknown
    dataset, ``uniform`` otherwise (see the module docstring)."""
    if option != "dataset":
        return option
    return "iou" if dataset is None or str(dataset).lower().startswith("charades") else "uniform"


@dataclasses.dataclass
class CPLConfig(ModelConfig):
    hidden_dim: int = 32  # d (paper 256; smaller for CPU)
    heads: int = 4
    layers: int = 2  # blocks per stack (paper 3)
    dropout: float = 0.1
    num_props: int = 8  # K
    sigma: float = 9.0  # Gaussian std = width / sigma
    gamma: float = 0.5  # exponent of the negatives' growth
    neg_anneal_steps: int = 3000  # training steps until the negatives reach full size
    mask_ratio: float = 1 / 3
    alpha_p: float = 0.1  # margin: positive vs the whole video (reference)
    alpha_n: float = 0.15  # margin: positive vs each hard negative
    div_lambda: float = 0.146  # lambda of the diversity penalty
    div_weight: float = 5.0
    ivc_weight: float = 1.0
    label_smoothing: float = 0.1
    downsample: int = 4  # clips averaged into one proposal position
    div_grid: int = 50  # positions the diversity term's masks live on (the authors' 200 / 4)
    max_words: int = 20
    vote: bool = True
    vote_weight: str = dataclasses.field(default="dataset", metadata={
        "help": "dataset | iou | uniform: vote weights (dataset: iou on Charades, else uniform)"})
    topn_order: str = dataclasses.field(default="rank", metadata={
        "help": "rank | vote: R@5's list (rank: reconstruction order; vote: winner first)"})
    causal_frames: bool = True
    frame_pos: bool = False

    def __post_init__(self):
        check_config(self, {"hidden_dim": (1, None), "heads": (1, None), "layers": (1, None),
                            "dropout": (0, 0.9), "num_props": (1, None), "sigma": (1e-3, None),
                            "gamma": (0, None), "neg_anneal_steps": (1, None), "mask_ratio": (0, 1),
                            "alpha_p": (0, None), "alpha_n": (0, None), "div_lambda": (0, None),
                            "div_weight": (0, None), "ivc_weight": (0, None),
                            "label_smoothing": (0, 0.99), "downsample": (1, None), "max_words": (2, None),
                            "div_grid": (2, None)})
        check_choice(self, {"vote_weight": VOTE_WEIGHT_OPTIONS, "topn_order": TOPN_ORDERS})
        if self.hidden_dim % self.heads:
            raise ValueError(f"hidden_dim={self.hidden_dim} must be divisible by heads={self.heads}")
        if self.hidden_dim % 2:
            raise ValueError(f"hidden_dim={self.hidden_dim} must be even (sinusoidal positions)")


# ---------------------------------------------------------------------------- building blocks
def sinusoid(n: int, dim: int) -> torch.Tensor:
    """``[n, dim]`` sinusoidal position table (sin | cos halves)."""
    half = dim // 2
    freq = torch.exp(torch.arange(half, dtype=torch.float32) * -(math.log(10000.0) / max(half - 1, 1)))
    ang = torch.arange(n, dtype=torch.float32)[:, None] * freq[None]
    return torch.cat([ang.sin(), ang.cos()], dim=1)


def gauss_bias(g: torch.Tensor | None) -> torch.Tensor | None:
    """Additive attention bias ``[N, 1, 1, Lk]`` equal to reweighting attention by ``g``."""
    return None if g is None else torch.log(g + GAUSS_EPS)[:, None, None, :]


def pad_bias(mask: torch.Tensor) -> torch.Tensor:
    """``[N, 1, 1, Lk]``: 0 for real keys, -inf for padding."""
    bias = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device).masked_fill(~mask, -math.inf)
    return bias[:, None, None, :]


def causal_bias(n: int, device) -> torch.Tensor:
    return torch.full((n, n), -math.inf, device=device).triu(1)[None, None]


def _add(*biases):
    out = None
    for b in biases:
        if b is not None:
            out = b if out is None else out + b
    return out


class Attention(nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(d, d)
        self.kv = nn.Linear(d, 2 * d)
        self.out = nn.Linear(d, d)

    def forward(self, x: torch.Tensor, mem: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        N, Lq, d = x.shape
        h = self.heads
        q = self.q(x).view(N, Lq, h, d // h).transpose(1, 2)
        k, v = self.kv(mem).view(N, mem.shape[1], 2, h, d // h).permute(2, 0, 3, 1, 4)
        if bias is not None:
            bias = bias.to(q.dtype)  # autocast runs q/k/v in bfloat16
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return self.out(a.transpose(1, 2).reshape(N, Lq, d))


class Block(nn.Module):
    """Post-norm transformer block: self-attention, optional cross-attention, FFN (2d)."""

    def __init__(self, d: int, heads: int, dropout: float):
        super().__init__()
        self.self_attn, self.norm1 = Attention(d, heads), nn.LayerNorm(d)
        self.cross_attn, self.norm2 = Attention(d, heads), nn.LayerNorm(d)
        self.ffn = nn.Sequential(nn.Linear(d, 2 * d), nn.ReLU(), nn.Linear(2 * d, d))
        self.norm3 = nn.LayerNorm(d)
        self.drop = nn.Dropout(dropout)

    def forward(self, x, self_bias, mem=None, cross_bias=None):
        x = self.norm1(x + self.drop(self.self_attn(x, x, self_bias)))
        if mem is not None:
            x = self.norm2(x + self.drop(self.cross_attn(x, mem, cross_bias)))
        return self.norm3(x + self.drop(self.ffn(x)))


class Stack(nn.Module):
    def __init__(self, layers: int, d: int, heads: int, dropout: float):
        super().__init__()
        self.blocks = nn.ModuleList(Block(d, heads, dropout) for _ in range(layers))

    def forward(self, x, self_bias=None, mem=None, cross_bias=None):
        for blk in self.blocks:
            x = blk(x, self_bias, mem, cross_bias)
        return x


# ------------------------------------------------------------------------------ equations
def gaussian_mask(center: torch.Tensor, width: torch.Tensor, positions: torch.Tensor, sigma: float) -> torch.Tensor:
    """``G(t) = exp(-(t - c)^2 / (2 (w / sigma)^2))`` normalised by its maximum over ``positions``.

    ``center``/``width`` ``[...]``, ``positions [L_p]`` -> ``[..., L_p]``; widths below 0.01
    are clamped."""
    std = width.clamp(min=1e-2)[..., None] / sigma
    g = torch.exp(-((positions - center[..., None]) ** 2) / (2 * std ** 2))
    return g / g.max(dim=-1, keepdim=True).values.clamp(min=1e-30)


def negative_masks(center, width, positions, sigma: float, r: float):
    """The two hard negatives of each proposal (left and right of it), see the module docs."""
    left_c = (center - width / 2).clamp(min=0) * r * 0.5
    right_c = 1 - (1 - center - width / 2).clamp(min=0) * r * 0.5
    return (gaussian_mask(left_c, left_c, positions, sigma / 2),
            gaussian_mask(right_c, 1 - right_c, positions, sigma / 2))


def diversity_penalty(g: torch.Tensor, lam: float) -> torch.Tensor:
    """``|| G~ G~^T - lambda I ||_F^2`` per video for masks ``g [B, K, L_p]`` (rows sum to 1)."""
    gn = g / g.sum(-1, keepdim=True).clamp(min=1e-12)
    eye = torch.eye(g.shape[1], device=g.device, dtype=g.dtype)
    return ((gn @ gn.transpose(1, 2) - lam * eye) ** 2).sum((1, 2))


def hinge(pos: torch.Tensor, neg: torch.Tensor, margin: float) -> torch.Tensor:
    """``[pos - neg + margin]_+``: the positive must reconstruct better by ``margin``."""
    return (pos - neg + margin).clamp(min=0)


def proposals_from(center: torch.Tensor, width: torch.Tensor) -> torch.Tensor:
    return torch.stack([(center - width / 2).clamp(min=0), (center + width / 2).clamp(max=1)], dim=-1)


# ------------------------------------------------------------------------------------ model
@register("cpl")
class CPL(GroundingModel):
    task = "moment"
    Config = CPLConfig
    prediction_options = ("vote", "vote_weight", "topn_order")

    def __init__(self, cfg: CPLConfig, info: DataInfo):
        super().__init__(cfg, info)
        if info.word_vectors is None:
            raise ValueError("cpl needs the dataset's word vectors (DataInfo.word_vectors)")
        L, D, d = info.dims["L"], info.dims["D"], cfg.hidden_dim
        if L // cfg.downsample < 2:
            raise ValueError(f"downsample={cfg.downsample} leaves fewer than 2 proposal positions of L={L}")
        vectors = torch.as_tensor(info.word_vectors, dtype=torch.float32)
        V, E = vectors.shape
        self.register_buffer("word_vectors", vectors, persistent=False)
        Lp = L // cfg.downsample
        self.register_buffer("positions", (torch.arange(Lp, dtype=torch.float32) + 0.5) / Lp, persistent=False)
        self.register_buffer("div_positions", (torch.arange(cfg.div_grid, dtype=torch.float32) + 0.5) / cfg.div_grid,
                             persistent=False)
        self.register_buffer("word_pos", sinusoid(cfg.max_words + 1, d), persistent=False)
        self.register_buffer("frame_pe", sinusoid(L + 1, d), persistent=False)
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self.frame_fc = nn.Linear(D, d)
        self.word_fc = nn.Linear(E, d)
        self.pred_vec = nn.Parameter(torch.zeros(D))
        self.start_vec = nn.Parameter(torch.zeros(E))
        self.mask_vec = nn.Parameter(torch.zeros(E))
        self.frame_stack = Stack(cfg.layers, d, cfg.heads, cfg.dropout)
        self.query_stack = Stack(cfg.layers, d, cfg.heads, cfg.dropout)
        self.fc_gauss = nn.Linear(d, 2 * cfg.num_props)
        self.fc_comp = nn.Linear(d, V)
        self.drop = nn.Dropout(cfg.dropout)

    # ------------------------------------------------------------------ pieces
    def _frame_bias(self, n: int, device):
        return causal_bias(n, device) if self.cfg.causal_frames else None

    def generate(self, batch) -> dict:
        """Stage 1: the ``K`` Gaussian proposals, and the inputs stage 2 reuses."""
        cfg = self.cfg
        x = batch["features"]
        B, L, _ = x.shape
        ids = batch["words"][:, :cfg.max_words]
        wmask = batch["word_mask"][:, :cfg.max_words]
        frames = torch.cat([x, self.pred_vec.expand(B, 1, -1)], dim=1)
        frames = self.frame_fc(self.drop(frames))
        if cfg.frame_pos:
            frames = frames + self.frame_pe[: L + 1]
        glove = torch.cat([self.start_vec.expand(B, 1, -1), self.word_vectors[ids]], dim=1)
        emb = self.word_fc(self.drop(glove))  # [B, W+1, d], no positions yet
        W = ids.shape[1]
        full_mask = torch.cat([torch.ones_like(wmask[:, :1]), wmask], dim=1)
        q = self.query_stack(emb + self.word_pos[: W + 1], _add(causal_bias(W + 1, x.device), pad_bias(full_mask)))
        h = self.frame_stack(frames, self._frame_bias(L + 1, x.device), q, pad_bias(full_mask))
        cw = torch.sigmoid(self.fc_gauss(h[:, -1])).view(B, cfg.num_props, 2)
        Lp = self.positions.numel()
        clips = frames[:, :L]
        if cfg.frame_pos:
            clips = clips - self.frame_pe[:L]  # pooled tokens get their own positions below
        clips = clips[:, : Lp * cfg.downsample].reshape(B, Lp, cfg.downsample, -1).mean(2)
        if cfg.frame_pos:
            clips = clips + self.frame_pe[:Lp]
        return {"center": cw[..., 0], "width": cw[..., 1], "clips": clips, "emb": emb,
                "ids": ids, "wmask": wmask, "weight": batch["mask_weight"][:, :cfg.max_words]}

    def choose_masked(self, weight: torch.Tensor, wmask: torch.Tensor, train: bool) -> torch.Tensor:
        """``[B, W]`` bool over input positions ``0..W-1`` (0 = start, ``j`` = word ``w_j``):
        ``max(1, floor(n * mask_ratio))`` of the words ``w_1 .. w_{n-1}``, drawn without
        replacement with probability proportional to ``exp(weight)`` (training) or the
        highest-weighted, earliest first (evaluation)."""
        B, W = wmask.shape
        n = wmask.sum(1)
        k = torch.clamp(torch.floor(n.float() * self.cfg.mask_ratio + 1e-6), min=1)
        k = torch.minimum(k, (n - 1).clamp(min=0).float()).long()
        pos = torch.arange(W, device=wmask.device)
        cand = (pos[None, :] >= 1) & (pos[None, :] < n[:, None])
        w_in = torch.cat([torch.zeros_like(weight[:, :1]), weight[:, :-1]], dim=1)  # word w_j at input j
        if train:
            u = torch.rand(B, W, device=wmask.device).clamp(1e-9, 1 - 1e-9)
            key = w_in - torch.log(-torch.log(u))  # Gumbel top-k = sampling without replacement
        else:
            key = w_in - 1e-3 * pos[None, :].float()
        key = key.masked_fill(~cand, -math.inf)
        rank = key.argsort(dim=1, descending=True).argsort(dim=1)
        return (rank < k[:, None]) & cand

    def masked_query(self, parts: dict, train: bool) -> torch.Tensor:
        """The shifted, masked query tokens ``[B, W, d]`` (input of the reconstruction)."""
        emb = parts["emb"]
        W = parts["ids"].shape[1]
        masked = self.choose_masked(parts["weight"], parts["wmask"], train)
        token = self.word_fc(self.mask_vec)
        x = torch.where(masked[..., None], token, emb[:, :W])
        return x + self.word_pos[:W]

    def reconstruct(self, clips, gauss, words_in, wmask) -> torch.Tensor:
        """Word logits ``[N, W, V]`` for clip tokens ``[N, L_p, d]`` under masks ``gauss [N, L_p]``
        (None = the whole video)."""
        gb = gauss_bias(gauss)
        enc = self.frame_stack(clips, _add(self._frame_bias(clips.shape[1], clips.device), gb))
        W = words_in.shape[1]
        out = self.query_stack(words_in, _add(causal_bias(W, words_in.device), pad_bias(wmask)), enc, gb)
        return self.fc_comp(out)

    def nll(self, logits: torch.Tensor, ids: torch.Tensor, wmask: torch.Tensor) -> torch.Tensor:
        """Label-smoothed cross-entropy per sequence, averaged over its words: ``[N, W, V] -> [N]``."""
        ce = F.cross_entropy(logits.flatten(0, 1), ids.flatten(), reduction="none",
                             label_smoothing=self.cfg.label_smoothing).view(ids.shape)
        m = wmask.float()
        return (ce * m).sum(1) / m.sum(1).clamp(min=1)

    def anneal(self) -> float:
        return min(1.0, (int(self.step) + 1) / self.cfg.neg_anneal_steps) ** self.cfg.gamma

    def score_all(self, batch) -> dict:
        """Training pass: reconstruct the masked query from every scored proposal.

        First the ``B x K`` positives (``logits_pos [B K, W, V]``, query-major) and their losses
        ``nll_pos [B, K]``, which select ``best = k*``; then, in one stacked batch
        ``logits_rest [3 B, W, V]``, the left and right negatives of ``k*`` and the reference.
        Only ``k*``'s negatives enter the loss, so they are the only ones decoded."""
        cfg = self.cfg
        parts = self.generate(batch)
        B, K = parts["center"].shape
        words_in = self.masked_query(parts, train=True)
        ids, wmask, clips = parts["ids"], parts["wmask"], parts["clips"]
        ar = torch.arange(B, device=clips.device)
        rep = ar.repeat_interleave(K)
        pos = gaussian_mask(parts["center"], parts["width"], self.positions, cfg.sigma)  # [B, K, Lp]
        logits_pos = self.reconstruct(clips[rep], pos.flatten(0, 1), words_in[rep], wmask[rep])
        nll_pos = self.nll(logits_pos, ids[rep], wmask[rep]).view(B, K)
        best = nll_pos.detach().argmin(dim=1)
        neg1, neg2 = negative_masks(parts["center"][ar, best], parts["width"][ar, best], self.positions,
                                    cfg.sigma, self.anneal())  # [B, Lp] each
        rest = torch.cat([ar, ar, ar])
        gauss = torch.cat([neg1, neg2, torch.ones_like(neg1)])  # the reference has no mask
        logits_rest = self.reconstruct(clips[rest], gauss, words_in[rest], wmask[rest])
        return {**parts, "words_in": words_in, "logits_pos": logits_pos, "nll_pos": nll_pos, "best": best,
                "logits_rest": logits_rest, "rest_query": rest}

    def contrastive(self, pos, neg1, neg2, ref) -> tuple[torch.Tensor, torch.Tensor]:
        """``L_rec`` and ``L_ivc`` from the reconstruction losses ``[B]`` of the selected positive,
        its left and right negatives and the reference."""
        rec = (pos + ref).mean() / 2
        ivc = (hinge(pos, ref, self.cfg.alpha_p) + hinge(pos, neg1, self.cfg.alpha_n)
               + hinge(pos, neg2, self.cfg.alpha_n)).mean()
        return rec, ivc

    def cpl_terms(self, out: dict) -> dict[str, torch.Tensor]:
        """``L_rec``, ``L_ivc`` and ``L_div`` (scalars) of a :meth:`score_all` output."""
        cfg = self.cfg
        B, K = out["center"].shape
        q = out["rest_query"]
        neg1, neg2, ref = self.nll(out["logits_rest"], out["ids"][q], out["wmask"][q]).view(3, B)
        best = out["best"]
        rec, ivc = self.contrastive(out["nll_pos"][torch.arange(B, device=best.device), best], neg1, neg2, ref)
        g = gaussian_mask(out["center"], out["width"], self.div_positions, cfg.sigma)
        return {"rec": rec, "ivc": ivc, "div": diversity_penalty(g, cfg.div_lambda).mean()}

    def cpl_loss(self, out: dict) -> tuple[torch.Tensor, dict[str, float]]:
        cfg = self.cfg
        t = self.cpl_terms(out)
        loss = t["rec"] + cfg.ivc_weight * t["ivc"] + cfg.div_weight * t["div"]
        logs = {f"loss_{k}": float(v.detach()) for k, v in t.items()}
        return loss, logs

    # -------------------------------------------------------------- interface
    def forward(self, batch):
        if batch["features"].shape[0] < 1:
            raise ValueError("empty batch")
        out = self.score_all(batch)
        loss, logs = self.cpl_loss(out)
        if self.training:
            self.step += 1
        return loss, logs

    def rank_scores(self, logits: torch.Tensor, words_in: torch.Tensor, ids: torch.Tensor,
                    wmask: torch.Tensor) -> torch.Tensor:
        """Per-proposal reconstruction loss used for ranking (lower is better): ``[B*K]``."""
        return self.nll(logits, ids, wmask)

    @torch.no_grad()
    def predict(self, batch):
        """The moment prediction (normalised start, end) of the ``K`` proposals ranked by
        reconstruction loss. With the vote and ``topn_order=rank`` [default]: ``{"proposals":
        [B, K, 2] in reconstruction order, "top1": [B, 2] the vote winner}`` (the authors'
        scoring); ``topn_order=vote``: ``[B, K, 2]`` with the winner first; without the vote:
        ``[B, K, 2]`` in reconstruction order. The vote's weights follow ``vote_weight``
        (default ``dataset``: IoU-weighted on Charades, unweighted otherwise)."""
        cfg = self.cfg
        parts = self.generate(batch)
        B, K = parts["center"].shape
        g = gaussian_mask(parts["center"], parts["width"], self.positions, cfg.sigma)
        words_in = self.masked_query(parts, train=False)
        rep = lambda t: t.repeat_interleave(K, dim=0)  # noqa: E731
        logits = self.reconstruct(rep(parts["clips"]), g.flatten(0, 1), rep(words_in), rep(parts["wmask"]))
        score = self.rank_scores(logits, rep(words_in), rep(parts["ids"]), rep(parts["wmask"])).view(B, K)
        order = score.argsort(dim=1, stable=True)
        props = proposals_from(parts["center"], parts["width"]).gather(1, order[..., None].expand(B, K, 2))
        return vote_prediction(props, cfg.vote, vote_weighting(cfg.vote_weight, self.info.dataset), cfg.topn_order)
