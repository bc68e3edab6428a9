"""WSVOG rows read from models finished comparisons already trained, without retraining them: the
`causal` ablation rows (the paper's Table 3: one component alone, two of three) as sub-ensembles
of the staged trials (``members=``), and `scl`'s Table 3 "Inference" rows (context-only, both) as
its trained model read under another inference (``model.inference=``).

    .venv/bin/python bench/wsvog_rereadings.py --compare wsvog-causal-c --compare wsvog-scl-b \
        --out bench/results/wsvog_rereadings.json

`scl`'s inference is read only at prediction time, so the paper's inference rows are one trained
model scored three ways; here each is the model selected on validation under the paper's
(stable-branch) inference, read under the other.

Under the staged protocol the three components of a `causal` trial train independently of each
other (ACL-spatial and ACL-temporal from the shared backbone, the deconfounded model from
scratch) and each keeps its own best-validation epoch, so leaving one out of the ensemble gives
the ablation row without training it again. Since each stage trains on its own random stream
(``grounding.training.StageRun.own_stream``; tests/grounding/test_causal_rows.py) a component
trained beside the others is bit-identical to the one the ablation row trains alone; what can
differ is only when the run stopped (the full trial stops once its ensemble's validation curve
is flat). On code before that change (a comparison run then) the components of one trial shared
one random stream, so a component here is another draw of the same training (other dropout
masks and sampled style items), not the separately trained row's exact weights. Every row here is one ``python -m orchestration.evaluate
run=<trial> members=<stages>`` (or ``model.inference=<value>``) per (trial, row), recorded in MLflow as an evaluation run (tags
``source_run``, ``members``); the table has the same format as the comparison's, and each
ablation is answered against the comparison's ``stvg`` rows as in ``bench/wsvog_benchmark.py``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench._compare import cells_table, evaluate_all, gain_row, label, read, rows_of, write  # noqa: E402

# (method, the compared rows read again) -> {row: evaluate arguments}
READINGS = {
    # the components kept (grounding/models/causal.py's staged components); base / staged_paper:
    # the full ensembles with the code / the paper's intervention
    ("causal", ("base", "staged_paper")): {
        "spatial_only": ("members=spatial",), "temporal_only": ("members=temporal",),
        "deconf_only": ("members=deconf",), "no_bda": ("members=spatial,temporal",),
        "no_acl_spatial": ("members=temporal,deconf",), "no_acl_temporal": ("members=spatial,deconf",)},
    ("scl", ("base",)): {"context_inference": ("model.inference=context",), "both_inference": ("model.inference=both",)},
}
METRICS = ("box_macro", "box_micro", "query_macro", "query_micro")
SPLITS = ("val", "test_iid", "test_ood")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--compare", action="append", required=True,
                    help="a finished comparison (repeatable); its causal / scl trials are read again")
    ap.add_argument("--mlflow", default=f"sqlite:///{REPO / 'mlflow.db'}", help="MLflow tracking URI")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "wsvog_rereadings.json"))
    ap.add_argument("--jobs", type=int, default=2, help="evaluations at once")
    args = ap.parse_args(argv)

    results = [read(name, args.mlflow) for name in args.compare]
    jobs = []  # (comparison, trial, method, row, evaluate arguments)
    for result in results:
        for run in sorted(result["runs"], key=lambda r: (r["method"], r["variant"], r["seed"])):
            for (method, sources), readings in READINGS.items():
                if run["method"] != method or run["variant"] not in sources or run["status"] != "FINISHED":
                    continue
                for row, extra in readings.items():
                    variant = row if run["variant"] == "base" else f"{run['variant']}/{row}"
                    jobs.append((result["name"], run, method, variant, extra))
    per_seed, evaluations = evaluate_all(jobs, args.mlflow, SPLITS, args.jobs)
    for (_, _, method, row, _), e in zip(jobs, evaluations):
        m = e["metrics"]
        print(f"{label(method, row)} seed {e['seed']}: test_iid/query_micro {m['test_iid/query_micro']:.4f}, "
              f"test_ood/query_micro {m['test_ood/query_micro']:.4f}")
    rows = rows_of(per_seed, SPLITS, METRICS)
    reference = [r for res in results for r in res["rows"]
                 if (r["method"], r["variant"]) in {("stvg", "base"), ("causal", "base"), ("scl", "base")}]
    tables = []
    for split, name in (("test_iid", "IID test"), ("test_ood", "OOD test")):
        tables.append(f"{name}, %:\n\n" + cells_table({}, reference + rows, [(m, split, m) for m in METRICS]))
    claim = ["Gain over `stvg` in query micro points, paired by seed, mean [95% CI]:", "",
             "| row | IID gain | OOD gain | OOD gain − IID gain |", "|---|---:|---:|---:|"]
    for key in per_seed:
        both = reference + rows
        claim.append(gain_row(both, key, ("stvg", "base"), "query_micro"))
    table = "\n\n".join(tables) + "\n\n" + "\n".join(claim)
    write(args.out, {"compare": args.compare, "parent_run_ids": [r["parent_run_id"] for r in results],
                     "tracking_uri": args.mlflow,
                     "readings": {f"{m}:{','.join(src)}": {k: list(v) for k, v in rd.items()} for (m, src), rd in READINGS.items()},
                     "rows": rows,
                     "evaluations": evaluations, "table": table})
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
