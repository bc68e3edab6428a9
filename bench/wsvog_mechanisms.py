"""What each mechanism did in a finished WSVOG comparison, read from its trials' MLflow curves: the
gradient norm each loss term sent into each parameter group (``grad/<term>/<group>``, the engine's
once-per-epoch probe), `causal`'s content-set diagnostics (the share of content slots holding the
ground-truth proposal, the ACL ranking's violation fraction, the banks' drift) and `scl`'s CAOS
floor and transfer softmax, at the first and the last epoch, mean over the training seeds.

    .venv/bin/python bench/wsvog_mechanisms.py --compare wsvog-calibrated \
        --out bench/results/wsvog_mechanisms.json

Keys are the trials' own metric names (a staged `causal` trial's carry ``stage/<component>/train/``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench._compare import label, read, write  # noqa: E402

# what a reader needs to tell whether a term did anything (the item 2)
WANTED = ("grad/", "content_gt", "style_gt", "cge_video", "bank_drift", "caos_floor_active", "stran_top_prob")


def stage_budget(client, run_id: str) -> dict[str, dict[str, float]]:
    """Per stage of an ensemble trial: epochs it trained, its selected epoch and whether it stopped
    flat (its own convergence rule); empty for a single-stage trial."""
    run = client.get_run(run_id)
    out = {}
    for key in run.data.metrics:
        if key.startswith("stage/") and key.endswith("/train/loss"):
            name = key.split("/")[1]
            out[name] = {"epochs": len(client.get_metric_history(run_id, key)),
                         "selected_epoch": run.data.metrics.get(f"stage/{name}/selected_epoch", float("nan")),
                         "flat": run.data.metrics.get(f"stage/{name}/converge/flat", float("nan"))}
    return out


def curves(client, run_id: str) -> dict[str, dict[int, float]]:
    """Every wanted per-epoch metric of one run: ``{key: {epoch: value}}``."""
    run = client.get_run(run_id)
    out = {}
    for key in run.data.metrics:
        if any(w in key for w in WANTED):
            out[key] = {int(m.step): float(m.value) for m in client.get_metric_history(run_id, key)}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--compare", required=True, help="name of a finished comparison")
    ap.add_argument("--mlflow", default=f"sqlite:///{REPO / 'mlflow.db'}", help="MLflow tracking URI")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "wsvog_mechanisms.json"))
    args = ap.parse_args(argv)

    from mlflow.tracking import MlflowClient

    client = MlflowClient(args.mlflow)
    result = read(args.compare, args.mlflow)
    per_row: dict[tuple[str, str], list[dict]] = {}
    budgets = []
    for run in result["runs"]:
        if run["status"] == "FINISHED":
            per_row.setdefault((run["method"], run["variant"]), []).append(curves(client, run["run_id"]))
            for stage, b in stage_budget(client, run["run_id"]).items():
                budgets.append({"method": run["method"], "variant": run["variant"], "seed": run["seed"],
                                "stage": stage, **b})
    rows, lines = [], ["| row | metric | first epoch | last epoch |", "|---|---|---:|---:|"]
    for (method, variant), runs in per_row.items():
        for key in sorted(set.intersection(*(set(r) for r in runs))):
            first = statistics.fmean(r[key][min(r[key])] for r in runs)
            last = statistics.fmean(r[key][max(r[key])] for r in runs)
            rows.append({"method": method, "variant": variant, "key": key, "seeds": len(runs),
                         "first": first, "last": last, "per_seed": [r[key] for r in runs]})
            lines.append(f"| {label(method, variant)} | `{key}` | {first:.4g} | {last:.4g} |")
    if budgets:
        lines += ["", "Per component (stage) of each ensemble trial: epochs trained / selected epoch, "
                  "F = stopped on its own flat curve, by seed:", "", "| row | stage | per seed |", "|---|---|---|"]
        for (method, variant, stage) in dict.fromkeys((b["method"], b["variant"], b["stage"]) for b in budgets):
            cells = [f"s{b['seed']}: {b['epochs']}/{int(b['selected_epoch'])}{' F' if b['flat'] == 1 else ''}"
                     for b in sorted(budgets, key=lambda b: b["seed"])
                     if (b["method"], b["variant"], b["stage"]) == (method, variant, stage)]
            lines.append(f"| {label(method, variant)} | {stage} | {', '.join(cells)} |")
    table = "\n".join(lines)
    write(args.out, {"compare": args.compare, "parent_run_id": result["parent_run_id"], "rows": rows,
                     "stage_budgets": budgets, "table": table})
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
