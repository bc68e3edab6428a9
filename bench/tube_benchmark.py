"""Tube grounding on the generated VidSTG benchmark: Random, whole-video, Upper Bound and ``tubemil``.

    python bench/tube_benchmark.py                                   # the full run
    python bench/tube_benchmark.py --epochs 1 --limit 40 --seeds 0 --out /tmp/t.json   # plumbing

What it does:

* generates (first use) or reuses the ``vidstg`` benchmark at ``--root`` with its default config
  (``--limit N`` generates a separate, smaller instance: N items per split; ``--set k=v`` changes
  a generator knob, for calibration);
* scores the baseline rows of :mod:`grounding.metrics.tube` (``random``, ``whole_video``,
  ``whole_video_best``, ``upper_bound``) on ``test_iid`` and ``test_ood``;
* trains each method of ``--methods`` [tubemil] at its default config for a fixed ``--epochs``
  [6] with Adam at the search space's PAPER lr / batch size / weight decay, for each seed of
  ``--seeds`` [0 1 2], on one thread; the model after the last epoch is evaluated on ``val``,
  ``test_iid`` and ``test_ood`` (no selection on val);
* writes ``--out`` [bench/results/tube_benchmark.json]: mean and (sample) std over seeds of every
  metric per method and split (overall, declarative, interrogative), every run's numbers and
  timings, and the dataset digest; prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from grounding import engine, tasks  # noqa: E402
from grounding.data import benchmarks  # noqa: E402
from grounding.models import registry  # noqa: E402
import search_spaces  # noqa: E402

SPLITS = ("test_iid", "test_ood")
SHOWN = ("m_viou", "viou_30", "viou_50", "m_tiou")


def summarise(runs: list[dict[str, float]]) -> dict[str, dict]:
    out = {}
    for k in runs[0]:
        v = np.array([r[k] for r in runs], dtype=np.float64)
        out[k] = {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0}
    return out


def table(results: dict) -> str:
    lines = ["| method | split | form | " + " | ".join(SHOWN) + " |", "|---|---|---|" + "---:|" * len(SHOWN)]
    for method, per_split in results.items():
        for split in SPLITS:
            for form, suffix in (("all", ""), ("declarative", "_declarative"), ("interrogative", "_interrogative")):
                cells = []
                for m in SHOWN:
                    s = per_split[split][m + suffix]
                    cells.append(f"{100 * s['mean']:.2f} ± {100 * s['std']:.2f}" if s["std"] else f"{100 * s['mean']:.2f}")
                lines.append(f"| {method} | {split} | {form} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_set(items: list[str]) -> dict:
    out = {}
    for it in items:
        k, _, v = it.partition("=")
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


def train_eval(td, method: str, seed: int, epochs: int, params: dict) -> dict:
    torch.set_num_threads(1)
    space = search_spaces.load(method)
    paper = dict(space.PAPER)
    optim = engine.OptimConfig(lr=paper.get("lr", 1e-3), weight_decay=paper.get("weight_decay", 0.0),
                               batch_size=paper.get("batch_size", 32))
    fields = registry.config_fields(method)
    model_params = {**{k: v for k, v in paper.items() if k in fields}, **getattr(space, "FIXED", {}), **params}
    engine.seed_everything(seed)
    model = registry.build(method, model_params, td.info)
    opt = engine.make_optimizer(model, optim)
    t0 = time.process_time()
    losses = []
    for epoch in range(epochs):
        losses.append(engine.train_one_epoch(model, opt, td["train"], optim, epoch, seed)["loss"])
    train_cpu = time.process_time() - t0
    out = {"seed": seed, "train_cpu_s": train_cpu, "losses": losses}
    for split in ("val", *SPLITS):
        out[split] = engine.evaluate(model, td[split], td.task, td.info, batch_size=128)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default=str(REPO / "data" / "vidstg-bench"))
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--set", action="append", default=[], metavar="KNOB=VALUE", help="a generator knob")
    ap.add_argument("--methods", nargs="+", default=["tubemil"])
    ap.add_argument("--model", action="append", default=[], metavar="NAME=VALUE", help="a model hyperparameter")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "tube_benchmark.json"))
    args = ap.parse_args(argv)

    overrides = parse_set(args.set)
    if args.limit:
        overrides["limit"] = args.limit
    t0 = time.time()
    ds = benchmarks.ensure(args.root, "vidstg", overrides, log=print)
    print(f"data ready in {time.time() - t0:.1f}s ({ds.root})")
    td = tasks.load(ds)
    results: dict = {}
    for split in SPLITS:
        base = td.task.baselines(td[split], td.info)
        for mode, vals in base.items():
            results.setdefault(mode, {})[split] = {k: {"mean": v, "std": 0.0} for k, v in vals.items()}
    runs: dict = {}
    for method in args.methods:
        runs[method] = []
        for seed in args.seeds:
            r = train_eval(td, method, seed, args.epochs, parse_set(args.model))
            print(f"{method} seed {seed}: train {r['train_cpu_s']:.0f}s CPU, loss {r['losses']}, "
                  f"val m_viou {r['val']['m_viou']:.4f} iid {r['test_iid']['m_viou']:.4f} "
                  f"ood {r['test_ood']['m_viou']:.4f} m_tiou {r['test_iid']['m_tiou']:.4f}", flush=True)
            runs[method].append(r)
        results[method] = {sp: summarise([r[sp] for r in runs[method]]) for sp in ("val", *SPLITS)}
    doc = {"benchmark": "vidstg", "root": str(ds.root), "digest": ds.digest, "generator_args": ds.manifest.producer.get("args"),
           "epochs": args.epochs, "seeds": args.seeds, "model_overrides": parse_set(args.model),
           "machine": platform.platform(), "results": results, "runs": runs}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(doc, indent=1))
    print(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
