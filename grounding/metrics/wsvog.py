"""WSVOG box and query accuracy, macro and micro, as the field computes them.

* One proposal is chosen per (query object, frame): the top-1 by score (ties go to the lowest
  proposal index, as ``torch.argmax`` does).
* A chosen proposal hits an instance when IoU > 0.5 (strict; boxes in pixels, no +1).
  Frames where the instance is absent, occluded or outside are skipped (``gt_valid`` False).
* Box accuracy counts every valid (object instance, frame).
* Query accuracy counts every (segment, class, frame) in which at least one instance of the
  class is valid; it is a hit if any valid instance of that class is hit.
* Micro = hits / counted items; macro = mean, over the classes with at least one counted item,
  of the per-class accuracy. A split with no counted item (no valid GT box) is not scored: its
  metrics are absent from ``compute()``, not 0.

The paper tables' sanity rows come from the same counting: ``random`` is the exact expectation of
a uniformly drawn proposal, ``upper_bound`` picks the best proposal with oracle knowledge.
The accumulator's state is a ``[4, K]`` count array, so ranks are merged by summing it.
"""

from __future__ import annotations

import numpy as np
import torch

IOU_THRESHOLD = 0.5
NAMES = ("box_macro", "box_micro", "query_macro", "query_micro")


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Elementwise-broadcast IoU of boxes ``a[..., 4]`` and ``b[..., 4]`` (x1, y1, x2, y2)."""
    x1 = torch.maximum(a[..., 0], b[..., 0])
    y1 = torch.maximum(a[..., 1], b[..., 1])
    x2 = torch.minimum(a[..., 2], b[..., 2])
    y2 = torch.minimum(a[..., 3], b[..., 3])
    inter = (x2 - x1).clamp(min=0) * (y2 - y1).clamp(min=0)
    area_a = (a[..., 2] - a[..., 0]).clamp(min=0) * (a[..., 3] - a[..., 1]).clamp(min=0)
    area_b = (b[..., 2] - b[..., 0]).clamp(min=0) * (b[..., 3] - b[..., 1]).clamp(min=0)
    union = area_a + area_b - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(inter))


class WsvogAccuracy:
    """Accumulates box/query hits per class over batches; ``compute()`` gives the four numbers."""

    def __init__(self, num_classes: int):
        self.num_classes = num_classes
        self.counts = np.zeros((4, num_classes), np.float64)  # box hit, box n, query hit, query n

    # ----------------------------------------------------------------- update
    def update(self, scores_or_mode, proposals, queries, gt_class, gt_boxes, gt_valid) -> None:
        """Add one batch.

        ``scores_or_mode`` is either proposal scores ``[B, Kq, T, N]`` (top-1 per query/frame),
        or ``"random"`` / ``"upper_bound"`` for the sanity rows. ``proposals [B, T, N, 4]``,
        ``queries [B, Kq]`` (-1 = padding), ``gt_class [B, I]`` (-1 = padding),
        ``gt_boxes [B, I, T, 4]``, ``gt_valid [B, I, T]``.
        """
        proposals = torch.as_tensor(proposals, dtype=torch.float64)
        gt_boxes = torch.as_tensor(gt_boxes, dtype=torch.float64)
        queries = torch.as_tensor(queries)
        gt_class = torch.as_tensor(gt_class)
        B, T, N, _ = proposals.shape
        valid = torch.as_tensor(gt_valid, dtype=torch.bool) & (gt_class >= 0)[..., None]  # [B, I, T]
        # hit[b, i, t, n]: proposal n of frame t overlaps instance i with IoU > 0.5
        hit = box_iou(proposals[:, None], gt_boxes[:, :, :, None]) > IOU_THRESHOLD
        # instance -> its query slot (the queried class of the same id)
        match = (gt_class[:, :, None] == queries[:, None, :]) & (queries[:, None, :] >= 0)  # [B, I, Kq]
        has_query = match.any(-1)
        valid = valid & has_query[..., None]
        slot = match.float().argmax(-1)  # [B, I]
        # same_class[b, k, i]: instance i is of query k's class
        same_class = match.permute(0, 2, 1) & (gt_class[:, None, :] >= 0)
        qvalid = (same_class[..., None] & valid[:, None]).any(2)  # [B, Kq, T]
        # qhit_any[b, k, t, n]: proposal n hits some valid instance of query k's class
        qhit_any = (same_class[..., None, None] & (hit & valid[..., None])[:, None]).any(2)

        if isinstance(scores_or_mode, str):
            if scores_or_mode == "random":
                box_hit = hit.double().mean(-1)
                q_hit = qhit_any.double().mean(-1)
            elif scores_or_mode == "upper_bound":
                box_hit = hit.any(-1).double()
                q_hit = qhit_any.any(-1).double()
            else:
                raise ValueError(f"unknown mode {scores_or_mode!r}; allowed: random, upper_bound")
        else:
            scores = torch.as_tensor(scores_or_mode)
            top = scores.argmax(-1)  # [B, Kq, T]
            top_i = torch.gather(top, 1, slot[..., None].expand(B, slot.shape[1], T))  # [B, I, T]
            box_hit = torch.gather(hit, 3, top_i[..., None])[..., 0].double()
            q_hit = torch.gather(qhit_any, 3, top[..., None])[..., 0].double()

        cls_i = gt_class.clamp(min=0)[..., None].expand_as(valid)
        cls_q = queries.clamp(min=0)[..., None].expand_as(qvalid)
        K = self.num_classes
        for row, cls, values, mask in (
            (0, cls_i, box_hit, valid),
            (1, cls_i, torch.ones_like(box_hit), valid),
            (2, cls_q, q_hit, qvalid),
            (3, cls_q, torch.ones_like(q_hit), qvalid),
        ):
            self.counts[row] += torch.bincount(cls[mask], weights=values[mask], minlength=K)[:K].numpy()

    # ---------------------------------------------------------------- results
    def state(self) -> np.ndarray:
        return self.counts

    def merge(self, state: np.ndarray) -> None:
        self.counts += state

    def compute(self) -> dict[str, float]:
        """The metrics this split has ground truth for: ``box_*`` only if some (instance, frame)
        was counted, ``query_*`` only if some (segment, class, frame) was; a split without any
        valid GT box (a test skeleton, YouCook2-BB's public test file) gets ``{}``, never 0."""
        bh, bn, qh, qn = self.counts
        out = {}
        for name, hits, n in (("box", bh, bn), ("query", qh, qn)):
            seen = n > 0
            if not seen.any():
                continue
            out[f"{name}_micro"] = float(hits.sum() / n.sum())
            out[f"{name}_macro"] = float((hits[seen] / n[seen]).mean())
        return {k: out[k] for k in NAMES if k in out}

    def per_class(self) -> dict[str, np.ndarray]:
        bh, bn, qh, qn = self.counts
        with np.errstate(invalid="ignore", divide="ignore"):
            return {"box": np.where(bn > 0, bh / bn, np.nan), "query": np.where(qn > 0, qh / qn, np.nan)}
