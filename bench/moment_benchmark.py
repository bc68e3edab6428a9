"""Moment localisation on the generated Charades-CD benchmark: random proposals, CPL and CCR.

    python bench/moment_benchmark.py                          # the full run (scheduled by the lead)
    python bench/moment_benchmark.py --epochs 1 --limit 40 --seeds 0 --out /tmp/m.json   # plumbing
    python bench/moment_benchmark.py --runs cpl ccr:code_main ccr:paper_rectified ...    # variants

What it does:

* generates (first use) or reuses the ``charades`` benchmark at ``--root`` with its default
  config (``--limit N`` generates a separate, smaller instance: N videos per split; ``--data
  KEY=VALUE`` more generator overrides, e.g. ``L=200`` for the authors' clip count);
* scores the random-proposal baseline (the exact expectation, see
  :mod:`grounding.metrics.moment`) on ``test_iid`` and ``test_ood``;
* trains every run of ``--runs`` for each seed of ``--seeds`` [0 1 2], for a fixed ``--epochs``
  [12], on one thread. A run is ``method`` (its default config = the published values,
  CPU-sized network) or ``method:variant`` (the overrides ``VARIANTS[variant]`` of
  ``search_spaces/<method>.py``); ``--set KEY=VALUE`` overrides the model config of every run
  (e.g. ``hidden_dim=256 layers=3``) and ``--optim KEY=VALUE`` the optimiser;
* optimiser: the method's search-space ``FIXED`` optimiser values and its ``PAPER`` ones, i.e.
  the authors' protocol: Adam lr 4e-4, batch 32, 400 linear warm-up updates from 1e-7 then
  inverse-sqrt decay, gradient-norm clip 10 (``--optim schedule=constant grad_clip=0`` is the
  constant-lr protocol of the earlier results);
* after every epoch evaluates ``val``; reports the test splits for the model after the last
  epoch (``last``) and for the epoch with the best ``val`` ``--select`` metric [r1_iou50]
  (``best_val``). The test split never selects anything (both reference runners select their
  checkpoint on the test split; their published numbers are therefore optimistic);
* runs that differ only in test-time options (``rank`` of ``ccr``) share one training: the
  trained model is evaluated under each of them (training does not read them, so this equals
  training each with the same seed);
* writes ``--out`` [bench/results/moment_benchmark.json]: mean and (sample) std over seeds of
  every metric per run, split and selection, every run's numbers, per-epoch val curve and
  timings, and the dataset digest; prints a markdown table.

12 epochs of the full train split is about 4100 steps: past ``neg_anneal_steps`` (3000), when the
hard negatives reach full size. An epoch of the full train split (11071 queries, 345 steps) took
55 s of CPU time for cpl and 67 s for ccr (``side_head=copy``) on one core (measured on a shared
2-core machine), so the default 3-seed cpl + ccr run costs about 1.5 hours of one core; the
default ``ccr`` (``side_head=separate``, four ``V x V`` layers) is slower, see docs/benchmark.md.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import search_spaces  # noqa: E402
from grounding import engine, tasks  # noqa: E402
from grounding.data import benchmarks  # noqa: E402
from grounding.models import registry  # noqa: E402

METHODS = ("cpl", "ccr")
SPLITS = ("test_iid", "test_ood")
SELECTIONS = ("last", "best_val")
TEST_TIME_KEYS = {"rank"}  # model options that only change predict(), never training
DEFAULT_RUNS = ("cpl", "ccr:code_main", "ccr:code_rectified", "ccr:paper_main", "ccr:paper_rectified")


def summarise(runs: list[dict[str, float]]) -> dict[str, dict]:
    out = {}
    for k in runs[0]:
        v = np.array([r[k] for r in runs], dtype=np.float64)
        out[k] = {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0}
    return out


def table(results: dict, metric_names: tuple[str, ...], label: str = "method") -> str:
    head = f"| {label} | split | " + " | ".join(metric_names) + " |"
    lines = [head, "|" + "---|" * (len(metric_names) + 2)]
    for method, per_split in results.items():
        for split, stats in per_split.items():
            cells = []
            for m in metric_names:
                s = stats[m]
                cells.append(f"{100 * s['mean']:.2f}" + (f" ± {100 * s['std']:.2f}" if s.get("std") else ""))
            lines.append(f"| {method} | {split} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _value(raw: str):
    low = raw.lower()
    if low in ("true", "false"):
        return low == "true"
    for cast in (int, float):
        try:
            return cast(raw)
        except ValueError:
            pass
    return raw


def parse_pairs(pairs: list[str], what: str) -> dict:
    out = {}
    for p in pairs:
        if "=" not in p:
            raise SystemExit(f"error: {what} '{p}' is not KEY=VALUE")
        k, v = p.split("=", 1)
        out[k] = _value(v)
    return out


def resolve_run(spec: str, model_set: dict, optim_set: dict) -> dict:
    """``method[:variant]`` -> its method, model overrides and optimiser config (validated)."""
    method, _, variant = spec.partition(":")
    if method not in METHODS:
        raise SystemExit(f"error: run '{spec}': unknown method {method!r}; allowed: {', '.join(METHODS)}")
    mod = search_spaces.load(method)
    variants = getattr(mod, "VARIANTS", {})
    if variant and variant not in variants:
        raise SystemExit(f"error: run '{spec}': unknown variant {variant!r}; allowed: {', '.join(variants)}")
    fields = registry.config_fields(method)
    merged = {**mod.FIXED, **{k: v for k, v in mod.PAPER.items() if k in engine.OPTIM_KEYS},
              **variants.get(variant, {}), **model_set, **optim_set}
    model = {k: v for k, v in merged.items() if k in fields}
    optim = {k: v for k, v in merged.items() if k in engine.OPTIM_KEYS}
    unknown = set(merged) - set(model) - set(optim)
    if unknown:
        raise SystemExit(f"error: run '{spec}': {sorted(unknown)} belong to neither {method} nor the optimiser")
    try:
        registry.make_config(method, model)
        engine.OptimConfig(**optim)
    except (ValueError, KeyError) as e:
        raise SystemExit(f"error: run '{spec}': {str(e).splitlines()[0]}")
    return {"name": spec, "method": method, "model": model, "optim": optim}


def group_runs(runs: list[dict]) -> list[dict]:
    """Runs that differ only in test-time keys share one training."""
    groups: dict[str, dict] = {}
    for r in runs:
        train = {k: v for k, v in r["model"].items() if k not in TEST_TIME_KEYS}
        key = json.dumps([r["method"], train, r["optim"]], sort_keys=True)
        g = groups.setdefault(key, {"method": r["method"], "model": train, "optim": r["optim"], "evals": {}})
        g["evals"][r["name"]] = {k: v for k, v in r["model"].items() if k in TEST_TIME_KEYS}
    return list(groups.values())


def _evaluate_as(model, test_opts: dict, data, splits) -> dict:
    saved = {k: getattr(model.cfg, k) for k in test_opts}
    for k, v in test_opts.items():
        setattr(model.cfg, k, v)
    try:
        return {sp: engine.evaluate(model, data[sp], data.task, data.info) for sp in splits}
    finally:
        for k, v in saved.items():
            setattr(model.cfg, k, v)


def run_one(root: str, group: dict, seed: int, epochs: int, threads: int, select: str) -> list[dict]:
    """Train one group for ``epochs`` epochs; per evaluation variant the val curve, the test
    metrics after the last epoch and at the best-val epoch."""
    from grounding.data.shards import Dataset

    torch.set_num_threads(threads)
    data = tasks.load(Dataset.open(root), splits=("train", "val", *SPLITS))
    optim = engine.OptimConfig(**group["optim"])
    engine.seed_everything(seed)
    method = group["method"]
    model = registry.build(method, group["model"], data.info)
    opt = engine.make_optimizer(model, optim)
    sched = engine.make_scheduler(opt, optim, engine.steps_per_epoch(data["train"], optim), epochs)
    evals = group["evals"]
    curves: dict[str, list] = {n: [] for n in evals}
    best: dict[str, tuple] = {}
    t0, epoch_s, epoch_cpu_s, eval_s, logs = time.time(), [], [], [], []
    tag = f"{'/'.join(evals)} seed {seed}"
    for epoch in range(epochs):
        t, c = time.time(), time.process_time()
        last = engine.train_one_epoch(model, opt, data["train"], optim, epoch, seed, scheduler=sched)
        epoch_s.append(time.time() - t)
        epoch_cpu_s.append(time.process_time() - c)
        logs.append({k: v for k, v in last.items() if k != "samples_per_s"})
        t = time.time()
        for name, test_opts in evals.items():
            val = _evaluate_as(model, test_opts, data, ("val",))["val"]
            curves[name].append(val)
            if name not in best or val[select] > best[name][1]:
                best[name] = (epoch + 1, val[select], copy.deepcopy(model.state_dict()))
        eval_s.append(time.time() - t)
        print(f"{tag} epoch {epoch + 1}/{epochs}: loss {last['loss']:.4f} lr {last['lr']:.2e} "
              + " ".join(f"val {select} {curves[n][-1][select]:.4f}" for n in evals)
              + f" ({epoch_s[-1]:.0f} s wall, {epoch_cpu_s[-1]:.0f} s CPU)", flush=True)
    out = []
    final = copy.deepcopy(model.state_dict())
    for name, test_opts in evals.items():
        model.load_state_dict(final)
        m_last = _evaluate_as(model, test_opts, data, SPLITS)
        model.load_state_dict(best[name][2])
        m_best = _evaluate_as(model, test_opts, data, SPLITS)
        print(f"{name} seed {seed}: last " + ", ".join(f"{sp} r1_iou50 {m_last[sp]['r1_iou50']:.4f}" for sp in SPLITS)
              + f"; best val epoch {best[name][0]}: " + ", ".join(f"{sp} {m_best[sp]['r1_iou50']:.4f}" for sp in SPLITS),
              flush=True)
        out.append({"run": name, "method": method, "seed": seed, "model": {**group["model"], **test_opts},
                    "optim": group["optim"], "metrics": {"last": {"val": curves[name][-1], **m_last},
                                                         "best_val": {"val": curves[name][best[name][0] - 1], **m_best}},
                    "best_val_epoch": best[name][0], "val_curve": curves[name], "train_logs": logs,
                    "epoch_s": epoch_s, "epoch_cpu_s": epoch_cpu_s, "val_eval_s": eval_s,
                    "total_s": time.time() - t0, "shared_training_with": [n for n in evals if n != name]})
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default=str(REPO / "data" / "charades"), help="benchmark folder")
    ap.add_argument("--limit", type=int, default=None, help="videos per split (a separate, smaller dataset)")
    ap.add_argument("--data", nargs="*", default=[], metavar="KEY=VALUE", help="more generator overrides")
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--runs", nargs="+", default=None, metavar="METHOD[:VARIANT]",
                    help=f"runs [{' '.join(DEFAULT_RUNS)}]")
    ap.add_argument("--methods", nargs="+", default=None, choices=METHODS, help="runs at the default variant")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="model overrides for every run")
    ap.add_argument("--optim", nargs="*", default=[], metavar="KEY=VALUE", help="optimiser overrides for every run")
    ap.add_argument("--select", default="r1_iou50", help="val metric of the best_val selection")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--jobs", type=int, default=2, help="trainings in parallel processes")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "moment_benchmark.json"))
    ap.add_argument("--resume-partial", action="store_true",
                    help="reuse the finished trainings of <out>.partial.jsonl and run only the rest")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    specs = args.runs or args.methods or list(DEFAULT_RUNS)
    model_set, optim_set = parse_pairs(args.set, "--set"), parse_pairs(args.optim, "--optim")
    runs = [resolve_run(s, model_set, optim_set) for s in specs]
    groups = group_runs(runs)
    overrides = {**({"limit": args.limit} if args.limit else {}), **parse_pairs(args.data, "--data")}
    root = args.root + "".join(f"-{k}{v}" for k, v in overrides.items())
    ds = benchmarks.ensure(root, "charades", overrides)
    data = tasks.load(ds, splits=("train", "val", *SPLITS))
    task = data.task
    if args.select not in task.metric_names:
        raise SystemExit(f"error: --select {args.select} is unknown; allowed: {', '.join(task.metric_names)}")
    print(f"data {root}: digest {ds.digest[:12]}, " + ", ".join(f"{sp} {len(data[sp])} queries" for sp in data.splits))
    print(f"{len(runs)} runs in {len(groups)} trainings per seed: "
          + "; ".join(f"{g['method']} {g['model']} -> {list(g['evals'])}" for g in groups), flush=True)

    random = {sp: {k: {"mean": v, "std": 0.0} for k, v in task.baselines(data[sp], data.info)["random"].items()}
              for sp in SPLITS}
    jobs = [(g, seed) for seed in args.seeds for g in groups]  # seed-major: a partial run holds whole seeds
    partial = Path(args.out + ".partial.jsonl")
    if args.resume_partial and partial.exists():
        done = [d for d in map(json.loads, filter(str.strip, partial.read_text().splitlines()))
                if d["seed"] in args.seeds and d["run"] in {r["name"] for r in runs}]
        finished = {(d["run"], d["seed"]) for d in done}
        jobs = [(g, s) for g, s in jobs if not all((n, s) in finished for n in g["evals"])]
        print(f"{len(done)} results read from {partial}; {len(jobs)} trainings left", flush=True)
    else:
        done = []
        partial.parent.mkdir(parents=True, exist_ok=True)
        partial.write_text("")
    with ProcessPoolExecutor(args.jobs) as pool:
        futures = [pool.submit(run_one, root, g, s, args.epochs, args.threads, args.select) for g, s in jobs]
        for fut in as_completed(futures):
            rs = fut.result()
            done.extend(rs)
            with partial.open("a") as f:  # every finished training survives an interrupted run
                f.writelines(json.dumps(r) + "\n" for r in rs)
    seeds = sorted({d["seed"] for d in done})
    per_run: dict[str, list] = {r["name"]: sorted((d for d in done if d["run"] == r["name"]), key=lambda d: d["seed"])
                                for r in runs}
    results = {sel: {"random": random} for sel in SELECTIONS}
    for sel in SELECTIONS:
        for name, rs in per_run.items():
            if rs:
                results[sel][name] = {sp: summarise([r["metrics"][sel][sp] for r in rs]) for sp in SPLITS}


    out = {
        "benchmark": "charades", "root": root, "data_digest": ds.digest, "dims": ds.manifest.dims,
        "data_overrides": overrides, "limit": args.limit,
        "queries": {sp: len(data[sp]) for sp in data.splits}, "epochs": args.epochs, "seeds": seeds,
        "threads": args.threads, "select": args.select,
        "runs_spec": {r["name"]: {"method": r["method"], "model": r["model"], "optim": r["optim"]} for r in runs},
        "configs": {r["name"]: dataclasses.asdict(registry.make_config(r["method"], r["model"])) for r in runs},
        "results": results["last"], "results_best_val": results["best_val"], "runs": per_run,
        "metric_names": list(task.metric_names),
        "machine": {"python": platform.python_version(), "torch": torch.__version__,
                    "processor": platform.processor() or platform.machine()},
    }
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(out, indent=2))
    tmp.replace(path)
    print(f"\nwrote {path}\n")
    for sel in SELECTIONS:
        print(f"\n{sel}:\n" + table(results[sel], task.metric_names, "run"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
