"""``tubemil``: the tube family's baseline (this project's own design; no paper).

Per-frame multiple-instance learning over the proposals for the boxes, and a temporal scorer on
the frame features for the segment, trained from video-sentence pairs alone (the GT tubes are
never read in training). Shapes per sentence b: T frames, N proposals, L tokens, E embedding.

* Words: frozen GloVe rows ``w_l`` (``DataInfo.word_vectors``); ``w_bar`` = mean over the real
  tokens, ``w_subj`` = the word at ``subject_pos`` (``w_bar`` when it is -1).
* Queries: ``q_box = normalise(tanh(W_b [w_subj; w_bar]))`` and
  ``q_time = normalise(tanh(W_t w_bar))`` (dropout on the inputs).
* Visual: ``V[t, n] = normalise(tanh(W_r r[t, n]))`` for the region features,
  ``U[t] = normalise(tanh(W_f f[t]))`` for the frame features.
* Scores of sentence b against video c (every pair of the batch):
  ``s[b, c, t, n] = q_box_b . V_c[t, n]``, the per-frame MIL score ``a[b, c, t] = max_n s``,
  the temporal score ``z[b, c, t] = q_time_b . U_c[t]``, and the temporal gate
  ``g = softmax_t(z / tau)`` over the valid frames.
* Video-sentence scores: ``p_box[b, c] = sum_t g a`` (the boxes, where the sentence happens) and
  ``p_time[b, c] = tau * logsumexp_t(z / tau)`` (the best-matching frames).
* Loss: InfoNCE with temperature ``tau`` over the batch in both directions (sentence -> videos,
  video -> sentences) for each score, ``L = L(p_box) + lambda_time * L(p_time)``. Pairs of a
  sentence with another sentence's copy of *its own* video (a video has ~2 sentences) are
  masked out of the denominators: they are not negatives.

Inference:

* Segment: the per-video standardised temporal score ``z' = (z - mean_t z) / std_t z`` on the
  valid frames; the predicted half-open segment ``[s, e)`` maximises
  ``sum_{t in [s, e)} (z'_t - seg_threshold)`` (every segment enumerated, prefix sums); a video
  where no frame exceeds the threshold predicts its best frame alone.
* Boxes: ``boxes=frame`` (default) takes ``argmax_n s[b, b, t, n]`` per frame (per-frame MIL);
  ``boxes=tube`` takes the linked tube (``batch["tubes"]``) with the highest mean ``s`` over the
  predicted segment and follows it.

Choices: there is no publication; everything above is this project's design for a simple,
honest baseline (the families' MIL + temporal-attention pattern of ``stvg``, with the InfoNCE
objective of the moment/WSVOG methods). The defaults in :class:`TubeMILConfig` are the PAPER
point of ``search_spaces/tubemil.py``.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from .base import DataInfo, GroundingModel, ModelConfig, check_config
from .registry import register

BOX_MODES = ("frame", "tube")


@dataclasses.dataclass
class TubeMILConfig(ModelConfig):
    embed_dim: int = 128  # E
    dropout: float = 0.1
    tau: float = 0.1  # InfoNCE and temporal-gate temperature
    lambda_time: float = 1.0  # weight of the temporal InfoNCE term
    seg_threshold: float = 0.5  # standardised temporal score a frame needs to join the segment
    boxes: str = "frame"  # frame: per-frame argmax; tube: the best linked tube over the segment

    def __post_init__(self):
        check_config(self, {"embed_dim": (1, None), "dropout": (0, 0.9), "tau": (1e-3, None),
                            "lambda_time": (0, None), "seg_threshold": (-3, 3)})
        if self.boxes not in BOX_MODES:
            raise ValueError(f"boxes={self.boxes!r} is unknown; allowed: {', '.join(BOX_MODES)}")


def best_segment(score: torch.Tensor, valid: torch.Tensor, threshold: float) -> torch.Tensor:
    """``[B, 2]`` half-open segments maximising ``sum_{[s, e)} (z' - threshold)`` with ``z'`` the
    per-row standardised ``score [B, T]`` over the ``valid`` frames."""
    B, T = score.shape
    v = valid.float()
    n = v.sum(1, keepdim=True).clamp(min=1)
    mean = (score * v).sum(1, keepdim=True) / n
    std = (((score - mean) ** 2 * v).sum(1, keepdim=True) / n).sqrt().clamp(min=1e-6)
    gain = torch.where(valid, (score - mean) / std - threshold, torch.full_like(score, -1e4))
    c = torch.cat([torch.zeros(B, 1, dtype=gain.dtype, device=gain.device), gain.cumsum(1)], 1)  # [B, T+1]
    total = c[:, None, :] - c[:, :, None]  # [B, s, e] = sum over [s, e)
    idx = torch.arange(T + 1, device=score.device)
    total = total.masked_fill(~(idx[:, None] < idx[None, :])[None], float("-inf"))
    flat = total.reshape(B, -1).argmax(1)
    return torch.stack([flat // (T + 1), flat % (T + 1)], 1)


@register("tubemil")
class TubeMIL(GroundingModel):
    task = "tube"
    Config = TubeMILConfig

    def __init__(self, cfg: TubeMILConfig, info: DataInfo):
        super().__init__(cfg, info)
        E = cfg.embed_dim
        words = torch.as_tensor(info.word_vectors, dtype=torch.float32)
        self.register_buffer("word_vectors", words, persistent=False)
        W = words.shape[1]
        self.q_box = nn.Linear(2 * W, E)
        self.q_time = nn.Linear(W, E)
        self.region = nn.Linear(info.dims["Dr"], E)
        self.frame = nn.Linear(info.dims["Df"], E)
        self.drop = nn.Dropout(cfg.dropout)

    # ------------------------------------------------------------------ parts
    def queries(self, batch):
        tok, mask = batch["tokens"], batch["token_mask"]
        w = self.word_vectors[tok] * mask[..., None]
        w_bar = w.sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
        pos = batch["subject_pos"]
        w_subj = w.gather(1, pos.clamp(min=0)[:, None, None].expand(-1, 1, w.shape[-1]))[:, 0]
        w_subj = torch.where((pos >= 0)[:, None], w_subj, w_bar)
        qb = F.normalize(torch.tanh(self.q_box(self.drop(torch.cat([w_subj, w_bar], -1)))), dim=-1)
        qt = F.normalize(torch.tanh(self.q_time(self.drop(w_bar))), dim=-1)
        return qb, qt

    def visual(self, batch):
        V = F.normalize(torch.tanh(self.region(self.drop(batch["region_feats"]))), dim=-1)
        U = F.normalize(torch.tanh(self.frame(self.drop(batch["frame_feats"]))), dim=-1)
        return V, U

    def pair_scores(self, qb, qt, V, U, valid):
        """``s [B, C, T, N]``, ``z [B, C, T]`` and the scores ``p_box, p_time [B, C]``."""
        s = torch.einsum("be,ctne->bctn", qb, V)
        a = s.max(-1).values
        z = torch.einsum("be,cte->bct", qt, U)
        zm = (z / self.cfg.tau).masked_fill(~valid[None], float("-inf"))
        g = zm.softmax(-1)
        p_box = (g * a).sum(-1)
        p_time = self.cfg.tau * torch.logsumexp(zm, -1)
        return s, z, p_box, p_time

    def _nce(self, p: torch.Tensor, same: torch.Tensor) -> torch.Tensor:
        eye = torch.eye(len(p), dtype=torch.bool, device=p.device)
        logits = (p / self.cfg.tau).masked_fill(same & ~eye, float("-inf"))
        target = torch.arange(len(p), device=p.device)
        return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))

    # ------------------------------------------------------------- interface
    def forward(self, batch):
        if batch["tokens"].shape[0] < 2:
            raise ValueError("tubemil trains on in-batch negatives: batches need at least two sentences")
        qb, qt = self.queries(batch)
        V, U = self.visual(batch)
        _, _, p_box, p_time = self.pair_scores(qb, qt, V, U, batch["frame_valid"])
        vid = batch["video_index"]
        same = vid[:, None] == vid[None, :]
        l_box, l_time = self._nce(p_box, same), self._nce(p_time, same)
        loss = l_box + self.cfg.lambda_time * l_time
        return loss, {"loss_box": float(l_box.detach()), "loss_time": float(l_time.detach())}

    @torch.no_grad()
    def predict(self, batch):
        qb, qt = self.queries(batch)
        V, U = self.visual(batch)
        valid = batch["frame_valid"]
        s = torch.einsum("be,btne->btn", qb, V)  # each sentence against its own video
        z = torch.einsum("be,bte->bt", qt, U)
        segment = best_segment(z, valid, self.cfg.seg_threshold)
        if self.cfg.boxes == "frame":
            proposal = s.argmax(-1)
        else:
            tubes = batch["tubes"]  # [B, M, T]
            B, M, T = tubes.shape
            ts = s.gather(2, tubes.transpose(1, 2)).transpose(1, 2)  # [B, M, T] score of tube m at t
            t = torch.arange(T, device=s.device)
            inside = ((t >= segment[:, :1]) & (t < segment[:, 1:]) & valid).float()[:, None]
            best = ((ts * inside).sum(-1) / inside.sum(-1).clamp(min=1)).argmax(1)
            proposal = tubes[torch.arange(B), best]
        return {"segment": segment, "proposal": proposal, "scores": s, "temporal": z}
