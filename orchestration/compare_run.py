"""Run one comparison (``python -m orchestration.compare``) on the shared
:class:`~orchestration.driver.Driver`: every cell (method x variant x seed) is one trial of a Tune
grid, no search; the parent gets the table of mean, std and 95% CI per split and metric
(:mod:`orchestration.tracking.summary`), each child its selected model."""

from __future__ import annotations

import dataclasses
import math
import shlex
import time
from pathlib import Path

from mlflow.entities import Metric
from ray import tune

from grounding import tasks
from grounding.data.manifest import DataError

from . import preflight as pre
from .callbacks import Children
from .cli.compare_args import Cell, CompareConfig
from .cli.keys import ConfigError, fail
from .driver import MLFLOW_END_WAIT_S, Driver, storage_path, trial_spec
from .search import tuner as tuner_mod
from .tracking import figures, lineage, runs
from .tracking.summary import MARKDOWN_FILE, TABLE_FILE, group_results, markdown, table_rows
from .worker.trial import cell_trial


def _log(msg: str) -> None:
    print(f"[compare] {msg}", flush=True)


def _open_dataset(ccfg: CompareConfig, cwd: Path):
    """The sweep's pre-Ray checks: services, the dataset, every cell built for these data."""
    cfg = ccfg.first
    try:
        pre.check_services(ccfg["tracking_uri"], storage_path(cfg, cwd), cfg["mlflow.experiment"])
        ds = pre.open_dataset(cfg, cwd, log=_log)
        for c in ccfg.cells:
            pre.check_configurations(ds, c.method, [(f"{c.method} variant {c.variant}", c.params)],
                                     workers=cfg["workers"], seed=c.seed)
    except ConfigError as e:
        fail(str(e))
    except (DataError, FileNotFoundError, ValueError) as e:
        fail(str(e).splitlines()[0])
    return ds


def _open_parent(ccfg: CompareConfig, driver: Driver, ds, name: str, metric: str) -> None:
    groups = list(dict.fromkeys((c.method, c.variant) for c in ccfg.cells))
    command = "python -m orchestration.compare " + " ".join(shlex.quote(a) for a in ccfg.argv)
    driver.open_parent(
        name, ds,
        tags={"kind": "compare", "method": ",".join(ccfg.methods), "task": ccfg.task, "command": command,
              **{f"from_sweep.{m}": b["sweep"] for m, b in ccfg.from_sweep.items()},
              "mlflow.note.content": (
                  f"Comparison of {', '.join(ccfg.methods)} ({len(groups)} configurations x "
                  f"{len(ccfg.seeds)} seeds, {ccfg['epochs']} epochs). Artifacts: `{MARKDOWN_FILE}` (mean ± std "
                  f"[95% CI] per split and metric) and `{TABLE_FILE}` (the same as an MLflow table).")},
        params={"methods": ",".join(ccfg.methods), "variants": ",".join(ccfg.variants) or "-",
                "seeds": ",".join(map(str, ccfg.seeds)), "point": ccfg["point"],
                "points": ",".join(f"{m}:{p}" for m, p in ccfg["points"].items()), "epochs": ccfg["epochs"],
                "metric": metric, "cells": len(ccfg.cells), "data_root": ds.root,
                **{f"from_sweep.{m}": f"{b['sweep']} (run {b['run_id']})" for m, b in ccfg.from_sweep.items()}})
    _log(f"{len(ccfg.cells)} trials: {', '.join(f'{m}/{v}' for m, v in groups)} x seeds "
         f"[{','.join(map(str, ccfg.seeds))}], {ccfg['epochs']} epoch{'s' if ccfg['epochs'] != 1 else ''} each")


def _log_models(ccfg: CompareConfig, driver: Driver, ds, results, metric: str) -> None:
    """Each cell's selected checkpoint as its child's model, with its resolved configuration."""
    driver.sender.drain(MLFLOW_END_WAIT_S)  # every child exists first
    run_ids = driver.logger.run_ids()
    for r in results:
        tid = (r.metrics or {}).get("trial_id")
        ckpt = lineage.best_checkpoint(r, metric) if not r.error else None
        if ckpt is not None and tid in run_ids:
            c = Cell(**r.config["cell"])
            lineage.log_model(driver.client, run_ids[tid], ckpt, lineage.resolved_config(
                c.method, ccfg.task, c.params, lineage.data_info(ds), None, metric))


def _fit(ccfg: CompareConfig, driver: Driver, ds, spec, name: str, metric: str) -> str:
    _open_parent(ccfg, driver, ds, name, metric)
    driver.open_sender(ccfg["epochs"])
    exp_path = f"{spec.storage_path.rstrip('/')}/{name}"
    for c in ccfg.cells:  # stages a recipe shares (e.g. causal's backbone), built once per key
        c.shared = driver.shared(spec.cell(c.method, c.seed, c.params, {}), set(), exp_path)
    callbacks = driver.callbacks(spec, Children(name, ccfg.methods[0], cells=True), ds, total=len(ccfg.cells),
                                 label=lambda t: Cell(**t.config["cell"]).label())
    grid = {"cell": tune.grid_search([dataclasses.asdict(c) for c in ccfg.cells])}  # one trial per cell
    tuner = tuner_mod.build(spec, tuner_mod.TuneRun(name=name, storage_path=spec.storage_path, trials=1,
                                                    concurrent=ccfg["concurrent"], metric=metric,
                                                    verbose=ccfg["verbose"], fn=cell_trial, param_space=grid),
                            callbacks)
    t_fit = time.time()
    results = driver.fit(tuner, spec)
    _log_models(ccfg, driver, ds, results, metric)
    errors = [r for r in results if r.error]
    _log(f"tune finished in {time.time() - t_fit:.0f}s; {len(results)} trials, {len(errors)} failed")
    if driver.interrupted:
        return "KILLED"
    return "FINISHED" if not errors else "FAILED"


