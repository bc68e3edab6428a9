"""What the benchmark scripts share: run ``python -m orchestration.compare`` and read its results
back from MLflow (the parent's table and the child runs), so every number a benchmark writes comes
from the comparison command users run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def compare(args: list[str], cwd: Path, tracking_uri: str, experiment: str = "video-grounding") -> dict:
    """Run the comparison (its console output streams through); return its parent, children and table."""
    name = f"bench-{time.strftime('%Y%m%d-%H%M%S')}"
    argv = [sys.executable, "-m", "orchestration.compare", *args, f"name={name}",
            f"mlflow.tracking_uri={tracking_uri}", f"mlflow.experiment={experiment}"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    print("$ " + " ".join(argv[1:]), flush=True)
    proc = subprocess.run(argv, cwd=cwd, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"orchestration.compare exited with {proc.returncode}")
    return read(name, tracking_uri, experiment)


def read(name: str, tracking_uri: str, experiment: str = "video-grounding") -> dict:
    """A finished comparison ``name`` read back from MLflow: its parent, children and table (the
    parent's ``compare_table.json`` artifact, read as the file it is)."""
    from mlflow.tracking import MlflowClient

    from orchestration.tracking.summary import MARKDOWN_FILE, TABLE_FILE

    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    # the comparison's parent (its shared stages, e.g. causal's backbones, are top-level runs too)
    parent = next((r for r in client.search_runs([exp.experiment_id], filter_string=f"tags.sweep = '{name}'")
                   if "mlflow.parentRunId" not in r.data.tags and r.data.tags.get("kind") == "compare"), None)
    if parent is None:
        raise SystemExit(f"no comparison named {name} in MLflow experiment {experiment!r} at {tracking_uri}")
    children = client.search_runs([exp.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'", max_results=10000)
    table = json.loads(Path(client.download_artifacts(parent.info.run_id, TABLE_FILE)).read_text())
    local = client.download_artifacts(parent.info.run_id, MARKDOWN_FILE)
    return {
        "name": name, "parent_run_id": parent.info.run_id, "command": parent.data.tags["command"],
        "tracking_uri": tracking_uri, "markdown": Path(local).read_text(),
        "rows": [dict(zip(table["columns"], row)) for row in table["data"]],
        "runs": [{"run_id": c.info.run_id, "method": c.data.tags.get("method"), "variant": c.data.tags.get("variant"),
                  "seed": int(c.data.tags.get("seed", -1)), "status": c.info.status, "params": dict(c.data.params),
                  "metrics": {k: v for k, v in c.data.metrics.items()
                              if k.startswith(("val/", "test_iid/", "test_ood/")) or k == "selected_epoch"}}
                 for c in children],
    }


def read_many(names: str | list[str], tracking_uri: str) -> dict:
    """One or more finished comparisons as one result: ``NAME`` or ``NAME:LABEL`` each (LABEL renames
    that comparison's ``base`` rows, e.g. a second ``stvg`` comparison with another budget); the
    rows, runs, commands and parent runs of all of them."""
    names = [names] if isinstance(names, str) else list(names)
    parts = []
    for item in names:
        name, _, relabel = item.partition(":")
        res = read(name, tracking_uri)
        if relabel:
            for r in res["rows"] + res["runs"]:
                if r["variant"] == "base":
                    r["variant"] = relabel
        clash = {(r["method"], r["variant"]) for p in parts for r in p["rows"]} & {(r["method"], r["variant"])
                                                                               for r in res["rows"]}
        if clash:
            raise SystemExit(f"{name}: rows {sorted(clash)} are already in an earlier comparison; give it a "
                             f"label: --read {name}:LABEL")
        parts.append(res)
    if len(parts) == 1:
        return parts[0]
    return {"name": [p["name"] for p in parts], "parent_run_id": [p["parent_run_id"] for p in parts],
            "command": [p["command"] for p in parts], "tracking_uri": tracking_uri,
            "markdown": "\n\n".join(p["markdown"] for p in parts),
            "rows": [r for p in parts for r in p["rows"]], "runs": [r for p in parts for r in p["runs"]]}


def evaluate(run_id: str, args: tuple[str, ...], uri: str, splits: tuple[str, ...]) -> dict[str, float]:
    """One ``python -m orchestration.evaluate run=<run_id> ARGS splits=...`` of a finished trial
    (``members=``, ``model.<option>=``: the trained model read again); the metrics it logged."""
    from mlflow.tracking import MlflowClient

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "orchestration.evaluate", f"run={run_id}", *args,
           f"splits={','.join(splits)}", f"mlflow.tracking_uri={uri}"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[1:])} exited with {proc.returncode}: {proc.stderr.strip()[-500:]}")
    client = MlflowClient(uri)
    tags = " and ".join(f"tags.`{k}` = '{v}'" for k, _, v in (a.partition("=") for a in args))
    runs = client.search_runs([client.get_run(run_id).info.experiment_id],
                              f"tags.kind = 'evaluation' and tags.source_run = '{run_id}' and {tags}",
                              order_by=["attributes.start_time DESC"])
    return dict(runs[0].data.metrics)


def evaluate_all(jobs: list[tuple[str, dict, str, str, tuple[str, ...]]], uri: str, splits: tuple[str, ...],
                 workers: int) -> tuple[dict, list[dict]]:
    """Every ``(comparison, trial run, method, row, evaluate arguments)`` of ``jobs`` read again by
    :func:`evaluate`, ``workers`` at once (each its own process): ``({(method, row): {seed: metrics}},
    the evaluations as recorded in a results file)``."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(workers) as pool:
        done = list(pool.map(lambda j: evaluate(j[1]["run_id"], j[4], uri, splits), jobs))
    per_seed: dict[tuple[str, str], dict[int, dict[str, float]]] = {}
    evaluations = []
    for (name, run, method, row, extra), metrics in zip(jobs, done):
        per_seed.setdefault((method, row), {})[run["seed"]] = metrics
        evaluations.append({"compare": name, "source_run": run["run_id"], "seed": run["seed"], "row": row,
                            "args": list(extra), "metrics": metrics})
    return per_seed, evaluations


def rows_of(per_seed: dict[tuple[str, str], dict[int, dict[str, float]]], splits: tuple[str, ...],
            metrics: tuple[str, ...]) -> list[dict]:
    """The comparison table's row format from ``{(method, variant): {seed: {"split/metric": value}}}``
    (a metric a split does not report is left out)."""
    from orchestration.tracking.summary import summarize

    out = []
    for (method, variant), seeds in per_seed.items():
        order = sorted(seeds)
        for split in splits:
            for m in metrics:
                if any(f"{split}/{m}" not in seeds[s] for s in order):
                    continue
                values = [seeds[s][f"{split}/{m}"] for s in order]
                s = summarize(values)
                out.append({"method": method, "variant": variant, "split": split, "metric": m, "n": s.n,
                            "mean": s.mean, "std": s.std, "ci95_low": s.ci_low, "ci95_high": s.ci_high,
                            "seeds": ",".join(map(str, order)), "values": ",".join(f"{v:.6f}" for v in values)})
    return out


def parse_set(items: list[str]) -> dict:
    """``KNOB=VALUE`` generator overrides (values parsed as JSON where they parse)."""
    out = {}
    for it in items:
        k, _, v = it.partition("=")
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


def label(method: str, variant: str) -> str:
    return method if variant == "base" else f"{method} {variant}"


def write(path: str, out: dict) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(p.suffix + ".tmp")
    tmp.write_text(json.dumps(out, indent=1))
    tmp.replace(p)
    print(f"\nwrote {p}")


def _row(rows: list[dict], method: str, variant: str, split: str, metric: str) -> dict | None:
    return next((r for r in rows if (r["method"], r["variant"], r["split"], r["metric"]) == (method, variant, split, metric)),
                None)


def cell(rows: list[dict], method: str, variant: str, split: str, metric: str, scale: float = 100.0,
         digits: int = 1) -> str:
    """``mean ± std [95% CI]`` of one (method, variant, split, metric) of the comparison's table, the
    value alone for one seed, or ``-``."""
    r = _row(rows, method, variant, split, metric)
    if r is None:
        return "-"
    if r["n"] > 1:
        return (f"{scale * r['mean']:.{digits}f} ± {scale * r['std']:.{digits}f} "
                f"[{scale * r['ci95_low']:.{digits}f}, {scale * r['ci95_high']:.{digits}f}]")
    return f"{scale * r['mean']:.{digits}f}"


def per_seed(rows: list[dict], method: str, variant: str, split: str, metric: str) -> dict[int, float]:
    """``{seed: value}`` of one cell of the comparison's table (empty without it)."""
    r = _row(rows, method, variant, split, metric)
    if r is None:
        return {}
    return dict(zip((int(s) for s in str(r["seeds"]).split(",")), (float(v) for v in str(r["values"]).split(","))))


def paired(rows: list[dict], a: tuple[str, str], b: tuple[str, str], metric: str,
           splits: tuple[str, ...] = ("test_iid",), signs: tuple[int, ...] = (1,)):
    """Row ``a`` minus row ``b`` paired by training seed, as a Student-t summary over the seeds both
    have (:func:`orchestration.tracking.summary.summarize`): with one split the gain on it; with
    ``splits=("test_ood", "test_iid"), signs=(1, -1)`` the OOD gain minus the IID gain. None when
    fewer than two seeds are shared."""
    from orchestration.tracking.summary import summarize

    diffs = []
    for split, sign in zip(splits, signs):
        va, vb = per_seed(rows, *a, split, metric), per_seed(rows, *b, split, metric)
        diffs.append({s: sign * (va[s] - vb[s]) for s in va if s in vb})
    seeds = sorted(set.intersection(*(set(d) for d in diffs)))
    if len(seeds) < 2:
        return None
    return summarize([sum(d[s] for d in diffs) for s in seeds])


def gain_row(rows: list[dict], row: tuple[str, str], ref: tuple[str, str], metric: str, name: str = "") -> str:
    """One markdown line: ``row``'s gain over ``ref`` on IID and OOD test and OOD minus IID, paired
    by seed (:func:`paired`), mean [95% CI]; ``name`` heads the line (default: ``row``'s label)."""
    return (f"| {name or label(*row)} | {signed(paired(rows, row, ref, metric, ('test_iid',)))} | "
            f"{signed(paired(rows, row, ref, metric, ('test_ood',)))} | "
            f"{signed(paired(rows, row, ref, metric, ('test_ood', 'test_iid'), (1, -1)))} |")


def signed(s, scale: float = 100.0, digits: int = 1) -> str:
    """``+mean [low, high]`` of a :func:`paired` summary, or ``-``."""
    if s is None:
        return "-"
    return f"{scale * s.mean:+.{digits}f} [{scale * s.ci_low:+.{digits}f}, {scale * s.ci_high:+.{digits}f}]"


def cells_table(baselines: dict, rows: list[dict], columns: list[tuple[str, str, str]], scale: float = 100.0,
                digits: int = 1) -> str:
    """Markdown table: one line per baseline (``{name: {split: {metric: value}}}``) and per compared
    (method, variant) in the comparison's order; ``columns`` are (header, split, metric)."""
    lines = ["| method | seeds | " + " | ".join(h for h, _, _ in columns) + " |", "|---|---|" + "---:|" * len(columns)]
    for name, per_split in baselines.items():
        lines.append(f"| {name} | - | " + " | ".join(f"{scale * per_split[sp][m]:.{digits}f}" for _, sp, m in columns) + " |")
    for method, variant in dict.fromkeys((r["method"], r["variant"]) for r in rows):
        n = max((r["n"] for r in rows if (r["method"], r["variant"]) == (method, variant)), default=0)
        lines.append(f"| {label(method, variant)} | {n} | "
                     + " | ".join(cell(rows, method, variant, sp, m, scale, digits) for _, sp, m in columns) + " |")
    return "\n".join(lines)


def run_and_write(args, ds, knobs: dict, baselines: dict, tables) -> int:
    """What every benchmark script ends with: the comparison of ``args.methods`` x ``args.variants``
    x ``args.seeds`` on dataset ``ds``, written to ``args.out`` with the dataset, the generator
    overrides, the baselines and ``tables(baselines, rows)`` (also printed)."""
    if getattr(args, "read", None):  # finished comparisons, not run again
        result = read_many(args.read, args.mlflow)
        for path in getattr(args, "rows", None) or []:  # rows another script derived (bench/wsvog_rereadings.py)
            derived = json.loads(Path(path).read_text())["rows"]
            if clash := {(r["method"], r["variant"]) for r in derived} & {(r["method"], r["variant"]) for r in result["rows"]}:
                raise SystemExit(f"{path}: rows {sorted(clash)} are also trained rows of the comparisons read")
            result["rows"] += derived
            result.setdefault("derived_rows_from", []).append(path)
    else:
        result = compare([f"methods={args.methods}", f"variants={args.variants}",
                          "seeds=[" + ",".join(map(str, args.seeds)) + "]", f"epochs={args.epochs}",
                          f"data.root={ds.root}", f"concurrent={args.concurrent}", *args.overrides],
                         cwd=REPO, tracking_uri=args.mlflow)
    out = {"dataset": str(ds.root), "digest": ds.digest, "generator_overrides": knobs, "epochs": args.epochs,
           "seeds": args.seeds, "baselines": baselines, **result, "table": tables(baselines, result["rows"])}
    write(args.out, out)
    print(out["table"])
    return 0
