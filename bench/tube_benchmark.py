"""Tube grounding on the generated VidSTG benchmark: Random, whole-video, Upper Bound, ``tubemil``,
``winner``, ``vcma`` and its ablations, IID and OOD test, declarative and interrogative, and (where the
data has the ``bow_resolvable`` flag) the bag-of-words and structure subsets, mean ± std over seeds.

    .venv/bin/python bench/tube_benchmark.py --epochs 4 --seeds 0 1 2
    .venv/bin/python bench/tube_benchmark.py --smoke --epochs 1 --seeds 0     # plumbing, ~3 min

The trained rows come from the comparison command users run,

    python -m orchestration.compare methods=tubemil,winner,vcma variants=q_only,p_only,no_recon \
        seeds=N epochs=E data.root=ROOT

(one Ray Tune trial per (method, variant, seed), one MLflow parent run with a child per trial; the
ablations are ``VARIANTS`` of ``search_spaces/<method>.py``; each trial is evaluated on the test
splits once, at its best-validation epoch). The baseline rows need no training and are scored here
on the same test splits (:meth:`grounding.tasks.TubeTask.baselines`). ``--set KNOB=VALUE`` changes
a generator knob (a separate dataset: calibration on the baseline only); extra ``key=value``
arguments go to the comparison as they are (``converge.patience=3`` trains each trial until its
val m_vIoU is flat). Writes bench/results/tube_benchmark.json (the command, the MLflow parent run,
the comparison's table, every child's metrics, the baselines) and prints the markdown tables used
in docs/benchmark.md: per test split the overall metrics, with ``m_sviou`` (the boxes scored on the
GT segment: m_vIoU against m_sviou is the temporal part, m_sviou against the Upper Bound the
spatial part), then m_vIoU and m_sviou per sentence form and per subset (bag-of-words-resolvable /
structure-needed), then each row's gain over ``tubemil`` paired by seed with its 95% CI.

``--read NAME`` writes the results of a finished comparison without training; ``--rows FILE``
(repeatable) adds the rows of another results file: a comparison kept in another MLflow store, or
the readings of ``bench/tube_rereadings.py`` (``winner`` over the whole video / the GT segment).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench._compare import cells_table, gain_row, label, parse_set, run_and_write  # noqa: E402

SPLITS = ("test_iid", "test_ood")
SHOWN = ("m_viou", "viou_30", "viou_50", "m_tiou", "m_sviou")
FORMS = (("decl. ", "_declarative"), ("interr. ", "_interrogative"))
# the bag-of-words / structure subsets (grounding.metrics.tube), shown where the data has them
SUBSETS = (("bow ", "_bow"), ("struct. ", "_structure"))
BASELINES = {"random": "Random", "whole_video": "whole video, random tube",
             "whole_video_best": "whole video, best tube", "upper_bound": "Upper Bound"}
REFERENCE = ("tubemil", "base")  # the family's baseline: every claim is a gain over it
# the questions the table answers (issue 23): the gain over tubemil, paired by seed, in these metrics
CLAIM_METRICS = (("m_viou", "overall"), ("m_viou_bow", "bag-of-words subset"),
                 ("m_viou_structure", "structure subset"), ("m_tiou", "temporal (m_tIoU)"),
                 ("m_sviou", "spatial (m_sviou: boxes on the GT segment)"))
# what each paper's full model adds over its own ablation (WINNER Table 3, VCMA Table 3), m_viou
ABLATIONS = ((("winner", "base"), ("winner", "no_dsa_no_svhu")), (("vcma", "base"), ("vcma", "q_only")),
             (("vcma", "base"), ("vcma", "p_only")), (("vcma", "base"), ("vcma", "no_recon")))


def tables(baselines: dict, rows: list[dict]) -> str:
    """Per test split: the overall metrics (m_sviou: the boxes with the GT segment, so m_viou vs
    m_sviou is the temporal part and m_sviou vs the Upper Bound the spatial part), then m_viou and
    m_sviou per sentence form and per subset; then the claims."""
    out = []
    for split in SPLITS:
        name = "IID test" if split == "test_iid" else "OOD test"
        out.append(f"{name}, % (mean ± sample std [95% CI of the mean, Student's t]):\n\n"
                   + cells_table(baselines, rows, [(m, split, m) for m in SHOWN]))
        groups = FORMS + tuple(g for g in SUBSETS
                               if all(f"m_viou{g[1]}" in per.get(split, {}) for per in baselines.values()))
        columns = [(f"{form}{m}", split, m + suffix) for form, suffix in groups for m in ("m_viou", "m_sviou")]
        out.append(f"{name} by sentence form and subset, %:\n\n" + cells_table(baselines, rows, columns))
    return "\n\n".join(out) + "\n\n" + claims(rows)


def claims(rows: list[dict]) -> str:
    """Does each method beat ``tubemil``, and on which subset: the gain over it paired by training
    seed on IID and OOD test (and OOD minus IID), mean [95% CI], per metric of :data:`CLAIM_METRICS`."""
    present = list(dict.fromkeys((r["method"], r["variant"]) for r in rows))
    if REFERENCE not in present:
        return ""
    # rows read over the GT segment use the ground truth: diagnostics, not compared with a method
    compared = [c for c in present if c != REFERENCE and "gt_segment" not in c[1]]
    out = []
    for metric, what in CLAIM_METRICS:
        if not any(r["metric"] == metric for r in rows):
            continue
        lines = [f"Gain over `tubemil`, {what}: {metric} points, paired by seed, mean [95% CI]:", "",
                 "| row | IID gain | OOD gain | OOD gain − IID gain |", "|---|---:|---:|---:|"]
        lines += [gain_row(rows, c, REFERENCE, metric) for c in compared]
        out.append("\n".join(lines))
    pairs = [(a, b) for a, b in ABLATIONS if a in present and b in present]
    if pairs:
        lines = ["The full model against its ablation: m_viou points, paired by seed, mean [95% CI]:", "",
                 "| full model − ablation | IID | OOD | OOD − IID |", "|---|---:|---:|---:|"]
        for a, b in pairs:
            lines.append(gain_row(rows, a, b, "m_viou", f"{label(*a)} − {label(*b)}"))
        out.append("\n".join(lines))
    return "\n\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default=str(REPO / "data" / "vidstg"), help="dataset (generated if missing)")
    ap.add_argument("--smoke", action="store_true", help="the benchmark's smoke size (a separate dataset)")
    ap.add_argument("--set", action="append", default=[], metavar="KNOB=VALUE",
                    help="a generator knob (generates a separate dataset at --root)")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds")
    ap.add_argument("--methods", default="tubemil,winner,vcma", help="tube methods (comma-separated)")
    ap.add_argument("--variants", default="q_only,p_only,no_recon", help="VARIANTS (comma-separated) or all")
    ap.add_argument("--concurrent", "--jobs", type=int, default=2, help="concurrent trials")
    ap.add_argument("--mlflow", default=f"sqlite:///{REPO / 'mlflow.db'}", help="MLflow tracking URI")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "tube_benchmark.json"))
    ap.add_argument("--read", metavar="NAME[:LABEL]", action="append",
                    help="write the results of the finished comparison NAME (no training); repeatable (one MLflow "
                         "store), the rows merged; LABEL renames that comparison's base rows")
    ap.add_argument("--rows", action="append", metavar="JSON",
                    help="with --read: add the rows of another results file (a comparison in another MLflow store, "
                         "bench/tube_rereadings.py's readings)")
    ap.add_argument("overrides", nargs="*", help="extra key=value arguments for orchestration.compare")
    args = ap.parse_args(argv)

    from grounding import tasks
    from grounding.data import benchmarks

    knobs = {**(dict(benchmarks.get("vidstg").smoke) if args.smoke else {}), **parse_set(args.set)}
    root = args.root + ("-smoke" if args.smoke else "")
    ds = benchmarks.ensure(root, "vidstg", knobs, log=print)
    data = tasks.load(ds, splits=SPLITS)
    baselines: dict = {}
    for sp in SPLITS:
        for key, scores in data.task.baselines(data[sp], data.info).items():
            baselines.setdefault(BASELINES.get(key, key), {})[sp] = scores

    return run_and_write(args, ds, knobs, baselines, tables)


if __name__ == "__main__":
    sys.exit(main())
