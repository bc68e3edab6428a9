"""Fixed cost per trial and sweep wall time against the same trials' bare training time.

    .venv/bin/python bench/trial_startup.py [--trials 4] [--epochs 1] [--method stvg]

Runs the same small sweep (one trial at a time, FIFO, fixed seeds) in three ways:

* ``in-actor``    — the default: one worker per trial trains inside the Tune trial's actor,
                    actors are reused (imports and loaded data survive from trial to trial);
* ``torchtrainer``— every trial builds a Ray Train ``TorchTrainer`` with one worker
                    (``trainer=always``), i.e. what the naive Train-V2-inside-Tune pattern costs;
* ``ddp-2``       — two DDP workers per trial (``workers=2``), the multi-worker path.

For each it reports the sweep's wall time, the Tune phase's wall time, the trials' bare training
time (sum of their train + eval seconds, measured inside the trials), the fixed cost per trial
((Tune wall - bare) / trials) and the time from Tune's trial start to the first training step,
and writes bench/results/trial_startup.json.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

MODES = {
    "in-actor": [],
    "torchtrainer": ["trainer=always"],
    "ddp-2": ["workers=2", "cpus_per_worker=1"],
}


def run_mode(name: str, extra: list[str], args, data_root: str, work: Path) -> dict:
    from mlflow.tracking import MlflowClient

    cwd = work / name
    cwd.mkdir()
    cmd = [sys.executable, "-m", "orchestration.sweep", f"method={args.method}", f"trials={args.trials}",
           f"epochs={args.epochs}", "concurrent=1", "scheduler=fifo", f"data.root={data_root}", f"name={name}", *extra]
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    wall = time.time() - t0
    if proc.returncode:
        raise SystemExit(f"{name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    tune_s = float(re.search(r"tune finished in ([\d.]+)s", proc.stdout).group(1))
    ray_s = float(re.search(r"ray started locally in ([\d.]+)s", proc.stdout).group(1))
    client = MlflowClient(f"sqlite:///{cwd / 'mlflow.db'}")
    exp = client.get_experiment_by_name("video-grounding")
    children = [r for r in client.search_runs([exp.experiment_id]) if "mlflow.parentRunId" in r.data.tags]
    children.sort(key=lambda r: int(r.data.tags["trial_number"]))
    compute = 0.0
    for r in children:
        for key in ("time/train_s", "time/eval_s"):
            compute += sum(m.value for m in client.get_metric_history(r.info.run_id, key))
    startup = [r.data.metrics["time/startup_s"] for r in children]
    setup = [r.data.metrics["time/setup_s"] for r in children]
    return {
        "mode": name, "overrides": extra, "wall_s": wall, "ray_init_s": ray_s, "tune_s": tune_s,
        "bare_training_s": compute, "fixed_cost_per_trial_s": (tune_s - compute) / len(children),
        "startup_first_trial_s": startup[0], "startup_later_trials_s": statistics.fmean(startup[1:]) if len(startup) > 1 else None,
        "setup_first_trial_s": setup[0], "setup_later_trials_s": statistics.fmean(setup[1:]) if len(setup) > 1 else None,
        "trials": len(children),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--method", default="stvg")
    ap.add_argument("--trials", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--data-root", default=str(REPO / "data" / "youcook2"),
                    help="dataset (the default benchmark, generated if missing)")
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "trial_startup.json"))
    args = ap.parse_args()

    sys.path.insert(0, str(REPO))
    from grounding.data import benchmarks

    from grounding.data.shards import Dataset

    root = Path(args.data_root)
    ds = Dataset.open(root) if (root / "manifest.json").exists() else benchmarks.ensure(root, "youcook2")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.modes:
            row = run_mode(name, MODES[name], args, str(ds.root), Path(tmp))
            rows.append(row)
            print(json.dumps(row), flush=True)
    header = ("| mode | sweep wall s | Ray start s | Tune wall s | bare training s | fixed cost / trial s | "
              "trial start -> first step s (first / later) |")
    lines = [header, "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        later = f"{r['startup_later_trials_s']:.1f}" if r["startup_later_trials_s"] is not None else "-"
        lines.append(f"| {r['mode']} | {r['wall_s']:.1f} | {r['ray_init_s']:.1f} | {r['tune_s']:.1f} | "
                     f"{r['bare_training_s']:.1f} | {r['fixed_cost_per_trial_s']:.1f} | "
                     f"{r['startup_first_trial_s']:.1f} / {later} |")
    table = "\n".join(lines)
    out = {"method": args.method, "trials": args.trials, "epochs": args.epochs, "dataset": str(ds.root),
           "digest": ds.digest, "machine": {"cpus": __import__("os").cpu_count()}, "rows": rows, "table": table}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(table)


if __name__ == "__main__":
    main()
