"""WSVOG results on the generated YouCook2-BB benchmark: Random, Upper Bound, stvg, causal, scl and
their ablations, IID test and OOD test, the four accuracies, mean ± std over seeds.

    .venv/bin/python bench/wsvog_benchmark.py --epochs 5 --seeds 0 1 2 --jobs 2
    .venv/bin/python bench/wsvog_benchmark.py --epochs 1 --seeds 0 1 --smoke   # plumbing, ~2 min

The trained rows come from the comparison command users run,

    python -m orchestration.compare methods=stvg,causal,scl variants=all seeds=N epochs=E data.root=ROOT

(Ray Tune trials, one MLflow parent with a child per (method, variant, seed); the ablations are
``VARIANTS`` of ``search_spaces/<method>.py``; each trial's IID/OOD test metrics are what the trial
reports, the selection rule being the trial's own). Random and Upper Bound need no training and are
scored here on the same test splits. Extra ``key=value`` arguments go to the comparison as they are
(e.g. ``concurrent=1``, ``model.embed_dim=512 model.heads=8``). Writes
bench/results/wsvog_benchmark.json (the command, the MLflow parent run, the comparison's table and
every child's metrics) and prints the markdown table used in docs/benchmark.md.

Issue 12's causal reproduction (default generated YouCook2-BB, 3 seeds, IID and OOD):

    .venv/bin/python bench/wsvog_benchmark.py --methods stvg,causal \
        --variants joint_paper,staged_paper,spatial_only,temporal_only,no_bda,deconf_only,stvg_ensemble \
        --seeds 0 1 2 --epochs 5 --jobs 2 point=code \
        --out bench/results/wsvog_causal_reproduction.json

which runs

    python -m orchestration.compare methods=stvg,causal \
        variants=joint_paper,staged_paper,spatial_only,temporal_only,no_bda,deconf_only,stvg_ensemble \
        point=code seeds=[0,1,2] epochs=5 concurrent=2 data.root=data/youcook2

``point=code`` puts every ``causal`` row at the authors' code point (``search_spaces/causal.py``
``POINTS["code"]``: Adam lr 8e-4, StepLR, clip 10, batch 48); ``stvg`` declares no ``code`` point
and runs its own ``PAPER`` (the comparison's ``points`` param records ``stvg:paper,causal:code``).
Rows (``search_spaces/causal.py`` VARIANTS): ``stvg`` = stvg base; causal ``joint_paper`` = joint +
paper intervention (with every paper reading, the earlier table's joint model); ``staged_paper`` =
staged + paper intervention; causal base = staged + code intervention, the full ensemble;
``spatial_only`` / ``temporal_only`` / ``deconf_only`` = ACL-spatial / ACL-temporal / deconfounded
alone; ``no_bda`` = ACL-spatial + ACL-temporal; ``stvg_ensemble`` = the control, three independently
seeded plain-MIL models from scratch in the same 0.5/0.5/1.0 sigmoid ensemble. Random and Upper
Bound are scored here. 9 configurations x 3 seeds = 27 trials plus one shared backbone per seed
(the rows with an ACL component share it; with ``epochs=5`` StepLR's 40-epoch step never fires).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench._compare import label, parse_set, run_and_write  # noqa: E402

METRICS = ("box_macro", "box_micro", "query_macro", "query_micro")
SPLITS = ("test_iid", "test_ood")


def table(baselines: dict, rows: list[dict]) -> str:
    head = "| method | " + " | ".join(f"IID {m}" for m in METRICS) + " | " + " | ".join(f"OOD {m}" for m in METRICS) + " |"
    lines = [head, "|" + "---|" * (1 + 2 * len(METRICS))]
    for name, per_split in baselines.items():
        lines.append(f"| {name} | " + " | ".join(f"{100 * per_split[sp][m]:.1f}" for sp in SPLITS for m in METRICS) + " |")
    for method, variant in dict.fromkeys((r["method"], r["variant"]) for r in rows):
        cells = []
        for sp in SPLITS:
            for m in METRICS:
                r = next((r for r in rows if (r["method"], r["variant"], r["split"], r["metric"]) == (method, variant, sp, m)), None)
                if r is None:
                    cells.append("-")
                elif r["n"] > 1:
                    cells.append(f"{100 * r['mean']:.1f} ± {100 * r['std']:.1f}")
                else:
                    cells.append(f"{100 * r['mean']:.1f}")
        lines.append(f"| {label(method, variant)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default=str(REPO / "data" / "youcook2"), help="dataset (generated if missing)")
    ap.add_argument("--smoke", action="store_true", help="the benchmark's smoke size (a separate dataset)")
    ap.add_argument("--set", action="append", default=[], metavar="KNOB=VALUE",
                    help="a generator knob (generates a separate dataset at --root), e.g. limit=2000")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds")
    ap.add_argument("--methods", default="stvg,causal,scl", help="WSVOG methods (comma-separated)")
    ap.add_argument("--variants", default="all", help="each method's VARIANTS (comma-separated) or all")
    ap.add_argument("--concurrent", "--jobs", type=int, default=2, help="concurrent trials")
    ap.add_argument("--mlflow", default=f"sqlite:///{REPO / 'mlflow.db'}", help="MLflow tracking URI")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "wsvog_benchmark.json"))
    ap.add_argument("--read", metavar="NAME", help="write the results of the finished comparison NAME (no training)")
    ap.add_argument("overrides", nargs="*", help="extra key=value arguments for orchestration.compare")
    args = ap.parse_args(argv)

    from grounding import tasks
    from grounding.data import benchmarks

    smoke = {**(dict(benchmarks.get("youcook2").smoke) if args.smoke else {}), **parse_set(args.set)}
    root = args.root + ("-smoke" if args.smoke else "")
    ds = benchmarks.ensure(root, "youcook2", smoke)
    data = tasks.load(ds, splits=SPLITS)
    baselines = {"Random": {}, "Upper Bound": {}}
    for sp in SPLITS:
        scored = data.task.baselines(data[sp], data.info)
        baselines["Random"][sp], baselines["Upper Bound"][sp] = scored["random"], scored["upper_bound"]

    return run_and_write(args, ds, smoke, baselines, table)


if __name__ == "__main__":
    sys.exit(main())