def run_compare(ccfg: CompareConfig) -> int:
    cwd = Path.cwd()
    cfg = ccfg.first
    ds = _open_dataset(ccfg, cwd)
    name = ccfg["name"] or f"compare-{time.strftime('%Y%m%d-%H%M%S')}"
    metric = cfg["search.metric"] or tasks.get(ccfg.task).default_metric
    spec = trial_spec(cfg, ds, name=name, storage=storage_path(cfg, cwd), method=ccfg.methods[0],
                      epochs=ccfg["epochs"], seed=0, fixed={}, metric=metric)
    driver = Driver(cfg, ccfg["tracking_uri"], prefix="compare", verbose=ccfg["verbose"])
    if (code := driver.start()) is not None:
        return code
    status = "FAILED"
    try:
        status = _fit(ccfg, driver, ds, spec, name, f"val/{metric}")
    except KeyboardInterrupt:
        status = "KILLED"
        _log("interrupted")
    except SystemExit:
        status = "KILLED"
        raise
    finally:
        driver.close(name, f"val/{metric}", None,
                     lambda note: finish(driver, ccfg, name, status, tasks.scoring_protocol(ds))
                     + ("\n\n" + note if note else ""))
    if driver.interrupted:
        return driver.interrupt.exit_code
    return 0 if status == "FINISHED" else 1


def _log_table(client, parent: str, rows: list[dict]) -> None:
    """The rows as the parent's MLflow table and its test means/stds as metrics."""
    client.log_table(parent, data={k: [r[k] for r in rows] for k in rows[0]}, artifact_file=TABLE_FILE)
    now = int(time.time() * 1000)
    metrics = [Metric(f"{r['split']}/{r['metric']}/{r['method']}.{r['variant']}/{stat}", float(r[stat]), now, 0)
               for r in rows if r["split"] != "val" for stat in ("mean", "std") if not math.isnan(r[stat])]
    for i in range(0, len(metrics), runs.METRIC_LIMIT):
        client.log_batch(parent, metrics=metrics[i:i + runs.METRIC_LIMIT])


def finish(driver: Driver, ccfg: CompareConfig, name: str, status: str, protocol: str | None = None) -> str:
    """Aggregate the children into the parent's table and markdown (``protocol``: the data's scoring
    line, :func:`grounding.tasks.scoring_protocol`); end the parent."""
    client, exp_id, parent = driver.client, driver.exp_id, driver.parent
    metric_names = tasks.get(ccfg.task).metric_names
    children = runs.children(client, exp_id, parent)
    rows = table_rows(group_results(children, metric_names, ccfg.methods, ccfg.variants))
    text = markdown(rows, metric_names, f"compare {name}: {ccfg.task}, {ccfg['epochs']} epochs", protocol)
    failed = [r for r in children if r.info.status != "FINISHED"]
    if failed:
        text += "\n\nnot in the table (did not finish): " + ", ".join(
            f"{r.data.tags.get('method')}/{r.data.tags.get('variant')}/seed{r.data.tags.get('seed')} "
            f"({r.info.status})" for r in failed)
    if rows:
        _log_table(client, parent, rows)
    client.log_text(parent, text + "\n", MARKDOWN_FILE)
    artifacts = [MARKDOWN_FILE, TABLE_FILE] if rows else [MARKDOWN_FILE]
    try:
        fig = figures.iid_vs_ood(client, parent, children, tasks.get(ccfg.task).default_metric,
                                 lambda r: f"{r.data.tags.get('method')}/{r.data.tags.get('variant')}")
        artifacts += [fig] if fig else []
    except Exception as e:  # noqa: BLE001 - a figure never fails a comparison
        _log(f"IID-vs-OOD figure not logged: {e}")
    lineage.describe(client, exp_id, parent,
                     f"Comparison of {', '.join(ccfg.methods)}: {len(ccfg.cells)} trials "
                     f"({len(ccfg.seeds)} seeds, {ccfg['epochs']} epochs). `{MARKDOWN_FILE}`: mean ± std "
                     f"[95% CI] per split and metric; `{TABLE_FILE}`: the same as an MLflow table; each child "
                     f"has its learning curves and its selected model under `model/`.", artifacts)
    client.set_terminated(parent, status=status)
    ui = runs.ui_command(driver.tracking_uri, exp_id)
    return text + f"\n\ncompare the trials in MLflow (parent run {parent}):\n  {ui}"
