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
