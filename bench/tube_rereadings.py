"""Tube rows read from models a finished comparison already trained, without retraining them:
``winner`` decoded over the whole video and over the ground-truth segment (``model.test_segment=full``
/ ``oracle``, its temporal module taken out), and ``vcma``'s beta curve (Eq. 16's mixture, which every
``vcma`` trial scores on val at its selected checkpoint: the child run's ``inference_grid/beta.json``).

    .venv/bin/python bench/tube_rereadings.py --compare NAME [--mlflow URI] --out bench/results/tube_rereadings.json
    .venv/bin/python bench/tube_rereadings.py --compare NAME --history bench/results/tube_winner_history.json

Each reading is one ``python -m orchestration.evaluate run=<trial> model.test_segment=<value>`` per
(trial, reading), recorded in MLflow as an evaluation run (tags ``source_run``, ``model.test_segment``);
the rows have the comparison's format (``bench/tube_benchmark.py --read NAME --rows OUT`` puts them
in its tables). The beta curve is the mean over seeds of val m_vIoU (and its bag-of-words /
structure subsets) at beta = 0, 0.1, ..., 1 for each ``vcma`` row that keeps beta.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench._compare import evaluate_all, label, read, rows_of, write  # noqa: E402

# method -> {row: evaluate arguments}; the readings apply to every trained variant of the method
READINGS = {"winner": {"whole_video": ("model.test_segment=full",), "gt_segment": ("model.test_segment=oracle",)}}
SPLITS = ("val", "test_iid", "test_ood")
BASE = ("m_viou", "viou_30", "viou_50", "m_tiou", "m_sviou")
METRICS = tuple(f"{m}{g}" for g in ("", "_declarative", "_interrogative", "_bow", "_structure") for m in BASE)
CURVE = ("m_viou", "m_viou_bow", "m_viou_structure", "m_tiou")


def beta_curves(result: dict, uri: str) -> dict:
    """``{row label: {"beta": [...], metric: [mean over seeds], "seeds": n}}`` from the children's
    ``inference_grid/beta.json``."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    per_row: dict[str, list[dict]] = {}
    for run in result["runs"]:
        if run["status"] != "FINISHED":
            continue
        if "inference_grid/beta.json" not in {a.path for a in client.list_artifacts(run["run_id"], "inference_grid")}:
            continue
        table = json.loads(Path(client.download_artifacts(run["run_id"], "inference_grid/beta.json")).read_text())
        cols = {c: [row[i] for row in table["data"]] for i, c in enumerate(table["columns"])}
        per_row.setdefault(label(run["method"], run["variant"]), []).append(cols)
    out = {}
    for name, curves in per_row.items():
        out[name] = {"beta": curves[0]["beta"], "seeds": len(curves),
                     **{m: np.mean([c[m] for c in curves], 0).round(6).tolist() for m in CURVE if m in curves[0]}}
    return out


def fusion_off(result: dict, uri: str) -> dict:
    """``winner``'s per-epoch diagnostic (spec A35): val m_vIoU with its fusion and with the fusion
    switched off at test time, per trial (``epoch_val/m_viou``, ``epoch_val/fusion_off/m_viou``),
    with the selected epoch and the first epoch's gradient probe (``train/grad/<term>/<group>``)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    out = {}
    for run in sorted(result["runs"], key=lambda r: (r["variant"], r["seed"])):
        if run["method"] != "winner" or run["status"] != "FINISHED":
            continue
        hist = {k: [m.value for m in sorted(client.get_metric_history(run["run_id"], k), key=lambda m: m.step)]
                for k in ("epoch_val/m_viou", "epoch_val/fusion_off/m_viou")}
        grads = {k: v for k, v in client.get_run(run["run_id"]).data.metrics.items() if k.startswith("train/grad/")}
        first = {k: client.get_metric_history(run["run_id"], k) for k in grads}
        out[f"{label(run['method'], run['variant'])} seed {run['seed']}"] = {
            "selected_epoch": run["metrics"].get("selected_epoch"), **hist,
            "grad_first_epoch": {k: min(h, key=lambda m: m.step).value for k, h in first.items() if h}}
    return out


def curve_table(curves: dict) -> str:
    if not curves:
        return ""
    lines = []
    for name, c in curves.items():
        lines += [f"`{name}`, val, mean of {c['seeds']} seeds (%), at beta (Eq. 16; 1 = q_phi alone, 0 = p_theta alone):", "",
                  "| metric | " + " | ".join(f"{b:.1f}" for b in c["beta"]) + " |", "|---|" + "---:|" * len(c["beta"])]
        lines += [f"| {m} | " + " | ".join(f"{100 * v:.1f}" for v in c[m]) + " |" for m in CURVE if m in c]
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--compare", required=True, help="a finished tube comparison")
    ap.add_argument("--mlflow", default=f"sqlite:///{REPO / 'mlflow.db'}", help="MLflow tracking URI")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "tube_rereadings.json"))
    ap.add_argument("--jobs", type=int, default=2, help="evaluations at once")
    ap.add_argument("--history", metavar="JSON", help="write only winner's per-epoch fusion-off diagnostic and first "
                    "gradient probe of each trial to JSON (no evaluation)")
    args = ap.parse_args(argv)

    result = read(args.compare, args.mlflow)
    if args.history:
        write(args.history, {"compare": args.compare, "parent_run_id": result["parent_run_id"],
                             "tracking_uri": args.mlflow, "winner_fusion_off": fusion_off(result, args.mlflow)})
        return 0
    jobs = []  # (comparison, trial, method, row, evaluate arguments)
    for run in sorted(result["runs"], key=lambda r: (r["method"], r["variant"], r["seed"])):
        if run["status"] != "FINISHED":
            continue
        for row, extra in READINGS.get(run["method"], {}).items():
            jobs.append((args.compare, run, run["method"], row if run["variant"] == "base" else f"{run['variant']}/{row}",
                         extra))
    per_seed, evaluations = evaluate_all(jobs, args.mlflow, SPLITS, args.jobs)
    for (_, _, method, row, _), e in zip(jobs, evaluations):
        m = e["metrics"]
        print(f"{label(method, row)} seed {e['seed']}: test_iid/m_viou {m['test_iid/m_viou']:.4f} m_tiou {m['test_iid/m_tiou']:.4f}")
    curves = beta_curves(result, args.mlflow)
    text = curve_table(curves)
    write(args.out, {"compare": args.compare, "parent_run_id": result["parent_run_id"], "tracking_uri": args.mlflow,
                     "readings": {m: {k: list(v) for k, v in rd.items()} for m, rd in READINGS.items()},
                     "rows": rows_of(per_seed, SPLITS, METRICS), "evaluations": evaluations,
                     "beta_curves": curves, "table": text})
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
