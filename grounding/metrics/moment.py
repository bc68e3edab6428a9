"""Temporal moment localisation: R@1 and R@5 at IoU 0.3/0.5/0.7, and mIoU.

* Predictions are ranked proposals ``[B, K, 2]`` of normalised ``(start, end)``, best first, or
  a dict ``{"proposals": [B, K, 2], "top1": [B, 2]}`` when the single answer is not the head of
  the ranked list (CPL's vote, below). Each proposal is clamped to ``[0, 1]`` (and an inverted
  one, ``end < start``, has length 0) before it is scored; ground-truth moments are normalised by
  the video's duration.
* ``IoU = |P n G| / |P u G|`` on the time axis (0 where the union is empty).
* ``R@1, IoU@m``: the share of queries whose top-1 (``top1`` of a dict, else the first ranked
  proposal) has ``IoU >= m`` (a 1e-6 tolerance absorbs float32 rounding: an IoU of exactly 0.5
  counts for 0.5). ``R@n, IoU@m`` (``n > 1``): the share for which at least one of the first
  ``min(n, K)`` ranked proposals has ``IoU >= m``. This is how CPL's evaluation scores a voting
  model (Zheng et al., "Weakly Supervised Temporal Sentence Grounding with Gaussian-based
  Contrastive Proposal Learning", CVPR 2022; its authors' released evaluation): R@1 on the vote
  winner, R@5 on the first five proposals in reconstruction order, the winner not moved; so R@5
  can be below R@1 when the winner ranks sixth or later by reconstruction.
* ``mIoU``: the mean IoU of the top-1.

The ``random`` row is the exact expectation under uniformly random proposals: ``(s, e)`` is a
pair of independent ``U(0, 1)`` draws sorted (every sub-segment of the video equally likely).
``P(IoU >= m)`` and ``E[IoU]`` are integrated per query in closed form over the end time and by
the midpoint rule (4096 steps, error below 1e-6) over the start time, see
:func:`random_expectation`; ``R@5 = 1 - (1 - R@1)^5`` because five independent draws miss
together. No seed is involved.

The accumulator's state is a count array ``[n, hits x 6, sum IoU]``, so ranks merge by summing.

Also here: :func:`vote_winner` / :func:`vote_order`, the vote-based selection of CPL/CCR, and
:func:`vote_prediction`, the prediction they make from it, so that they are tested with the
metric.
"""

from __future__ import annotations

import numpy as np
import torch

THRESHOLDS = (0.3, 0.5, 0.7)
TOPS = (1, 5)
NAMES = ("r1_iou30", "r1_iou50", "r1_iou70", "r5_iou30", "r5_iou50", "r5_iou70", "miou")
TOL = 1e-6  # float32 predictions: an IoU meant to equal a threshold may land 1e-7 below


