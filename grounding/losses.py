"""Losses shared by the methods."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def log_loss(x: torch.Tensor, eta: float) -> torch.Tensor:
    """``l(x) = log(1 + exp(x / eta))``, computed stably."""
    return F.softplus(x / eta)


def mil_ranking_loss(p_pos: torch.Tensor, p_neg_video: torch.Tensor, p_neg_query: torch.Tensor,
                     eta: float) -> torch.Tensor:
    """``L_MIL = l(p[V'Q] - p[VQ]) + l(p[VQ'] - p[VQ])``, averaged over the batch."""
    return (log_loss(p_neg_video - p_pos, eta) + log_loss(p_neg_query - p_pos, eta)).mean()


def symmetric_mil_loss(p_pos: torch.Tensor, p_neg_own: torch.Tensor, p_neg_video: torch.Tensor,
                       p_neg_query: torch.Tensor, eta: float) -> torch.Tensor:
    """The authors' symmetric MIL form: the positive pair ``p[VQ]`` and the negative's own pair
    ``p[V'Q']`` are each ranked above both cross pairs ``p[V'Q]``, ``p[VQ']``, each half weighted."""
    return (mil_ranking_loss(p_pos, p_neg_video, p_neg_query, eta)
            + mil_ranking_loss(p_neg_own, p_neg_video, p_neg_query, eta)) / 2
