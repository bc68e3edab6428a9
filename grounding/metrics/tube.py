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
* ``m_tiou`` = mean tIoU. ``tiou="frame_ids"`` [default], as TubeDETR's VidSTG / HC-STVG
  evaluation computes it (Yang et al., "TubeDETR: Spatio-Temporal Video Grounding with
  Transformers", CVPR 2022; its released evaluators): on the **original frame ids**, the
  predicted ``[s, e)`` becomes ``[frame_ids[s], frame_ids[e - 1] + 1)`` (the first and last
  predicted sampled frames, the end one original frame past the last) and is compared with the
  ground truth ``gt_fids = [tube_start, tube_end)`` as intervals: ``tIoU = |inter| / (|pred| +
  |gt| - |inter|)``, 0 when they do not overlap (or the prediction is empty). The segment is cut
  to the valid frames first (they are a prefix). On a strided grid this is not the sampled-frame
  count: with frames every 4 ids, a prediction of 3 sampled frames covers 9 ids, not 12.
  ``tiou="grid"``: ``|P n G| / |P u G|`` counted on the sampled frames (this project's form
  before issue 27; equal to the frame-id form only on a stride-1 grid whose GT span starts and
  ends on sampled frames).

* ``m_sviou`` (a diagnostic, not one of the field's metrics) = mean over sentences of the spatial
  vIoU ``sum_{t in G} IoU(b_t, b^_t) / max(|G|, 1)``: the vIoU the same boxes would score with the
  ground-truth segment in place of the predicted one, so the temporal error is removed. A gap
  between ``m_viou`` and ``m_sviou`` is the temporal part's; between ``m_sviou`` and the Upper
  Bound's (the best proposal on every GT frame) the spatial part's. It scores the boxes the model
  chose for its own segment (a model that picks one tube over the predicted segment is not asked
  again over the GT one).

Every metric is also reported over declarative and interrogative sentences alone (suffixes
``_declarative`` / ``_interrogative``; a form with no sentence reports 0). MLflow metric names may
not contain ``@``, hence ``viou_30`` for vIoU@0.3.

Where the batches carry ``bow_resolvable`` (per sentence: a bag of its words resolves its target,
:func:`grounding.data.tube.bow_resolvable`; the generated VidSTG since issue 23), every metric is
also reported over the bag-of-words-resolvable sentences (suffix ``_bow``) and over the others,
where only the sentence's structure tells the target apart (suffix ``_structure``). A subset with
no sentence, and so every subset of a dataset without the flag, is **absent** from the results,
never 0.

The state is a count array ``[5 groups x (n, sum vIoU, hits@0.3, hits@0.5, sum tIoU, sum spatial vIoU)]`` (all,
declarative, interrogative, bag-of-words, structure), so ranks merge by summing.

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
  Under ``tiou="frame_ids"`` its m_tIoU is that of the GT segment on the grid against the real
  span, below 1 wherever the grid misses the span's ends (and not the best a grid segment can
  reach).

``m_tiou`` of the baselines is exact under either ``tiou`` (every segment enumerated).
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from .wsvog import box_iou  # the one box IoU of every family

BASE = ("m_viou", "viou_30", "viou_50", "m_tiou", "m_sviou")
GROUPS = ("", "_declarative", "_interrogative", "_bow", "_structure")
SUBSETS = GROUPS[3:]  # reported only where they hold a sentence (module docstring)
NAMES = tuple(f"{m}{g}" for g in GROUPS for m in BASE)
THRESHOLDS = (0.3, 0.5)
EPS = 1e-9
MODES = ("random", "whole_video", "whole_video_best", "upper_bound")
TIOU = ("frame_ids", "grid")


def fid_tiou(pred_start, pred_end, gt_start, gt_end):
    """TubeDETR's tIoU of half-open frame-id intervals (broadcasting numpy arrays; float64):
    ``inter / (pred + gt - inter)``, 0 without overlap."""
    inter = np.minimum(pred_end, gt_end) - np.maximum(pred_start, gt_start)
    union = (pred_end - pred_start) + (gt_end - gt_start) - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(inter > 0, inter / np.where(inter > 0, union, 1), 0.0).astype(np.float64)


def segment_fids(segment, frame_ids, frame_valid):
    """``[B, 2]`` original-frame-id interval ``[frame_ids[s], frame_ids[e - 1] + 1)`` of half-open
    grid segments ``[B, 2]`` cut to the valid prefix; an empty segment gives ``[0, 0)``."""
    seg = np.asarray(torch.as_tensor(segment).long().cpu()).reshape(-1, 2)
    fid = np.asarray(torch.as_tensor(frame_ids).long().cpu())
    tv = np.asarray(torch.as_tensor(frame_valid).bool().cpu()).sum(1)
    s = np.clip(seg[:, 0], 0, None)
    e = np.minimum(seg[:, 1], tv)
    ok = e > s
    rows = np.arange(len(seg))
    T = fid.shape[1]
    start = np.where(ok, fid[rows, np.clip(s, 0, T - 1)], 0)
    end = np.where(ok, fid[rows, np.clip(e - 1, 0, T - 1)] + 1, 0)
    return np.stack([start, end], 1).astype(np.float64)


def sample_viou(segment, proposal, boxes, gt_boxes, gt_box_valid, frame_valid, frame_ids=None, gt_fids=None,
                tiou: str = "frame_ids"):
    """Per-sentence ``(vIoU, tIoU)`` ``[B]`` float64 of predictions ``segment [B, 2]`` (half-open)
    and ``proposal [B, T]``. ``tiou="frame_ids"`` (default) needs the batch's ``frame_ids [B, T]``
    and ``gt_fids [B, 2]``; ``tiou="grid"`` counts sampled frames (module docstring)."""
    return _sentence_scores(segment, proposal, boxes, gt_boxes, gt_box_valid, frame_valid, frame_ids, gt_fids,
                            tiou)[:2]


def _sentence_scores(segment, proposal, boxes, gt_boxes, gt_box_valid, frame_valid, frame_ids, gt_fids, tiou):
    """:func:`sample_viou`'s ``(vIoU, tIoU)`` and the spatial vIoU (``m_sviou``, module docstring: the
    mean IoU of the proposal's boxes over the GT frames, 0 without any), from one box IoU."""
    if tiou not in TIOU:
        raise ValueError(f"tiou={tiou!r} is not an option; allowed: {', '.join(TIOU)}")
    if tiou == "frame_ids" and (frame_ids is None or gt_fids is None):
        raise ValueError("tiou='frame_ids' needs frame_ids and gt_fids (the batch's); pass tiou='grid' "
                         "for the sampled-frame count")
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
    viou = (iou * inter).sum(1) / union
    sviou = (iou * gt).sum(1) / gt.sum(1).clamp(min=1).double()
    if tiou == "grid":
        return viou, inter.sum(1).double() / union, sviou
    p = segment_fids(seg, frame_ids, fv)
    g = np.asarray(torch.as_tensor(gt_fids).long().cpu(), np.float64).reshape(-1, 2)
    return viou, torch.from_numpy(fid_tiou(p[:, 0], p[:, 1], g[:, 0], g[:, 1])), sviou


@functools.lru_cache(maxsize=None)
def _segments(Tv: int) -> np.ndarray:
    """``[Tv (Tv + 1) / 2, 2]`` every half-open segment ``[s, e)`` of ``Tv`` frames."""
    return np.array([(a, z) for z in range(1, Tv + 1) for a in range(z)], np.int64)


class TubeMetrics:
    """Accumulates the tube metrics over batches, overall, per sentence form and per subset (where the
    batches carry ``bow_resolvable``); ``tiou`` is the
    m_tIoU definition (module docstring: ``frame_ids`` [default, TubeDETR's] or ``grid``)."""

    def __init__(self, draws: int = 64, seed: int = 0, tiou: str = "frame_ids"):
        if tiou not in TIOU:
            raise ValueError(f"tiou={tiou!r} is not an option; allowed: {', '.join(TIOU)}")
        self.counts = np.zeros((len(GROUPS), 1 + len(BASE)), np.float64)
        self.draws, self.seed, self._calls, self.tiou = draws, seed, 0, tiou

    # ---------------------------------------------------------------- updates
    def _add(self, form: torch.Tensor, viou: np.ndarray, tiou: np.ndarray, hits: np.ndarray, sviou: np.ndarray,
             bow=None) -> None:
        """``viou``/``tiou``/``sviou`` ``[B]`` per-sentence values, ``hits [B, 2]`` per-sentence hit rates,
        ``bow [B]`` the sentences' ``bow_resolvable`` flags (None: no subsets)."""
        form = np.asarray(torch.as_tensor(form).cpu(), np.int64).reshape(-1)
        groups = [np.ones_like(form, bool), form == 0, form == 1]
        if bow is None:
            groups += [np.zeros_like(form, bool)] * 2
        else:
            bow = np.asarray(torch.as_tensor(bow).cpu(), bool).reshape(-1)
            groups += [bow, ~bow]
        for g, sel in enumerate(groups):
            self.counts[g] += [sel.sum(), viou[sel].sum(), hits[sel, 0].sum(), hits[sel, 1].sum(), tiou[sel].sum(),
                               sviou[sel].sum()]

    def update(self, segment, proposal, boxes, gt_boxes, gt_box_valid, frame_valid, form, frame_ids=None,
               gt_fids=None, bow=None) -> None:
        """One batch of predictions; ``bow [B]`` the batch's ``bow_resolvable`` where it has it."""
        viou, tiou, sviou = (x.numpy() for x in _sentence_scores(
            segment, proposal, boxes, gt_boxes, gt_box_valid, frame_valid, frame_ids, gt_fids, self.tiou))
        hits = np.stack([viou > r + EPS for r in THRESHOLDS], 1).astype(np.float64)
        self._add(form, viou, tiou, hits, sviou, bow)

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
            self.update(seg, iou.argmax(2), boxes, gtb, gtv, fv, batch["sentence_form"], batch.get("frame_ids"),
                        batch.get("gt_fids"), batch.get("bow_resolvable"))
            return
        if self.tiou == "frame_ids":
            if batch.get("frame_ids") is None or batch.get("gt_fids") is None:
                raise ValueError("tiou='frame_ids' needs the batch's frame_ids and gt_fids")
            fids = batch["frame_ids"].long().cpu().numpy()
            gfids = batch["gt_fids"].long().cpu().numpy().astype(np.float64)
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
            if self.tiou == "grid":
                tiou[b] = (inter_n / union).mean()
            else:
                tiou[b] = fid_tiou(fids[b, ss], fids[b, ee - 1] + 1, gfids[b, 0], gfids[b, 1]).mean()
        hits = self._sampled_hits(mode, iou, gtv, tv)
        sviou = mean_iou.sum(1) / np.maximum(n_g, 1)  # a uniform proposal on every GT frame
        self._add(batch["sentence_form"], viou, tiou, hits, sviou, batch.get("bow_resolvable"))

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
            if suffix in SUBSETS and not n:
                continue
            vals = self.counts[g, 1:] / n if n else np.zeros(len(BASE))
            out.update({f"{m}{suffix}": float(v) for m, v in zip(BASE, vals)})
        return out
