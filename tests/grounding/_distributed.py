"""Worker of the 2-process gloo tests in ``test_engine.py`` (spawned: must be importable)."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

SMALL = {"embed_dim": 32, "heads": 4}
CAUSAL = {**SMALL, "J": 16, "W": 16}


def worker(rank: int, world: int, root: str, out_dir: str, port: int) -> None:
    from torch.nn.parallel import DistributedDataParallel as DDP

    from grounding import engine, tasks
    from grounding.data.shards import Dataset
    from grounding.models import registry

    torch.set_num_threads(1)
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        ds = Dataset.open(root)
        td = tasks.load(ds, splits=("train", "val"), rank=rank, world=world)
        result = {"val_ids": td["val"].segment_ids, "train_ids": td["train"].segment_ids}

        # evaluation of an untrained model on this rank's share (uneven last batch on purpose)
        engine.seed_everything(0)
        stvg = registry.build("stvg", SMALL, td.info)
        result["stvg_metrics"] = engine.evaluate(stvg, td["val"], td.task, td.info, batch_size=5)

        # a few DDP steps of causal; its banks must stay identical on every rank
        engine.seed_everything(0)
        model = registry.build("causal", CAUSAL, td.info)
        result["bank_init"] = {"region": model.region_bank.memory.clone(),
                               "frame": model.frame_bank.memory.clone()}
        ddp = DDP(model, broadcast_buffers=False)
        cfg = engine.OptimConfig(lr=1e-3, batch_size=4)
        opt = engine.make_optimizer(ddp, cfg)
        result["train"] = [engine.train_one_epoch(ddp, opt, td["train"], cfg, epoch=e, seed=0) for e in range(2)]
        result["bank"] = {"region": model.region_bank.memory.clone(), "frame": model.frame_bank.memory.clone()}
        result["state"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        result["causal_metrics"] = engine.evaluate(ddp, td["val"], td.task, td.info, batch_size=6)
        torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
        dist.barrier()  # leave together: tearing gloo down under a connected peer can abort it
    finally:
        dist.destroy_process_group()


def trajectory(rank: int, world: int, root: str, out_dir: str, port: int, method: str,
               batch_size: int, epochs: int) -> None:
    """Train ``method`` for ``epochs`` epochs at per-rank ``batch_size`` on ``world`` gloo ranks;
    rank 0 saves the per-epoch mean losses (averaged over all ranks) and, for causal, every rank
    saves its memory banks."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    from grounding import engine, tasks
    from grounding.data.shards import Dataset
    from grounding.models import registry

    torch.set_num_threads(1)
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        td = tasks.load(Dataset.open(root), splits=("train", "val"), rank=rank, world=world)
        engine.seed_everything(0)
        model = registry.build(method, CAUSAL if method == "causal" else SMALL, td.info)
        net = DDP(model, broadcast_buffers=False) if world > 1 else model
        cfg = engine.OptimConfig(lr=1e-3, batch_size=batch_size)
        opt = engine.make_optimizer(net, cfg)
        losses = [engine.train_one_epoch(net, opt, td["train"], cfg, epoch=e, seed=0)["loss"] for e in range(epochs)]
        out = {"losses": losses, "metrics": engine.evaluate(net, td["val"], td.task, td.info)}
        if method == "causal":
            out["banks"] = {"region": model.region_bank.memory.clone(), "frame": model.frame_bank.memory.clone()}
        torch.save(out, os.path.join(out_dir, f"{method}-w{world}-rank{rank}.pt"))
        dist.barrier()  # leave together: tearing gloo down under a connected peer can abort it
    finally:
        dist.destroy_process_group()
