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
arguments go to the comparison as they are. Writes bench/results/tube_benchmark.json (the command,
the MLflow parent run, the comparison's table, every child's metrics, the baselines) and prints
the markdown tables used in docs/benchmark.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench._compare import cells_table, parse_set, run_and_write  # noqa: E402

SPLITS = ("test_iid", "test_ood")
SHOWN = ("m_viou", "viou_30", "viou_50", "m_tiou")
FORMS = (("", ""), ("decl. ", "_declarative"), ("interr. ", "_interrogative"))
# the bag-of-words / structure subsets (grounding.metrics.tube), shown where the data has them
SUBSETS = (("bow ", "_bow"), ("struct. ", "_structure"))
BASELINES = {"random": "Random", "whole_video": "whole video, random tube",
             "whole_video_best": "whole video, best tube", "upper_bound": "Upper Bound"}


def tables(baselines: dict, rows: list[dict]) -> str:
    out = []
    for split in SPLITS:
        groups = FORMS + tuple(g for g in SUBSETS
                               if all(f"m_viou{g[1]}" in per.get(split, {}) for per in baselines.values()))
        columns = [(f"{form}{m}", split, m + suffix) for form, suffix in groups for m in SHOWN]
        out.append(f"{split} (%)\n\n" + cells_table(baselines, rows, columns))
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
    ap.add_argument("--read", metavar="NAME", help="write the results of the finished comparison NAME (no training)")
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
