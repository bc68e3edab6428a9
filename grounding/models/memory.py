"""Memory banks for adversarial contrastive learning (ACL).

A bank holds ``num`` entries of shape ``entry_shape`` (a region ``[D]`` or a frame ``[N, D]``).
Lookups compare *keys*: a region's key is itself, a frame's key is its max-pool over proposals;
keys are L2-normalised so the nearest entry is the most cosine-similar one. Updates are
momentum updates ``m_j <- alpha m_j + (1 - alpha) mean(vectors that were replaced by m_j)``,
computed for all entries at once (``index_add_``; no loop over entries). Under
``torch.distributed`` the sums and counts are all-reduced first, so every rank applies the same
update and the banks stay identical. They also start identical: each rank draws its initial
entries from its own share of the training data, so on first use every rank takes rank 0's
entries (a broadcast on the bank's device; DDP with ``broadcast_buffers=False`` does not sync
buffers).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


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
