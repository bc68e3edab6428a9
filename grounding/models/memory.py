"""Memory banks for adversarial contrastive learning (ACL).

A bank holds ``num`` entries of shape ``entry_shape`` (a region ``[D]`` or a frame ``[N, D]``).
Lookups compare *keys*: a region's key is itself, a frame's key is its max-pool over proposals;
keys are L2-normalised so the nearest entry is the most cosine-similar one. Updates are
momentum updates, computed for all entries at once (``index_add_``; no loop over entries):

* ``update`` (``causal``'s ``bank_update=project``): one step
  ``m_j <- alpha m_j + (1 - alpha) mean(vectors that were assigned to m_j)``, then renormalised;
* ``update_two_step`` (``bank_update=code``, the authors' rule): for each group of vectors in
  turn (content, then style), the group's mean per entry is L2-normalised, mixed in by one
  momentum step and the entry renormalised, so an entry hit by both groups takes two steps.

``norm`` says what "normalised" means for an entry: ``region`` (default) normalises every
``[D]`` row (each proposal of a frame entry); ``flat`` normalises the whole flattened entry (the
authors' frame bank, whose proposals then have norm about ``1/sqrt(N)``). A region entry is the
same under both. ``drift()`` is the mean cosine of each (flattened) entry to its value at the
previous call (first call: the initial entries), the per-epoch bank-drift diagnostic; called
again without an update in between it repeats its value. Under
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
    def __init__(self, init: torch.Tensor, alpha: float, pool_key: bool, renormalise: bool = True,
                 norm: str = "region"):
        super().__init__()
        if norm not in ("region", "flat"):
            raise ValueError(f"norm={norm!r} is not an option; allowed: region, flat")
        self.register_buffer("memory", init.clone().float())
        # the entries at the last drift(): not in checkpoints (at D = 4096 a 1000-entry frame bank is
        # 328 MB; a checkpoint is written after the epoch's drift(), so it equals memory there and
        # loading sets it from memory, see _load_from_state_dict)
        self.register_buffer("snapshot", init.clone().float(), persistent=False)
        self.alpha = float(alpha)
        self.pool_key = pool_key  # frames: key = max over proposals
        self.renormalise = renormalise
        self.norm = norm
        self._synced = False
        self._updated = False  # since the last drift()
        self._last_drift: float | None = None

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        snap = state_dict.pop(prefix + "snapshot", None)  # a checkpoint written while it was stored
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        src = snap if snap is not None else state_dict.get(prefix + "memory")
        if src is not None and tuple(src.shape) == tuple(self.snapshot.shape):
            with torch.no_grad():
                self.snapshot.copy_(src)

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
            dist.broadcast(self.snapshot, src=0)
        self._synced = True

    def normalise(self, flat: torch.Tensor) -> torch.Tensor:
        """``[M, prod(entry_shape)]`` rows normalised per ``norm``."""
        if self.norm == "flat":
            return F.normalize(flat, dim=-1)
        return F.normalize(flat.view(-1, *self.memory.shape[1:]), dim=-1).reshape(flat.shape)

    def _sums(self, replaced: torch.Tensor, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        flat = replaced.reshape(replaced.shape[0], -1).float()
        sums = torch.zeros(self.num, flat.shape[1], device=flat.device).index_add_(0, index, flat)
        counts = torch.zeros(self.num, device=flat.device).index_add_(
            0, index, torch.ones_like(index, dtype=torch.float32))
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(sums)
            dist.all_reduce(counts)
        return sums, counts

    @torch.no_grad()
    def update_two_step(self, groups: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """The authors' rule: for each ``(replaced, index)`` group in order, every hit entry takes
        ``m_j <- normalise(alpha m_j + (1 - alpha) normalise(mean of the group's vectors at j))``."""
        self._sync_once()
        mem = self.memory.view(self.num, -1)
        for replaced, index in groups:
            sums, counts = self._sums(replaced, index)
            hit = counts > 0
            mean = self.normalise(sums[hit] / counts[hit, None])
            mem[hit] = self.normalise(self.alpha * mem[hit] + (1 - self.alpha) * mean)
        self._updated = True

    @torch.no_grad()
    def drift(self) -> float:
        """Mean cosine of each flattened entry to its value at the previous call; resets the mark.
        A repeated call with no update in between returns the same value again (so two callers at
        one epoch end both see that epoch's drift)."""
        self._sync_once()
        if not self._updated and self._last_drift is not None:
            return self._last_drift
        cos = F.cosine_similarity(self.memory.view(self.num, -1), self.snapshot.view(self.num, -1), dim=-1)
        self.snapshot.copy_(self.memory)
        self._updated, self._last_drift = False, float(cos.mean())
        return self._last_drift

    @torch.no_grad()
    def nearest(self, x: torch.Tensor) -> torch.Tensor:
        """Index of the most similar entry for each of ``x [M, *entry_shape]``."""
        self._sync_once()
        return (self.keys_of(x) @ self.keys_of(self.memory).T).argmax(dim=-1)

    @torch.no_grad()
    def update(self, replaced: torch.Tensor, index: torch.Tensor) -> None:
        """Momentum update with the vectors ``replaced [M, *entry_shape]`` and their entries."""
        self._sync_once()
        sums, counts = self._sums(replaced, index)
        hit = counts > 0
        mean = sums[hit] / counts[hit, None]
        mem = self.memory.view(self.num, -1)
        new = self.alpha * mem[hit] + (1 - self.alpha) * mean
        if self.renormalise:
            new = self.normalise(new)
        mem[hit] = new
        self._updated = True
