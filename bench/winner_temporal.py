"""Does ``winner``'s temporal module beat predicting the whole video? m_tIoU on the generated VidSTG.

    python -m grounding.data generate vidstg DIR --set limit=600
    PYTHONPATH=. .venv/bin/python bench/winner_temporal.py DIR METHOD EPOCHS '{"temporal": "tl1"}' \
        [--lr 1e-3] [--batch 32] [--ntrain 0] [--nval 400] [--seed 0]

Trains METHOD (``winner`` or ``tubemil``) at its search space's PAPER + FIXED point with the JSON
overrides (``lr``/``batch`` replacing the optimiser's) on the train split (the first ``ntrain``
rows of a seeded permutation; 0 = all), one thread, and scores the first ``nval`` rows of a seeded
permutation of val after every epoch with the task's own metrics (``TubeTask``'s accumulator,
m_tIoU on real frame ids, as the benchmark tables; ``len``: the mean predicted segment as a
percentage of the valid frames). Each epoch also scores the same model with
the whole video (``temporal=full``) and the GT segment (``temporal=oracle``) as its segment at
test time (winner only), and under ``--variants`` (more test-time overrides), and at init (with
the engine's gradient probe, ``grad/<term>/<group>``, on the first train batch; every epoch's
logs carry the engine's own probe). EPOCHS may be 0. Prints one JSON line per evaluation and appends them to
bench/results/winner_temporal.jsonl.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import search_spaces  # noqa: E402
from grounding import engine, tasks  # noqa: E402
from grounding.data.shards import Dataset  # noqa: E402
from grounding.models import registry  # noqa: E402


class Sub:
    """The rows ``idx`` of a split (a seeded subset)."""

    def __init__(self, arrays, n: int, seed: int):
        self.a = arrays
        perm = np.random.default_rng(seed).permutation(len(arrays))
        self.idx = np.sort(perm[:n]) if n and n < len(arrays) else np.arange(len(arrays))

    def __len__(self):
        return len(self.idx)

    def batch(self, idx, device="cpu"):
        return self.a.batch(self.idx[np.asarray(idx)], device)


@torch.no_grad()
def evaluate(model, data, task, info) -> dict:
    """The task's metrics, plus ``len``: the mean predicted segment as a fraction of the valid frames."""
    model.eval()
    acc, frac = task.accumulator(info), []
    for i in range(0, len(data), 64):
        b = data.batch(np.arange(i, min(i + 64, len(data))))
        p = model.predict(b)
        acc.update_batch(p, b)
        seg = p["segment"]
        frac += ((seg[:, 1] - seg[:, 0]).float() / b["frame_valid"].sum(1).clamp(min=1)).tolist()
    return {**acc.compute(), "len": float(np.mean(frac))}


def scores(model, data, task, info, variants: dict) -> dict:
    out = {}
    for name, overrides in variants.items():
        if overrides is None:
            m = evaluate(model, data, task, info)
        else:
            with model.variant(overrides):
                m = evaluate(model, data, task, info)
        out[name] = {k: round(float(m[k]) * 100, 2) for k in ("m_viou", "m_tiou", "viou_30", "len")}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("root")
    ap.add_argument("method", choices=("winner", "tubemil"))
    ap.add_argument("epochs", type=int)
    ap.add_argument("overrides", nargs="?", default="{}")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--ntrain", type=int, default=0)
    ap.add_argument("--nval", type=int, default=400)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--variants", default="{}", help='more test-time variants, {"name": {overrides}}')
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "winner_temporal.jsonl"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    extra = json.loads(args.overrides)
    data = tasks.load(Dataset.open(args.root), splits=("train", "val"))
    train, val = Sub(data["train"], args.ntrain, args.seed), Sub(data["val"], args.nval, 12345)
    space = search_spaces.load(args.method)
    merged = {**space.PAPER, **space.FIXED, **extra, "lr": args.lr, "batch_size": args.batch}
    fields = registry.config_fields(args.method)
    params = {k: v for k, v in merged.items() if k in fields}
    optim = engine.OptimConfig(**{k: v for k, v in merged.items() if k in engine.OPTIM_KEYS})
    engine.seed_everything(args.seed)
    model = registry.build(args.method, params, data.info)
    opt = engine.make_optimizer(model, optim)
    variants = {"model": None}
    if args.method == "winner":
        variants.update(whole_video={"temporal": "full"}, gt_segment={"temporal": "oracle"})
    variants.update(json.loads(args.variants))
    head = {"root": args.root, "method": args.method, "overrides": extra, "lr": args.lr, "batch": args.batch,
            "ntrain": len(train), "nval": len(val), "seed": args.seed}
    lines = []

    def emit(epoch, logs, secs):
        row = {**head, "epoch": epoch, "train_s": round(secs, 1), "logs": logs,
               "val": scores(model, val, data.task, data.info, variants)}
        print(json.dumps(row), flush=True)
        lines.append(row)

    model.train()  # the engine's gradient probe at initialisation, on the first train batch (train mode)
    probe = (engine.grad_probe(model, train.batch(np.arange(min(args.batch, len(train)))), args.seed)
             if hasattr(model, "loss_terms") else {})
    emit(0, {k: round(v, 4) for k, v in probe.items()}, 0.0)
    for ep in range(args.epochs):
        t0 = time.time()
        logs = engine.train_one_epoch(model, opt, train, optim, ep, args.seed)
        emit(ep + 1, {k: round(v, 4) for k, v in logs.items()}, time.time() - t0)
    with open(args.out, "a") as f:
        for row in lines:
            f.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
