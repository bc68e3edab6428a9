"""At which learning rate and budget does ``vcma``'s q_phi learn on the generated VidSTG? Val m_vIoU
of ``vcma`` (variant ``q_only`` by default) at several learning rates against ``tubemil``.

    python -m grounding.data generate vidstg /tmp/vidstg200 --set limit=200
    PYTHONPATH=. .venv/bin/python bench/vcma_lr_probe.py /tmp/vidstg200 --epochs 20 --eval 1 2 5 10 20

Each row trains one model from its method's ``PAPER`` point plus ``FIXED`` (the search space's, as
``orchestration.compare`` does), the variant's overrides and the row's, on the whole train split
with the search space's schedule (AdamW, linear warm-up over ``warmup_steps`` updates then linear
decay to 0 at the last epoch), seed 0, one thread; it scores the val split at the ``--eval`` epochs
(``m_viou``, ``m_tiou``; the task's metrics, as a sweep logs them) and, to tell the spatial part from
the temporal one, ``m_viou_gt_segment``: the model's boxes over the ground-truth segment. Writes
bench/results/vcma_lr_probe.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import search_spaces  # noqa: E402
from grounding import engine, tasks  # noqa: E402
from grounding.data.shards import Dataset  # noqa: E402
from grounding.models import registry  # noqa: E402


def params(method: str, variant: str | None, extra: dict) -> tuple[dict, engine.OptimConfig]:
    mod = search_spaces.load(method)
    merged = {**mod.PAPER, **mod.FIXED, **(mod.VARIANTS[variant] if variant else {}), **extra}
    fields = registry.config_fields(method)
    model = {k: v for k, v in merged.items() if k in fields}
    optim = engine.OptimConfig(**{k: v for k, v in merged.items() if k in engine.OPTIM_KEYS})
    return model, optim


@torch.no_grad()
def with_gt_segment(model, data, task, info, batch_size: int = 64) -> float:
    """m_vIoU of the model's boxes decoded over the ground-truth segment (the spatial part alone)."""
    model.eval()
    acc = task.accumulator(info)
    for i in range(0, len(data), batch_size):
        b = data.batch(range(i, min(i + batch_size, len(data))))
        acc.update_batch(dict(model.predict(b), segment=b["gt_segment"]), b)
    return acc.compute()["m_viou"]


def run(td, method: str, variant: str | None, extra: dict, epochs: int, evals: list[int], seed: int = 0) -> dict:
    model_kw, optim = params(method, variant, extra)
    engine.seed_everything(seed)
    model = registry.build(method, model_kw, td.info)
    opt = engine.make_optimizer(model, optim)
    train, val = td["train"], td["val"]
    sched = engine.make_scheduler(opt, optim, engine.steps_per_epoch(train, optim), epochs)
    rows, t0 = {}, time.perf_counter()
    for epoch in range(epochs):
        logs = engine.train_one_epoch(model, opt, train, optim, epoch=epoch, seed=seed, scheduler=sched)
        if epoch + 1 in evals:
            m = engine.evaluate(model, val, td.task, td.info)
            gt = with_gt_segment(model, val, td.task, td.info)
            rows[epoch + 1] = {"m_viou": m["m_viou"], "m_tiou": m["m_tiou"], "m_viou_gt_segment": gt,
                               "loss": logs["loss"], "updates": (epoch + 1) * logs["steps"]}
            print(f"  {method} {variant or ''} {json.dumps(extra)} epoch {epoch + 1}: val m_vIoU {100 * m['m_viou']:.2f}"
                  f" m_tIoU {100 * m['m_tiou']:.2f} m_vIoU(GT segment) {100 * gt:.2f} loss {logs['loss']:.3f}"
                  f" ({time.perf_counter() - t0:.0f}s)", flush=True)
    return {"method": method, "variant": variant, "overrides": extra, "model": model_kw,
            "optim": {k: getattr(optim, k) for k in engine.OPTIM_KEYS}, "epochs": rows,
            "seconds": round(time.perf_counter() - t0, 1)}


ROWS = {  # name -> (method, variant, overrides)
    "tubemil": ("tubemil", None, {}),
    "vcma_q_only_lr5e-5": ("vcma", "q_only", {"neg_temporal": "own"}),  # the published lr
    "vcma_q_only_lr3e-4": ("vcma", "q_only", {"neg_temporal": "own", "lr": 3e-4}),
    "vcma_q_only_lr1e-3": ("vcma", "q_only", {"neg_temporal": "own", "lr": 1e-3}),
    "vcma_q_only_lr1e-3_pair": ("vcma", "q_only", {"lr": 1e-3}),
    "vcma_q_only_lr1e-3_before_issue_23": ("vcma", "q_only", {"neg_temporal": "own", "lr": 1e-3, "norm_first": False,
                                                              "entities": "tokens"}),
    "vcma_both_lr1e-3": ("vcma", None, {"neg_temporal": "own", "lr": 1e-3}),
    "vcma_q_only_lr1e-3_tau3": ("vcma", "q_only", {"neg_temporal": "own", "lr": 1e-3, "tau": 3.0}),
    # every frame weighs the same in Eq. 10 (the temporal head gets no contrastive gradient): the spatial part alone
    "vcma_q_only_lr1e-3_uniform": ("vcma", "q_only", {"neg_temporal": "uniform", "lr": 1e-3}),
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("root", help="a generated tube dataset (python -m grounding.data generate vidstg ...)")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--eval", type=int, nargs="+", default=[1, 2, 5, 10, 20], help="epochs to score val at")
    ap.add_argument("--only", nargs="*", choices=sorted(ROWS), help="rows to run (default: all)")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "vcma_lr_probe.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    ds = Dataset.open(args.root)
    td = tasks.load(ds, splits=("train", "val"))
    out = Path(args.out)
    results = json.loads(out.read_text())["rows"] if out.exists() else {}
    for name in args.only or list(ROWS):
        method, variant, extra = ROWS[name]
        results[name] = run(td, method, variant, extra, args.epochs, args.eval)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"command": " ".join(sys.argv), "dataset": {"root": args.root, "digest": ds.digest,
                                   "producer_args": ds.manifest.producer.get("args"),
                                   "train": len(td["train"]), "val": len(td["val"])},
                                   "rows": results}, indent=1, default=str))
    evals = sorted({int(e) for r in results.values() for e in r["epochs"]})
    print("\nval m_vIoU / m_tIoU / m_vIoU over the GT segment (%)\n\n| row | " + " | ".join(f"ep {e}" for e in evals)
          + " |\n|---|" + "---|" * len(evals))
    for name, r in results.items():
        ep = {int(k): v for k, v in r["epochs"].items()}
        cells = [" / ".join(f"{100 * ep[e][k]:.1f}" for k in ("m_viou", "m_tiou", "m_viou_gt_segment") if k in ep[e])
                 if e in ep else "" for e in evals]
        print(f"| {name} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
