"""Moment localisation on the generated Charades-CD benchmark: random proposals, CPL and CCR.

    python bench/moment_benchmark.py                          # the full run (scheduled by the lead)
    python bench/moment_benchmark.py --epochs 1 --limit 40 --seeds 0 --out /tmp/m.json   # plumbing

What it does:

* generates (first use) or reuses the ``charades`` benchmark at ``--root`` with its default
  config (``--limit N`` generates a separate, smaller instance: N videos per split);
* scores the random-proposal baseline (the exact expectation, see
  :mod:`grounding.metrics.moment`) on ``test_iid`` and ``test_ood``;
* trains ``cpl`` and ``ccr`` at their default config (= the published values, CPU-sized
  network) for a fixed ``--epochs`` [12] with Adam at the published lr 4e-4 and batch 32, for
  each seed of ``--seeds`` [0 1 2], on one thread; the model after the last epoch is evaluated
  on ``val``, ``test_iid`` and ``test_ood`` (no selection on val);
* writes ``--out`` [bench/results/moment_benchmark.json]: mean and (sample) std over seeds of
  every metric per method and split, every run's numbers and timings, and the dataset digest;
  prints a markdown table.

12 epochs is about 4100 steps: past ``neg_anneal_steps`` (3000), when the hard negatives reach
full size. An epoch of the full train split (11071 queries, 345 steps) took 55 s of CPU time for
cpl and 67 s for ccr on one core (measured on a shared 2-core machine), so the default run costs
about 1.5 hours of one core.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from grounding import engine, tasks  # noqa: E402
from grounding.data import benchmarks  # noqa: E402
from grounding.models import registry  # noqa: E402

METHODS = ("cpl", "ccr")
SPLITS = ("test_iid", "test_ood")
LR, BATCH = 4e-4, 32  # published (CPL and CCR Charades configs)


def summarise(runs: list[dict[str, float]]) -> dict[str, dict]:
    out = {}
    for k in runs[0]:
        v = np.array([r[k] for r in runs], dtype=np.float64)
        out[k] = {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0}
    return out


def table(results: dict, metric_names: tuple[str, ...]) -> str:
    head = "| method | split | " + " | ".join(metric_names) + " |"
    lines = [head, "|" + "---|" * (len(metric_names) + 2)]
    for method, per_split in results.items():
        for split, stats in per_split.items():
            cells = []
            for m in metric_names:
                s = stats[m]
                cells.append(f"{100 * s['mean']:.2f}" + (f" ± {100 * s['std']:.2f}" if s.get("std") else ""))
            lines.append(f"| {method} | {split} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_one(root: str, method: str, seed: int, epochs: int, threads: int) -> dict:
    """Train one (method, seed) for ``epochs`` epochs; evaluate the last model on val/IID/OOD."""
    from grounding.data.shards import Dataset

    torch.set_num_threads(threads)
    data = tasks.load(Dataset.open(root), splits=("train", "val", *SPLITS))
    optim = engine.OptimConfig(lr=LR, batch_size=BATCH)
    engine.seed_everything(seed)
    model = registry.build(method, {}, data.info)
    opt = engine.make_optimizer(model, optim)
    t0, epoch_s, epoch_cpu_s, last = time.time(), [], [], {}
    for epoch in range(epochs):
        t, c = time.time(), time.process_time()
        last = engine.train_one_epoch(model, opt, data["train"], optim, epoch, seed)
        epoch_s.append(time.time() - t)
        epoch_cpu_s.append(time.process_time() - c)
        print(f"{method} seed {seed} epoch {epoch + 1}/{epochs}: loss {last['loss']:.4f} "
              f"({epoch_s[-1]:.0f} s wall, {epoch_cpu_s[-1]:.0f} s CPU)", flush=True)
    metrics = {sp: engine.evaluate(model, data[sp], data.task, data.info) for sp in ("val", *SPLITS)}
    print(f"{method} seed {seed}: " + ", ".join(f"{sp} r1_iou50 {metrics[sp]['r1_iou50']:.4f}" for sp in SPLITS),
          flush=True)
    return {"method": method, "seed": seed, "metrics": metrics, "train_loss": last.get("loss"),
            "epoch_s": epoch_s, "epoch_cpu_s": epoch_cpu_s, "total_s": time.time() - t0}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default=str(REPO / "data" / "charades"), help="benchmark folder")
    ap.add_argument("--limit", type=int, default=None, help="videos per split (a separate, smaller dataset)")
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--jobs", type=int, default=2, help="(method, seed) runs in parallel processes")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "moment_benchmark.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    overrides = {"limit": args.limit} if args.limit else {}
    root = args.root + (f"-limit{args.limit}" if args.limit else "")
    ds = benchmarks.ensure(root, "charades", overrides)
    data = tasks.load(ds, splits=("train", "val", *SPLITS))
    task = data.task
    print(f"data {root}: digest {ds.digest[:12]}, " + ", ".join(f"{sp} {len(data[sp])} queries" for sp in data.splits))

    results: dict[str, dict] = {"random": {}}
    for sp in SPLITS:
        r = task.baselines(data[sp], data.info)["random"]
        results["random"][sp] = {k: {"mean": v, "std": 0.0} for k, v in r.items()}
    jobs = [(m, seed) for m in args.methods for seed in args.seeds]
    with ProcessPoolExecutor(args.jobs) as pool:
        done = list(pool.map(run_one, [root] * len(jobs), [m for m, _ in jobs], [s for _, s in jobs],
                             [args.epochs] * len(jobs), [args.threads] * len(jobs)))
    runs: dict[str, list] = {m: [r for r in done if r["method"] == m] for m in args.methods}
    for method in args.methods:
        results[method] = {sp: summarise([r["metrics"][sp] for r in runs[method]]) for sp in SPLITS}

    out = {
        "benchmark": "charades", "root": root, "data_digest": ds.digest, "dims": ds.manifest.dims,
        "limit": args.limit, "epochs": args.epochs, "seeds": args.seeds, "lr": LR, "batch_size": BATCH,
        "threads": args.threads, "configs": {m: registry.get(m).Config().__dict__ for m in args.methods},
        "results": results, "runs": runs, "metric_names": list(task.metric_names),
        "machine": {"python": platform.python_version(), "torch": torch.__version__,
                    "processor": platform.processor() or platform.machine()},
    }
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(out, indent=2))
    tmp.replace(path)
    print(f"\nwrote {path}\n")
    print(table(results, task.metric_names))
    return 0


if __name__ == "__main__":
    sys.exit(main())