def interval_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Elementwise-broadcast IoU of intervals ``a[..., 2]`` and ``b[..., 2]`` (start, end)."""
    inter = (torch.minimum(a[..., 1], b[..., 1]) - torch.maximum(a[..., 0], b[..., 0])).clamp(min=0)
    len_a = (a[..., 1] - a[..., 0]).clamp(min=0)
    len_b = (b[..., 1] - b[..., 0]).clamp(min=0)
    union = len_a + len_b - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(inter))


VOTE_WEIGHTS = ("iou", "uniform")
TOPN_ORDERS = ("rank", "vote")


def vote_winner(props: torch.Tensor, weight: str = "iou") -> torch.Tensor:
    """Index ``[B]`` of the vote winner among proposals ``[B, K, 2]`` (given best first).

    ``votes_i = sum_j IoU(p_i, p_j) c_j``; ``weight="iou"``: ``c_j = IoU(p_0, p_j)`` (agreement
    with the best-reconstructed proposal; CPL's Charades-STA setting), ``weight="uniform"``:
    ``c_j = 1`` (CPL's setting on every other dataset). The winner is ``argmax_i votes_i`` (ties:
    the earlier proposal).
    """
    if weight not in VOTE_WEIGHTS:
        raise ValueError(f"vote weight {weight!r} is not an option; allowed: {', '.join(VOTE_WEIGHTS)}")
    B, K, _ = props.shape
    if K == 1:
        return torch.zeros(B, dtype=torch.long, device=props.device)
    iou = interval_iou(props[:, :, None], props[:, None, :])  # [B, K, K]
    c = iou[:, 0] if weight == "iou" else torch.ones_like(iou[:, 0])  # [B, K]
    votes = (iou * c[:, None, :]).sum(-1)
    # argmax returns the first maximum; the float tolerance keeps near-ties in the given order
    return (votes >= votes.max(dim=1, keepdim=True).values - 1e-9).float().argmax(dim=1)


def vote_order(props: torch.Tensor, vote: bool = True, weight: str = "iou") -> torch.Tensor:
    """Indices ``[B, K]`` ordering proposals ``[B, K, 2]`` (given best first) with the vote winner
    (:func:`vote_winner`) first and the others in their given order. With ``vote=False`` the
    given order is kept."""
    B, K, _ = props.shape
    order = torch.arange(K, device=props.device).expand(B, K)
    if not vote or K == 1:
        return order.clone()
    best = vote_winner(props, weight)
    rest = order[order != best[:, None]].view(B, K - 1)
    return torch.cat([best[:, None], rest], dim=1)


def vote_prediction(props: torch.Tensor, vote: bool = True, weight: str = "iou", topn_order: str = "rank"):
    """The moment prediction of proposals ``[B, K, 2]`` ranked by the model's score (best first).

    ``vote=False``: the ranked proposals themselves. With the vote, ``topn_order="rank"`` (CPL's
    evaluation) gives ``{"proposals": props, "top1": props[winner]}``: R@1 and mIoU score the
    winner, R@n the first ``n`` proposals of the model's ranking; ``topn_order="vote"`` (this
    project's scoring before issue 27) gives the proposals reordered by :func:`vote_order`, the
    winner moved to the front, so R@n scores the winner and the first ``n - 1`` others."""
    if topn_order not in TOPN_ORDERS:
        raise ValueError(f"topn_order {topn_order!r} is not an option; allowed: {', '.join(TOPN_ORDERS)}")
    if not vote:
        return props
    B, K, _ = props.shape
    if topn_order == "vote":
        final = vote_order(props, True, weight)
        return props.gather(1, final[..., None].expand(B, K, 2))
    best = vote_winner(props, weight)
    return {"proposals": props, "top1": props[torch.arange(B, device=props.device), best]}


def random_expectation(moments: np.ndarray, steps: int = 4096, chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Per query: ``P(IoU >= m)`` for each threshold ``[Q, 3]`` and ``E[IoU]`` ``[Q]`` of one
    uniformly random proposal (sorted pair of U(0, 1) draws, density 2 on ``s < e``).

    For a fixed start ``s`` and ground truth ``[a, b]`` the ends with ``IoU >= m`` form the interval
    ``[a + m (b - s), s + (b - a)/m]`` (``s <= a``) or ``[s + m (b - a), a + (b - s)/m]``
    (``a < s < b``), cut to ``e <= 1``; none for ``s >= b``. ``E[IoU | s]`` integrates in closed
    form to ``(b-a)^2 / (2 (b-s)) + (b-a) ln((1-s)/(b-s))`` (``s <= a``) or
    ``(b-s)^2 / (2 (b-a)) + (b-s) ln((1-a)/(b-a))`` (``a < s < b``). The remaining integral over
    ``s`` (a continuous, piecewise smooth integrand) uses the midpoint rule with ``steps`` points.
    """
    moments = np.asarray(moments, np.float64).reshape(-1, 2)
    s = (np.arange(steps) + 0.5) / steps
    hit = np.zeros((len(moments), len(THRESHOLDS)))
    mean = np.zeros(len(moments))
    for c in range(0, len(moments), chunk):
        g = np.clip(moments[c:c + chunk], 0.0, 1.0)
        a, b = g[:, :1], np.maximum(g[:, 1:], g[:, :1])
        glen = b - a
        ok = glen[:, 0] > 0
        before, inside = s <= a, (s > a) & (s < b)
        with np.errstate(divide="ignore", invalid="ignore"):
            for k, m in enumerate(THRESHOLDS):
                lo = np.where(before, a + m * (b - s), s + m * glen)
                hi = np.minimum(np.where(before, s + glen / m, a + (b - s) / m), 1.0)
                width = np.where(before | inside, np.clip(hi - lo, 0.0, None), 0.0)
                hit[c:c + chunk, k] = np.where(ok, 2 * width.mean(1), 0.0)
            e_before = glen ** 2 / (2 * (b - s)) + glen * np.log((1 - s) / (b - s))
            e_inside = (b - s) ** 2 / (2 * glen) + (b - s) * np.log((1 - a) / glen)
            cond = np.where(before, e_before, np.where(inside, e_inside, 0.0))
            mean[c:c + chunk] = np.where(ok, 2 * np.nan_to_num(cond).mean(1), 0.0)
    return hit, mean


class MomentRecall:
    """Accumulates R@{1,5} x IoU{0.3,0.5,0.7} hits and the top-1 IoU sum over batches."""

    def __init__(self, steps: int = 4096):
        self.steps = steps
        self.counts = np.zeros(2 + len(TOPS) * len(THRESHOLDS), np.float64)  # n, hits..., sum IoU

    def update(self, predictions, moments) -> None:
        """Add one batch: ``predictions`` ranked proposals ``[B, K, 2]``, a dict
        ``{"proposals": [B, K, 2], "top1": [B, 2]}`` (module docstring) or ``"random"``;
        ``moments [B, 2]`` the normalised ground truth."""
        gt = torch.as_tensor(moments, dtype=torch.float64).reshape(-1, 2).cpu()
        B = gt.shape[0]
        if isinstance(predictions, str):
            if predictions != "random":
                raise ValueError(f"unknown mode {predictions!r}; allowed: random")
            p1, miou = random_expectation(gt.numpy(), self.steps)
            hits = [p1.sum(0)] + [(1 - (1 - p1) ** n).sum(0) for n in TOPS[1:]]
            self.counts[0] += B
            self.counts[1:-1] += np.concatenate(hits)
            self.counts[-1] += miou.sum()
            return
        top1 = None
        if isinstance(predictions, dict):
            if set(predictions) != {"proposals", "top1"}:
                raise ValueError("a prediction dict needs the keys proposals, top1; got "
                                 f"{', '.join(sorted(predictions))}")
            predictions, top1 = predictions["proposals"], predictions["top1"]
        props = torch.as_tensor(predictions).to(torch.float64).cpu()
        if props.ndim != 3 or props.shape[0] != B or props.shape[2] != 2:
            raise ValueError(f"predictions must be [B={B}, K, 2]; got {tuple(props.shape)}")
        props = props.clamp(0.0, 1.0)
        iou = interval_iou(props, gt[:, None, :])  # [B, K]
        if top1 is None:
            iou1 = iou[:, 0]
        else:
            top1 = torch.as_tensor(top1).to(torch.float64).cpu()
            if top1.shape != (B, 2):
                raise ValueError(f"top1 must be [B={B}, 2]; got {tuple(top1.shape)}")
            iou1 = interval_iou(top1.clamp(0.0, 1.0), gt)
        hits = []
        for n in TOPS:
            best = iou1 if n == 1 else iou[:, :n].max(dim=1).values
            hits.append(torch.stack([(best >= m - TOL).double().sum() for m in THRESHOLDS]))
        self.counts[0] += B
        self.counts[1:-1] += torch.cat(hits).numpy()
        self.counts[-1] += float(iou1.sum())

    # ---------------------------------------------------------------- results
    def state(self) -> np.ndarray:
        return self.counts

    def merge(self, state: np.ndarray) -> None:
        self.counts += state

    def compute(self) -> dict[str, float]:
        n = self.counts[0]
        values = self.counts[1:] / n if n else np.zeros(len(self.counts) - 1)
        return {k: float(v) for k, v in zip(NAMES, values)}
