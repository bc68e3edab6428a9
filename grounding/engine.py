"""A small training engine shared by orchestration, benchmarks and tests.

``train_one_epoch`` and ``evaluate`` work on one process or under ``torch.distributed`` (each rank
passes its own share of the data): training runs the same number of steps on every rank, and
evaluation sums the metric counts of all ranks, so every sample is counted exactly once.
Seeded runs are deterministic on CPU.
"""

from __future__ import annotations

import dataclasses
import random
import time
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn


@dataclasses.dataclass
class OptimConfig:
    lr: float = 1e-4
    weight_decay: float = 0.0
    batch_size: int = 32  # per worker
    grad_clip: float = 0.0  # max gradient norm; 0 = off

    def __post_init__(self):
        if not self.lr > 0:
            raise ValueError(f"lr={self.lr} is out of range; allowed: > 0")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay={self.weight_decay} is out of range; allowed: >= 0")
        if self.batch_size < 2:
            raise ValueError(f"batch_size={self.batch_size} is out of range; allowed: >= 2 (in-batch negatives)")


OPTIM_KEYS = tuple(f.name for f in dataclasses.fields(OptimConfig))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def distributed() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _all_reduce(t: torch.Tensor, op=None) -> torch.Tensor:
    if distributed()[1] > 1:
        dist.all_reduce(t, op=op or dist.ReduceOp.SUM)
    return t


def make_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


def train_one_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, data: Any, cfg: OptimConfig,
                    epoch: int, seed: int, device: str | torch.device = "cpu",
                    amp: bool = False) -> dict[str, float]:
    """One pass over this rank's shuffled rows in batches of ``cfg.batch_size`` (the last partial
    batch is dropped). ``model`` may be DDP-wrapped. ``amp`` runs the forward pass in bfloat16
    autocast on CUDA. Returns the mean of each logged loss over all ranks' steps, plus ``steps``
    and ``samples_per_s``."""
    device = torch.device(device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp and device.type == "cuda")
    rank, world = distributed()
    model.train()
    order = np.random.default_rng([seed, epoch, rank]).permutation(len(data))
    steps = torch.tensor(len(data) // cfg.batch_size, dtype=torch.long)
    steps = int(_all_reduce(steps, dist.ReduceOp.MIN if world > 1 else None))
    if steps == 0:
        raise ValueError(f"{len(data)} training rows on rank {rank} cannot fill one batch of {cfg.batch_size}")
    totals: dict[str, float] = {}
    t0 = time.perf_counter()
    for s in range(steps):
        batch = data.batch(order[s * cfg.batch_size:(s + 1) * cfg.batch_size], device)
        with autocast:
            loss, logs = model(batch)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss {float(loss)} at epoch {epoch} step {s}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        totals["loss"] = totals.get("loss", 0.0) + float(loss.detach())
        for k, v in logs.items():
            totals[k] = totals.get(k, 0.0) + v
    elapsed = time.perf_counter() - t0
    keys = sorted(totals)
    summed = _all_reduce(torch.tensor([totals[k] for k in keys], dtype=torch.float64))
    out = {k: float(v) / (steps * world) for k, v in zip(keys, summed)}
    out["steps"] = steps
    out["samples_per_s"] = steps * cfg.batch_size * world / max(elapsed, 1e-9)
    return out


def evaluate(model: nn.Module, data: Any, task, info, batch_size: int = 64,
             device: str | torch.device = "cpu") -> dict[str, float]:
    """Score this rank's rows; counts are summed over ranks before the metrics are computed."""
    return accumulate(model, data, task, info, batch_size, device).compute()


@torch.no_grad()
def accumulate(model: nn.Module, data: Any, task, info, batch_size: int = 64,
               device: str | torch.device = "cpu"):
    """The task's metric accumulator over every rank's rows (``compute()``, ``per_class()``)."""
    net = unwrap(model)
    net.eval()
    acc = task.accumulator(info)
    for i in range(0, len(data), batch_size):
        batch = data.batch(np.arange(i, min(i + batch_size, len(data))), device)
        acc.update_batch(net.predict(batch), batch)
    local = np.array(acc.state(), dtype=np.float64)
    total = _all_reduce(torch.from_numpy(local.copy())).numpy()
    acc.merge(total - local)  # local counts + every other rank's
    return acc

