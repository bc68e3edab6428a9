"""A small training engine shared by orchestration, benchmarks and tests.

``train_one_epoch`` and ``evaluate`` work on one process or under ``torch.distributed`` (each rank
passes its own share of the data): training runs the same number of steps on every rank, and
evaluation sums the metric counts of all ranks, so every sample is counted exactly once.
Seeded runs are deterministic on CPU.

Optimiser and learning-rate schedule (:class:`OptimConfig`, :func:`make_optimizer`,
:func:`make_scheduler`; the scheduler is stepped once per update inside ``train_one_epoch``), with
``base`` = ``lr``, ``W`` = ``warmup_steps``, ``l0`` = ``warmup_init_lr``, ``s`` = updates done:

* ``constant``: ``base``.
* ``warmup_rsqrt`` (fairseq's ``inverse_sqrt``, as the CPL/CCR runners train): ``l0 + s (base - l0)
  / W`` for ``s < W``, then ``base * sqrt(W / s)``.
* ``warmup_linear``: the same warm-up, then linear decay from ``base`` to 0 at the last update of
  the run (``steps_per_epoch * epochs``).
* ``step`` (torch's StepLR per epoch): ``base * step_gamma ** (epoch // step_epochs)``.

``grad_clip`` > 0 clips the global gradient norm before each update.

Gradient probe (:func:`grad_probe`): a model with ``loss_terms(batch)`` (``stvg``, ``causal``,
``scl``; :class:`~grounding.models.base.GroundingModel`) is probed once per epoch, before the
epoch's first update, on one fixed batch: this rank's first ``batch_size`` training rows (the same
rows every epoch), in training mode, in float32 (no autocast), with the random draws (dropout,
sampled style items, sampled negatives) seeded by (seed, rank) and the global and CUDA generators
restored afterwards, so probing changes nothing about training. For each term, one
``torch.autograd.grad`` on the same forward gives ``grad/<term>/<group>``: the L2 norm of the
gradient the term (weight included) sends into each of ``grad_groups()``' parameter groups; a term
that does not reach a group gives 0. Under ``torch.distributed`` every rank probes its own first
rows (no collective inside) and the logged value is the mean of the ranks' norms (one all-reduce
after the probe).
"""

from __future__ import annotations

import dataclasses
import math
import random
import time
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from .models.base import reduce_over_ranks


@dataclasses.dataclass
class OptimConfig:
    lr: float = 1e-4
    weight_decay: float = 0.0
    batch_size: int = 32  # per worker
    grad_clip: float = 0.0  # max gradient norm; 0 = off
    optimizer: str = "adam"  # adam | adamw (decoupled weight decay)
    schedule: str = "constant"  # constant | step | warmup_rsqrt | warmup_linear (module docstring)
    warmup_steps: int = 0  # updates of linear warm-up (warmup_rsqrt: >= 1)
    warmup_init_lr: float = 1e-7  # learning rate at update 0 of the warm-up
    step_epochs: int = 0  # schedule=step: multiply by step_gamma every step_epochs epochs
    step_gamma: float = 0.1

    def __post_init__(self):
        if not self.lr > 0:
            raise ValueError(f"lr={self.lr} is out of range; allowed: > 0")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay={self.weight_decay} is out of range; allowed: >= 0")
        if self.batch_size < 2:
            raise ValueError(f"batch_size={self.batch_size} is out of range; allowed: >= 2 (in-batch negatives)")
        if self.grad_clip < 0:
            raise ValueError(f"grad_clip={self.grad_clip} is out of range; allowed: >= 0 (0 = off)")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer={self.optimizer!r} is unknown; allowed: {', '.join(OPTIMIZERS)}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule={self.schedule!r} is unknown; allowed: {', '.join(SCHEDULES)}")
        if self.warmup_steps < (1 if self.schedule == "warmup_rsqrt" else 0):
            raise ValueError(f"warmup_steps={self.warmup_steps} is out of range; allowed: "
                             + (">= 1 with schedule=warmup_rsqrt" if self.schedule == "warmup_rsqrt" else ">= 0"))
        if self.warmup_init_lr < 0:
            raise ValueError(f"warmup_init_lr={self.warmup_init_lr} is out of range; allowed: >= 0")
        if self.step_epochs < (1 if self.schedule == "step" else 0):
            raise ValueError(f"step_epochs={self.step_epochs} is out of range; allowed: "
                             + (">= 1 with schedule=step" if self.schedule == "step" else ">= 0"))
        if not 0 < self.step_gamma <= 1:
            raise ValueError(f"step_gamma={self.step_gamma} is out of range; allowed: > 0 and <= 1")


