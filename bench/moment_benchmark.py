"""Moment localisation on the generated Charades-CD benchmark: random proposals, CPL and CCR.

    python bench/moment_benchmark.py                          # the full run (scheduled by the lead)
    python bench/moment_benchmark.py --epochs 1 --limit 40 --seeds 1 --out /tmp/m.json   # plumbing

What it does:

* generates (first use) or reuses the ``charades`` benchmark at ``--root`` with its default
  config (``--limit N`` generates a separate, smaller instance: N videos per split);
* scores the random-proposal baseline (the exact expectation, see
  :mod:`grounding.metrics.moment`) on ``test_iid`` and ``test_ood``;
* trains ``cpl`` and ``ccr`` through the comparison command users run,
  ``python -m orchestration.compare methods=cpl,ccr seeds=N epochs=E data.root=ROOT`` (their
  ``PAPER`` point = the published values with the CPU-sized network of the config defaults, Adam
  at 4e-4, batch 32; Ray Tune trials under one MLflow parent run), for ``--epochs`` [12] and
  seeds 0..``--seeds``-1 [3]; ``--variants`` adds ablations from ``search_spaces/cpl.py`` and
  ``ccr.py`` ``VARIANTS``; extra ``key=value`` arguments go to the comparison as they are;
* writes ``--out`` [bench/results/moment_benchmark.json]: the command and MLflow parent run, the
  comparison's table (mean, sample std, 95% CI per method, split and metric), every child's
  metrics, and the dataset digest; prints a markdown table.

12 epochs is about 4100 steps: past ``neg_anneal_steps`` (3000), when the hard negatives reach
full size. An epoch of the full train split (11071 queries, 345 steps) took 55 s of CPU time for
cpl and 67 s for ccr on one core (measured on a shared 2-core machine), so the default run costs
about 1.5 hours of one core.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench._compare import compare, label, write  # noqa: E402

SPLITS = ("test_iid", "test_ood")


def table(random: dict, rows: list[dict], metric_names: tuple[str, ...]) -> str:
    head = "| method | split | " + " | ".join(metric_names) + " |"
    lines = [head, "|" + "---|" * (len(metric_names) + 2)]
    for sp in SPLITS:
        lines.append(f"| random | {sp} | " + " | ".join(f"{100 * random[sp][m]:.2f}" for m in metric_names) + " |")
    for method, variant in dict.fromkeys((r["method"], r["variant"]) for r in rows):
        for sp in SPLITS:
            cells = []
            for m in metric_names:
                r = next((r for r in rows if (r["method"], r["variant"], r["split"], r["metric"]) == (method, variant, sp, m)), None)
                cells.append("-" if r is None else f"{100 * r['mean']:.2f}" + (f" ± {100 * r['std']:.2f}" if r["n"] > 1 else ""))
            lines.append(f"| {label(method, variant)} | {sp} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default=str(REPO / "data" / "charades"), help="benchmark folder")
    ap.add_argument("--limit", type=int, default=None, help="videos per split (a separate, smaller dataset)")
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1")
    ap.add_argument("--methods", default="cpl,ccr", help="comma-separated moment methods")
    ap.add_argument("--variants", default="", help="ablations (comma-separated) or all; default none")
    ap.add_argument("--concurrent", type=int, default=2, help="(method, seed) trials in parallel")
    ap.add_argument("--mlflow", default=f"sqlite:///{REPO / 'mlflow.db'}", help="MLflow tracking URI")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "moment_benchmark.json"))
    ap.add_argument("overrides", nargs="*", help="extra key=value arguments for orchestration.compare")
    args = ap.parse_args(argv)

    from grounding import tasks
    from grounding.data import benchmarks

    overrides = {"limit": args.limit} if args.limit else {}
    root = args.root + (f"-limit{args.limit}" if args.limit else "")
    ds = benchmarks.ensure(root, "charades", overrides)
    data = tasks.load(ds, splits=SPLITS)
    random = {sp: data.task.baselines(data[sp], data.info)["random"] for sp in SPLITS}

    result = compare([f"methods={args.methods}", f"seeds={args.seeds}", f"epochs={args.epochs}",
                      f"data.root={ds.root}", f"concurrent={args.concurrent}",
                      *([f"variants={args.variants}"] if args.variants else []), *args.overrides],
                     cwd=REPO, tracking_uri=args.mlflow)
    out = {"benchmark": "charades", "root": str(ds.root), "data_digest": ds.digest, "dims": ds.manifest.dims,
           "limit": args.limit, "epochs": args.epochs, "seeds": list(range(args.seeds)), "random": random,
           "metric_names": list(data.task.metric_names), **result,
           "table": table(random, result["rows"], data.task.metric_names)}
    write(args.out, out)
    print(out["table"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
