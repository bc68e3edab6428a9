"""Spatio-temporal tube grounding: vIoU, m_vIoU, vIoU@0.3/0.5 and m_tIoU (WINNER spec §6.2).

Per sentence, on the T sampled frames of its video (``frame_valid``):

* predicted frames ``P = {t : s <= t < e}`` for the predicted half-open segment ``[s, e)``;
* ground-truth frames ``G = {t : gt_box_valid[t]}`` (frames inside the half-open GT segment that
  have a GT box);
* ``vIoU = sum_{t in P n G} IoU(b_t, b^_t) / max(|P u G|, 1)`` with ``b^_t`` the box of the
  predicted proposal at frame t (``batch["boxes"]``) and IoU on continuous coordinates, no +1;
* ``m_viou`` = mean vIoU; ``viou_30`` / ``viou_50`` = the fraction of sentences with
  vIoU **>** 0.3 / 0.5 (strict: a vIoU of exactly 0.3 does not count; a 1e-9 margin keeps float
  rounding of an exact 0.3 from counting);
* ``m_tiou`` = mean ``|P n G| / |P u G|`` (HC-STVG's count form on the sampled frames; the
  sampled grid is the only time axis a batch has).

Every metric is also reported over declarative and interrogative sentences alone (suffixes
``_declarative`` / ``_interrogative``; a form with no sentence reports 0). MLflow metric names may
not contain ``@``, hence ``viou_30`` for vIoU@0.3.

The state is a count array ``[3 groups x (n, sum vIoU, hits@0.3, hits@0.5, sum tIoU)]``, so
ranks merge by summing.

Baseline rows (``update_mode``):

* ``random``: a uniformly drawn segment (every half-open ``[s, e)`` with ``0 <= s < e <= T_v``
  equally likely, ``T_v`` = valid frames) with a uniformly drawn proposal at every frame
  (independently). ``m_viou`` and ``m_tiou`` are the exact expectation (every segment enumerated,
  the per-frame expected IoU is the mean over the N proposals); ``viou_30/50`` are **sampled**:
  ``draws`` [64] random tubes per sentence from a seeded generator.
* ``whole_video``: the segment ``[0, T_v)`` with a uniformly drawn proposal per frame (exact
  means, sampled thresholds as above).
* ``whole_video_best``: ``[0, T_v)`` with the best proposal per frame (the spec's
  ``temporal=full`` anchor with proposal boxes).
* ``upper_bound``: the GT segment with the best proposal per frame (highest IoU with the GT box).
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from .wsvog import box_iou  # the one box IoU of every family

BASE = ("m_viou", "viou_30", "viou_50", "m_tiou")
GROUPS = ("", "_declarative", "_interrogative")
NAMES = tuple(f"{m}{g}" for g in GROUPS for m in BASE)
THRESHOLDS = (0.3, 0.5)
EPS = 1e-9
MODES = ("random", "whole_video", "whole_video_best", "upper_bound")


def sample_viou(segment, proposal, boxes, gt_boxes, gt_box_valid, frame_valid):
    """Per-sentence ``(vIoU, tIoU)`` ``[B]`` float64 of predictions ``segment [B, 2]`` (half-open)
    and ``proposal [B, T]``."""
    boxes = torch.as_tensor(boxes, dtype=torch.float64)
    B, T = boxes.shape[:2]
    seg = torch.as_tensor(segment).long().reshape(B, 2)
    prop = torch.as_tensor(proposal).long().reshape(B, T).clamp(0, boxes.shape[2] - 1)
    fv = torch.as_tensor(frame_valid).bool()
    t = torch.arange(T)
    pred = (t[None] >= seg[:, :1]) & (t[None] < seg[:, 1:]) & fv
    gt = torch.as_tensor(gt_box_valid).bool() & fv
    chosen = boxes.gather(2, prop[:, :, None, None].expand(B, T, 1, 4))[:, :, 0]
    iou = box_iou(chosen, torch.as_tensor(gt_boxes, dtype=torch.float64))
    inter, union = pred & gt, (pred | gt).sum(1).clamp(min=1).double()
    return (iou * inter).sum(1) / union, inter.sum(1).double() / union


@functools.lru_cache(maxsize=None)
def _segments(Tv: int) -> np.ndarray:
    """``[Tv (Tv + 1) / 2, 2]`` every half-open segment ``[s, e)`` of ``Tv`` frames."""
    return np.array([(a, z) for z in range(1, Tv + 1) for a in range(z)], np.int64)


class TubeMetrics:
    """Accumulates the tube metrics over batches, overall and per sentence form."""

    def __init__(self, draws: int = 64, seed: int = 0):
        self.counts = np.zeros((len(GROUPS), 5), np.float64)
        self.draws, self.seed, self._calls = draws, seed, 0

    # ---------------------------------------------------------------- updates
    def _add(self, form: torch.Tensor, viou: np.ndarray, tiou: np.ndarray, hits: np.ndarray) -> None:
        """``viou``/``tiou`` ``[B]`` per-sentence values, ``hits [B, 2]`` per-sentence hit rates."""
        form = np.asarray(torch.as_tensor(form).cpu(), np.int64).reshape(-1)
        for g, sel in enumerate((np.ones_like(form, bool), form == 0, form == 1)):
            self.counts[g] += [sel.sum(), viou[sel].sum(), hits[sel, 0].sum(), hits[sel, 1].sum(), tiou[sel].sum()]

    def update(self, segment, proposal, boxes, gt_boxes, gt_box_valid, frame_valid, form) -> None:
        viou, tiou = sample_viou(segment, proposal, boxes, gt_boxes, gt_box_valid, frame_valid)
        viou, tiou = viou.numpy(), tiou.numpy()
        hits = np.stack([viou > r + EPS for r in THRESHOLDS], 1).astype(np.float64)
        self._add(form, viou, tiou, hits)

    def update_mode(self, mode: str, batch: dict) -> None:
        """A baseline row (module docstring) on one batch."""
        if mode not in MODES:
            raise ValueError(f"unknown baseline {mode!r}; allowed: {', '.join(MODES)}")
        boxes = batch["boxes"].double().cpu()
        B, T, N, _ = boxes.shape
        gtb, gtv = batch["gt_boxes"].double().cpu(), batch["gt_box_valid"].bool().cpu()
        fv = batch["frame_valid"].bool().cpu()
        gtv = gtv & fv
        iou = box_iou(boxes, gtb[:, :, None, :])  # [B, T, N]
        tv = fv.sum(1)  # valid frames are a prefix
        if mode in ("upper_bound", "whole_video_best"):
            seg = batch["gt_segment"].cpu() if mode == "upper_bound" else torch.stack([torch.zeros_like(tv), tv], 1)
            self.update(seg, iou.argmax(2), boxes, gtb, gtv, fv, batch["sentence_form"])
            return
        mean_iou = (iou.mean(2) * gtv).numpy()  # [B, T] expected IoU of a uniform proposal, on G
        g = gtv.numpy().astype(np.float64)
        c_iou = np.concatenate([np.zeros((B, 1)), np.cumsum(mean_iou, 1)], 1)  # [B, T+1]
        c_g = np.concatenate([np.zeros((B, 1)), np.cumsum(g, 1)], 1)
        n_g = g.sum(1)
        viou = np.zeros(B)
        tiou = np.zeros(B)
        for b in range(B):
            Tv = int(tv[b])
            if Tv == 0:
                continue
            if mode == "whole_video":
                ss, ee = np.array([0]), np.array([Tv])
            else:
                ss, ee = _segments(Tv).T
            inter_iou = c_iou[b, ee] - c_iou[b, ss]
            inter_n = c_g[b, ee] - c_g[b, ss]
            union = np.maximum((ee - ss) + n_g[b] - inter_n, 1)
            viou[b] = (inter_iou / union).mean()
            tiou[b] = (inter_n / union).mean()
        hits = self._sampled_hits(mode, iou, gtv, tv)
        self._add(batch["sentence_form"], viou, tiou, hits)

    def _sampled_hits(self, mode: str, iou: torch.Tensor, gtv: torch.Tensor, tv: torch.Tensor) -> np.ndarray:
        """``[B, 2]`` fraction of ``draws`` random tubes with vIoU > 0.3 / 0.5."""
        rng = np.random.default_rng([self.seed, self._calls])
        self._calls += 1
        iou, gtv = iou.numpy(), gtv.numpy()
        B, T, N = iou.shape
        K = self.draws
        out = np.zeros((B, len(THRESHOLDS)))
        t = np.arange(T)
        for b in range(B):
            Tv = int(tv[b])
            if Tv == 0:
                continue
            if mode == "whole_video":
                ss, ee = np.zeros(K, np.int64), np.full(K, Tv)
            else:  # uniform over the Tv(Tv+1)/2 segments
                allpairs = _segments(Tv)
                pick = rng.integers(0, len(allpairs), K)
                ss, ee = allpairs[pick, 0], allpairs[pick, 1]
            props = rng.integers(0, N, (K, T))
            pred = (t[None] >= ss[:, None]) & (t[None] < ee[:, None]) & (t[None] < Tv)
            frame_iou = iou[b, t[None], props]  # [K, T]
            inter = pred & gtv[b][None]
            union = np.maximum((pred | gtv[b][None]).sum(1), 1)
            v = (frame_iou * inter).sum(1) / union
            out[b] = [(v > r + EPS).mean() for r in THRESHOLDS]
        return out

    # ---------------------------------------------------------------- results
    def state(self) -> np.ndarray:
        return self.counts.reshape(-1)

    def merge(self, state: np.ndarray) -> None:
        self.counts += np.asarray(state, np.float64).reshape(self.counts.shape)

    def compute(self) -> dict[str, float]:
        out = {}
        for g, suffix in enumerate(GROUPS):
            n = self.counts[g, 0]
            vals = self.counts[g, 1:] / n if n else np.zeros(4)
            out.update({f"{m}{suffix}": float(v) for m, v in zip(BASE, vals)})
        return out
