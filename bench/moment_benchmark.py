"""Moment localisation on the generated Charades-CD benchmark: random proposals, ``cpl`` and ``ccr``
with the paper's / released code's switches, IID and OOD test, R@1/R@5 at IoU 0.3/0.5/0.7 and mIoU,
mean ± std over seeds.

    .venv/bin/python bench/moment_benchmark.py --epochs 12 --seeds 0 1 2
    .venv/bin/python bench/moment_benchmark.py --smoke --epochs 1 --seeds 0    # plumbing, ~3 min

The trained rows come from the comparison command users run,

    python -m orchestration.compare methods=cpl,ccr variants=code_rectified,paper_main,paper_rectified \
        seeds=N epochs=E data.root=ROOT

(one Ray Tune trial per (method, variant, seed), one MLflow parent run with a child per trial).
Every trial trains with its method's ``PAPER`` point of ``search_spaces/<method>.py``: Adam lr
4e-4, batch 32, 400 linear warm-up updates from 1e-7 then inverse-sqrt decay, gradient-norm clip
10 (the authors' runners; ``optim.schedule=constant optim.grad_clip=0`` is the constant-lr protocol
of earlier results). ``ccr``'s base point is the released code (``score=code``, ``rank=main``); the
variants fill in the 2 x 2 of ``model.score`` x ``model.rank`` (``VARIANTS`` of
``search_spaces/ccr.py``). Each trial is tested once at its best-validation epoch; the last epoch's
test scores are reported beside it (both reference runners select on the *test* split; this tool
never does). ``--set KNOB=VALUE`` generates a separate instance with a generator knob changed
(``limit=N`` videos per split, ``L=200`` for the authors' clip count); extra ``key=value`` arguments
go to the comparison as they are (``model.hidden_dim=256 model.layers=3`` for the authors' width).
Writes bench/results/moment_benchmark.json (the command, the MLflow parent run, the comparison's
table, every child's metrics, the random baseline) and prints the markdown tables used in
docs/benchmark.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench._compare import cells_table, parse_set, run_and_write  # noqa: E402

SPLITS = ("test_iid", "test_ood")
SHOWN = ("r1_iou30", "r1_iou50", "r1_iou70", "r5_iou30", "r5_iou50", "r5_iou70", "miou")


def tables(baselines: dict, rows: list[dict]) -> str:
    out = []
    for title, prefix in (("best-validation epoch", ""), ("last epoch (not selected; for reference)", "last/")):
        columns = [(f"{'IID' if sp == 'test_iid' else 'OOD'} {m}", f"{prefix}{sp}", m) for sp in SPLITS for m in SHOWN]
        base = {name: {f"{prefix}{sp}": v for sp, v in per.items()} for name, per in baselines.items()}
        out.append(f"{title} (%)\n\n" + cells_table(base, rows, columns, digits=2))
    return "\n\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default=str(REPO / "data" / "charades"), help="dataset (generated if missing)")
    ap.add_argument("--smoke", action="store_true", help="the benchmark's smoke size (a separate dataset)")
    ap.add_argument("--set", action="append", default=[], metavar="KNOB=VALUE",
                    help="a generator knob (generates a separate dataset at --root)")
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds")
    ap.add_argument("--methods", default="cpl,ccr", help="moment methods (comma-separated)")
    ap.add_argument("--variants", default="code_rectified,paper_main,paper_rectified",
                    help="VARIANTS (comma-separated) or all")
    ap.add_argument("--concurrent", "--jobs", type=int, default=2, help="concurrent trials")
    ap.add_argument("--mlflow", default=f"sqlite:///{REPO / 'mlflow.db'}", help="MLflow tracking URI")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "moment_benchmark.json"))
    ap.add_argument("--read", metavar="NAME", help="write the results of the finished comparison NAME (no training)")
    ap.add_argument("overrides", nargs="*", help="extra key=value arguments for orchestration.compare")
    args = ap.parse_args(argv)

    from grounding import tasks
    from grounding.data import benchmarks

    knobs = {**(dict(benchmarks.get("charades").smoke) if args.smoke else {}), **parse_set(args.set)}
    root = args.root + ("-smoke" if args.smoke else "")
    ds = benchmarks.ensure(root, "charades", knobs, log=print)
    data = tasks.load(ds, splits=SPLITS)
    baselines = {"Random": {sp: data.task.baselines(data[sp], data.info)["random"] for sp in SPLITS}}

    return run_and_write(args, ds, knobs, baselines, tables)


if __name__ == "__main__":
    sys.exit(main())
