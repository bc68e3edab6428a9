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

Issue 22's reproduction on the calibrated generator (every trial until its validation curve is
flat: converge.patience=3, at most 30 epochs per stage; docs/benchmark.md):

    .venv/bin/python bench/wsvog_benchmark.py --root data/youcook2-l2000 --set limit=2000
        --methods stvg,causal,scl --seeds 0 1 2 --epochs 30 --jobs 2
        --variants staged_paper,spatial_only,temporal_only,no_bda,deconf_only,stvg_ensemble,context_inference,both_inference
        point=code converge.patience=3 --out bench/results/wsvog_calibrated.json

(one command line). ``point=code`` puts every ``causal`` row at the authors' code point (``search_spaces/causal.py``
``POINTS["code"]``); ``stvg`` and ``scl`` declare no ``code`` point and run their ``PAPER``. The
rows are ``VARIANTS`` of ``search_spaces/<method>.py`` (causal: ``staged_paper`` = the paper's
Eq. (10) intervention, ``*_only`` / ``no_bda`` = ensembles of fewer components, ``stvg_ensemble`` =
three plain-MIL models in the same ensemble; scl: ``context_inference`` / ``both_inference``).
After the tables the script answers each paper's claim from the rows (:data:`CLAIMS`): the gain
over the reference row on IID and OOD test and their difference, paired by training seed, with a
95% confidence interval.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench._compare import cells_table, gain_row, label, parse_set, run_and_write  # noqa: E402

METRICS = ("box_macro", "box_micro", "query_macro", "query_micro")
SPLITS = ("test_iid", "test_ood")
# each paper's claim, put as a question, and the rows that answer it against the reference row
# (query micro: the metric both papers' headline gains and RoboWatch's table use)
CLAIMS = (
    ("causal-intervention paper (Table 4): `causal` gains more OOD than IID over the baseline "
     "(+4.07 against +1.64 query micro)", ("stvg", "base"),
     [("causal", v) for v in ("base", "staged_paper", "spatial_only", "temporal_only", "no_bda",
                              "deconf_only", "stvg_ensemble", "joint_paper")]),
    ("the same, against `stvg` trained 40 epochs without the stopping rule (a budget at least as large as "
     "any causal component's: its backbone's epochs plus its own)", ("stvg", "40_epochs"),
     [("causal", v) for v in ("base", "staged_paper", "stvg_ensemble")]),
    ("the same, against the control that ensembles three plain-MIL models the same way",
     ("causal", "stvg_ensemble"), [("causal", v) for v in ("base", "staged_paper")]),
    ("SCL paper (Tables 1, 3, 4): `scl` beats the baseline (+1.58 test query micro; RoboWatch +1.11), "
     "with its stable-branch inference ahead of context-only (-3.4 to -4.3) and of both (-0.6 to -0.8)",
     ("stvg", "base"), [("scl", v) for v in ("base", "context_inference", "both_inference")]),
)


def table(baselines: dict, rows: list[dict]) -> str:
    out = []
    for split, name in zip(SPLITS, ("IID test", "OOD test")):
        out.append(f"{name}, % (mean ± sample std [95% CI of the mean, Student's t]):\n\n"
                   + cells_table({k: v for k, v in baselines.items()}, rows, [(m, split, m) for m in METRICS]))
    return "\n\n".join(out) + "\n\n" + claims(rows)


def claims(rows: list[dict], metric: str = "query_micro") -> str:
    """Each paper's claim answered from the rows, paired by training seed: the gain over the
    reference row on IID and OOD test and the OOD gain minus the IID gain, mean [95% CI]."""
    present = {(r["method"], r["variant"]) for r in rows}
    out = []
    for question, ref, compared in CLAIMS:
        compared = [c for c in compared if c in present and c != ref]
        if ref not in present or not compared:
            continue
        lines = [f"Claim: {question}. Gain over `{label(*ref)}` in {metric.replace('_', ' ')} points, paired by "
                 "seed, mean [95% CI]:", "",
                 "| row | IID gain | OOD gain | OOD gain − IID gain |", "|---|---:|---:|---:|"]
        for c in compared:
            lines.append(gain_row(rows, c, ref, metric))
        out.append("\n".join(lines))
    return "\n\n".join(out)


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
    ap.add_argument("--read", metavar="NAME[:LABEL]", action="append",
                    help="write the results of the finished comparison NAME (no training); repeatable, the rows "
                         "merged; LABEL renames that comparison's base rows")
    ap.add_argument("--rows", action="append", metavar="JSON",
                    help="with --read: add the rows of a results file that derived them (bench/wsvog_rereadings.py)")
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