OPTIMIZERS = ("adam", "adamw")
SCHEDULES = ("constant", "step", "warmup_rsqrt", "warmup_linear")


OPTIM_KEYS = tuple(f.name for f in dataclasses.fields(OptimConfig))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def distributed() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def make_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return cls(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def lr_factor(cfg: OptimConfig, step: int, steps_per_epoch: int = 1, epochs: int = 1) -> float:
    """The learning rate after ``step`` updates, as a fraction of ``cfg.lr`` (module docstring)."""
    w, base = cfg.warmup_steps, cfg.lr
    if cfg.schedule == "constant":
        return 1.0
    if cfg.schedule == "step":
        return cfg.step_gamma ** (step // (cfg.step_epochs * steps_per_epoch))
    if step < w:
        return (cfg.warmup_init_lr + step * (base - cfg.warmup_init_lr) / w) / base
    if cfg.schedule == "warmup_rsqrt":
        return math.sqrt(w / step)
    total = steps_per_epoch * epochs  # warmup_linear
    return max(0.0, (total - step) / max(total - w, 1))


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig, steps_per_epoch: int,
                   epochs: int) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-update scheduler for ``cfg.schedule``; its ``state_dict`` (the update count) belongs in
    a checkpoint so that a resumed run continues the schedule."""
    if steps_per_epoch < 1 or epochs < 1:
        raise ValueError(f"steps_per_epoch={steps_per_epoch}, epochs={epochs}: both must be >= 1")
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(cfg, s, steps_per_epoch, epochs))


def steps_per_epoch(data: Any, cfg: OptimConfig) -> int:
    """Updates per epoch: full batches of this rank's rows, the minimum over ranks."""
    steps = torch.tensor(len(data) // cfg.batch_size, dtype=torch.long)
    return int(reduce_over_ranks(steps, dist.ReduceOp.MIN if distributed()[1] > 1 else None))


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


def grad_probe(model: nn.Module, batch: dict[str, torch.Tensor], seed: int = 0) -> dict[str, float]:
    """``{"grad/<term>/<group>": norm}`` for a model with ``loss_terms`` (module docstring): the L2
    norm of ``d term / d params`` over each parameter group of ``model.grad_groups()``, 0.0 where
    the term does not reach the group. ``model`` may be DDP-wrapped (the module itself is probed,
    so DDP's hooks never see it); its train/eval mode is used as it is. The forward runs with the
    CPU (and current CUDA) generator seeded with ``seed`` and both are restored afterwards."""
    net = unwrap(model)
    groups = {name: [p for p in ps if p.requires_grad] for name, ps in net.grad_groups().items()}
    names = list(groups)
    params = [p for n in names for p in groups[n]]
    device = next(iter(net.parameters())).device
    cuda = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    out: dict[str, float] = {}
    with torch.random.fork_rng(devices=cuda), torch.enable_grad():
        torch.default_generator.manual_seed(seed)
        if cuda:
            torch.cuda.manual_seed(seed)
        terms = net.loss_terms(batch)
        for term, loss in terms.items():
            reaches = isinstance(loss, torch.Tensor) and loss.requires_grad and bool(params)
            grads = (torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True) if reaches
                     else [None] * len(params))
            sq, i = [], 0
            for n in names:
                parts = [g.detach().double().pow(2).sum() for g in grads[i:i + len(groups[n])] if g is not None]
                sq.append(torch.stack(parts).sum() if parts else torch.zeros((), dtype=torch.float64, device=device))
                i += len(groups[n])
            norms = torch.stack(sq).sqrt().tolist() if sq else []
            out.update({f"grad/{term}/{n}": float(v) for n, v in zip(names, norms)})
    return out


def _probe_epoch(model: nn.Module, data: Any, cfg: OptimConfig, seed: int, device) -> dict[str, float]:
    """The epoch's gradient probe on this rank's first ``batch_size`` rows, averaged over ranks."""
    rank, world = distributed()
    batch = data.batch(np.arange(min(cfg.batch_size, len(data))), device)
    probe_seed = int(np.random.SeedSequence([seed, rank, 0x6A09]).generate_state(1)[0])
    out = grad_probe(model, batch, probe_seed)
    if world > 1:  # every rank has the same keys (they follow the model's config)
        keys = sorted(out)
        summed = reduce_over_ranks(torch.tensor([out[k] for k in keys], dtype=torch.float64, device=device))
        out = {k: float(v) / world for k, v in zip(keys, summed)}
    return out


def train_one_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, data: Any, cfg: OptimConfig,
                    epoch: int, seed: int, device: str | torch.device = "cpu",
                    amp: bool = False, scheduler: Any = None) -> dict[str, float]:
    """One pass over this rank's shuffled rows in batches of ``cfg.batch_size`` (the last partial
    batch is dropped). ``model`` may be DDP-wrapped. ``amp`` runs the forward pass in bfloat16
    autocast on CUDA. ``scheduler`` (:func:`make_scheduler`) is stepped after every update.
    Returns the mean of each logged loss over all ranks' steps, plus ``steps`` and
    ``samples_per_s``, and with a scheduler ``lr``, the learning rate the next update would use.
    A model with ``epoch_end_logs()`` (``causal``'s bank drift) adds what it returns, once per epoch;
    a model with ``epoch_start(epoch)`` (``vcma``'s E/M phase) is told the epoch before the first step;
    a model with ``loss_terms(batch)`` adds its gradient probe, ``grad/<term>/<group>`` (module
    docstring), taken after ``epoch_start`` and before the first update."""
    device = torch.device(device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp and device.type == "cuda")
    rank, world = distributed()
    model.train()
    if hasattr(unwrap(model), "epoch_start"):
        unwrap(model).epoch_start(epoch)
    order = np.random.default_rng([seed, epoch, rank]).permutation(len(data))
    steps = steps_per_epoch(data, cfg)
    if steps == 0:
        raise ValueError(f"{len(data)} training rows on rank {rank} cannot fill one batch of {cfg.batch_size}")
    probe = _probe_epoch(model, data, cfg, seed, device) if hasattr(unwrap(model), "loss_terms") else {}
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
        if scheduler is not None:
            scheduler.step()
        totals["loss"] = totals.get("loss", 0.0) + float(loss.detach())
        for k, v in logs.items():
            totals[k] = totals.get(k, 0.0) + v
    elapsed = time.perf_counter() - t0
    keys = sorted(totals)
    summed = reduce_over_ranks(torch.tensor([totals[k] for k in keys], dtype=torch.float64))
    out = {k: float(v) / (steps * world) for k, v in zip(keys, summed)}
    out.update(probe)
    out["steps"] = steps
    out["samples_per_s"] = steps * cfg.batch_size * world / max(elapsed, 1e-9)
    if hasattr(unwrap(model), "epoch_end_logs"):
        out.update(unwrap(model).epoch_end_logs())
    if scheduler is not None:
        out["lr"] = float(optimizer.param_groups[0]["lr"])
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
    return merge_ranks(acc)


def merge_ranks(acc):
    """Add every other rank's counts to the metric accumulator ``acc`` (``state()``/``merge()``) in
    place, so that it counts every rank's rows exactly once; returns ``acc``. Every rank must call it
    (an all-reduce); on one process it changes nothing."""
    local = np.array(acc.state(), dtype=np.float64)
    total = reduce_over_ranks(torch.from_numpy(local.copy())).numpy()
    acc.merge(total - local)  # local counts + every other rank's
    return acc

