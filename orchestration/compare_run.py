"""The Ray/MLflow side of ``python -m orchestration.compare`` (imported after validation)."""

from __future__ import annotations

import dataclasses
import math
import shlex
import time
from pathlib import Path
from typing import Any

from .compare import MARKDOWN_FILE, TABLE_FILE, Cell, CompareConfig, group_results, markdown, table_rows, cell_trial
from . import preflight as pre
from .config import ConfigError, fail
from .runner import MLFLOW_END_WAIT_S
from .tracking import MlflowTrialLogger


# -------------------------------------------------------------------------------------- run
def _log(msg: str) -> None:
    print(f"[compare] {msg}", flush=True)


def _run_spec(ccfg: CompareConfig, ds, name: str, storage_path: str) -> dict:
    """The trial's ``run`` dict as the sweep builds it (orchestration/runner.py), fixed schedule."""
    from grounding import tasks

    cfg = ccfg.first
    return {
        "sweep": name, "method": ccfg.methods[0], "task": cfg.task,
        "data_root": ds.root, "data_digest": ds.digest,
        "cache_dir": cfg["data.cache_dir"], "cache_max_bytes": int(cfg["data.cache_max_gb"] * 2**30),
        "epochs": ccfg["epochs"], "seed": 0, "fixed": {},
        "workers": cfg["workers"], "use_trainer": cfg["workers"] > 1 or cfg["trainer"] == "always",
        "cpus_per_worker": cfg["cpus_per_worker"], "gpus_per_worker": cfg["gpus_per_worker"],
        "threads": max(1, int(cfg["cpus_per_worker"])),
        "eval_batch_size": cfg["eval_batch_size"], "storage_path": storage_path,
        "checkpoints_keep": cfg["checkpoints.keep"], "failures": cfg["failures"],
        "metric": cfg["search.metric"] or tasks.get(ccfg.task).default_metric,
        "placement": "SPREAD" if cfg["workers"] > 1 else "PACK",
    }


def run_compare(ccfg: CompareConfig) -> int:
    from grounding import tasks
    from grounding.data.manifest import DataError

    from . import runner

    cwd = Path.cwd()
    cfg = ccfg.first
    task = tasks.get(ccfg.task)
    try:  # the sweep's pre-Ray checks: services, the dataset, every cell built for these data
        pre.check_services(ccfg["tracking_uri"], runner._storage_path(cfg, cwd), cfg["mlflow.experiment"])
        ds = pre.open_dataset(cfg, cwd, log=_log)
        for c in ccfg.cells:
            pre.check_configurations(ds, c.method, [(f"{c.method} variant {c.variant}", c.params)],
                                     workers=cfg["workers"], seed=c.seed)
    except ConfigError as e:
        fail(str(e))
    except (DataError, FileNotFoundError, ValueError) as e:
        fail(str(e).splitlines()[0])

    import ray
    from mlflow.tracking import MlflowClient
    from ray import tune

    from . import lineage, tracking, tuner as tuner_mod
    from .progress import ProgressLines, start_ray

    name = ccfg["name"] or f"compare-{time.strftime('%Y%m%d-%H%M%S')}"
    storage_path = runner._storage_path(cfg, cwd)
    metric = f"val/{cfg['search.metric'] or task.default_metric}"
    run = _run_spec(ccfg, ds, name, storage_path)

    t0 = time.time()
    address = cfg["ray.address"] or None
    start_ray(address, ccfg["verbose"])
    have = ray.cluster_resources()
    _log(f"ray {'joined ' + address if address else 'started locally'} in {time.time() - t0:.1f}s: "
         f"{have.get('CPU', 0):g} CPUs, {have.get('GPU', 0):g} GPUs")
    need = {"CPU": cfg["workers"] * cfg["cpus_per_worker"], "GPU": cfg["workers"] * cfg["gpus_per_worker"]}
    if not address:
        for res, amount in need.items():
            if amount > have.get(res, 0) + 1e-9:
                ray.shutdown()
                fail(f"one trial needs {amount:g} {res} (workers x {res.lower()}s_per_worker) but the local Ray "
                     f"has {have.get(res, 0):g}; allowed: at most {have.get(res, 0):g}")

    tracking_uri = ccfg["tracking_uri"]
    client = MlflowClient(tracking_uri)
    exp_id = tracking.experiment_id(client, cfg["mlflow.experiment"])
    command = "python -m orchestration.compare " + " ".join(shlex.quote(a) for a in ccfg.argv)
    groups_planned = list(dict.fromkeys((c.method, c.variant) for c in ccfg.cells))
    parent = tracking.start_parent(
        client, cfg["mlflow.experiment"], name,
        tags={"kind": "compare", "method": ",".join(ccfg.methods), "task": ccfg.task, "command": command,
              "git_commit": tracking.git_commit(), "data_manifest_sha256": ds.digest, "data_root": ds.root,
              **{f"from_sweep.{m}": b["sweep"] for m, b in ccfg.from_sweep.items()},
              "mlflow.note.content": (
                  f"Comparison of {', '.join(ccfg.methods)} ({len(groups_planned)} configurations x "
                  f"{len(ccfg.seeds)} seeds, {ccfg['epochs']} epochs). Artifacts: `{MARKDOWN_FILE}` (mean ± std "
                  f"[95% CI] per split and metric) and `{TABLE_FILE}` (the same as an MLflow table).")},
        params={"methods": ",".join(ccfg.methods), "variants": ",".join(ccfg.variants) or "-",
                "seeds": ",".join(map(str, ccfg.seeds)), "point": ccfg["point"],
                "points": ",".join(f"{m}:{p}" for m, p in ccfg["points"].items()), "epochs": ccfg["epochs"],
                "metric": metric, "cells": len(ccfg.cells), "data_root": ds.root,
                **{f"from_sweep.{m}": f"{b['sweep']} (run {b['run_id']})" for m, b in ccfg.from_sweep.items()}})
    lineage.mark_training_experiment(client, exp_id)
    lineage.log_dataset(client, parent, ds)
    _log(f"MLflow parent run {parent} in experiment '{cfg['mlflow.experiment']}' at {tracking_uri}")
    _log(f"{len(ccfg.cells)} trials: {', '.join(f'{m}/{v}' for m, v in groups_planned)} x seeds "
         f"[{','.join(map(str, ccfg.seeds))}], {ccfg['epochs']} epoch{'s' if ccfg['epochs'] != 1 else ''} each")

    logger = CompareTrialLogger(tracking_uri, exp_id, parent, name, ccfg.methods[0], {}, ccfg["epochs"])
    logger.dataset_input = lineage.dataset_input(ds)
    progress = ProgressLines(metric, len(ccfg.cells), label=lambda t: Cell(**t.config["cell"]).label(),
                             prefix="[compare]")
    from . import stages
    from .final_test import FinalTest, catch_up

    exp_path = f"{storage_path.rstrip('/')}/{name}"
    status = "FAILED"
    try:
        for c in ccfg.cells:  # stages a recipe shares (e.g. causal's backbone), built once per key
            c.shared = stages.ensure_shared({**run, "method": c.method, "seed": c.seed, "fixed": dict(c.params)},
                                            set(), exp_path, client, exp_id, parent, log=_log)
        tuner = tuner_mod.build(
            run, name=name, storage_path=storage_path, trials=1, concurrent=cfg["concurrent"], metric=metric,
            searcher=None, scheduler=None, callbacks=[logger, FinalTest(run, logger), progress],
            verbose=ccfg["verbose"],
            fn=cell_trial, param_space={"cell": tune.grid_search([dataclasses.asdict(c) for c in ccfg.cells])})
        t_fit = time.time()
        results = tuner.fit()
        catch_up(results, run, client, exp_id, parent, log=_log)
        errors = [r for r in results if r.error]
        logger.sender.drain(MLFLOW_END_WAIT_S)  # every child exists before the table is made
        run_ids = logger.run_ids()
        for r in results:  # each cell's selected checkpoint, with its resolved configuration
            tid = (r.metrics or {}).get("trial_id")
            ckpt = lineage.best_checkpoint(r, metric) if not r.error else None
            if ckpt is not None and tid in run_ids:
                c = Cell(**r.config["cell"])
                lineage.log_model(client, run_ids[tid], ckpt, lineage.resolved_config(
                    c.method, ccfg.task, c.params, lineage.data_info(ds), None, metric))
        status = "FINISHED" if not errors else "FAILED"
        _log(f"tune finished in {time.time() - t_fit:.0f}s; {len(results)} trials, {len(errors)} failed")
    except (KeyboardInterrupt, SystemExit):
        status = "KILLED"
        raise
    finally:
        logger.sender.close(MLFLOW_END_WAIT_S)
        text = finish(client, exp_id, parent, task.metric_names, ccfg, name, tracking.ui_command(tracking_uri, exp_id),
                      status)
        print("\n" + text, flush=True)
        ray.shutdown()
    return 0 if status == "FINISHED" else 1


def finish(client, exp_id: str, parent: str, metric_names: tuple[str, ...], ccfg: CompareConfig, name: str,
           ui: str, status: str) -> str:
    """Aggregate the children into the parent's table and markdown; end the parent."""
    from mlflow.entities import Metric

    from . import tracking

    runs = tracking.children(client, exp_id, parent)
    groups = group_results(runs, metric_names, ccfg.methods, ccfg.variants)
    rows = table_rows(groups)
    text = markdown(rows, metric_names, f"compare {name}: {ccfg.task}, {ccfg['epochs']} epochs")
    failed = [r for r in runs if r.info.status != "FINISHED"]
    if failed:
        text += "\n\nnot in the table (did not finish): " + ", ".join(
            f"{r.data.tags.get('method')}/{r.data.tags.get('variant')}/seed{r.data.tags.get('seed')} "
            f"({r.info.status})" for r in failed)
    if rows:
        client.log_table(parent, data={k: [r[k] for r in rows] for k in rows[0]}, artifact_file=TABLE_FILE)
        now = int(time.time() * 1000)
        metrics = [Metric(f"{r['split']}/{r['metric']}/{r['method']}.{r['variant']}/{stat}", float(r[stat]), now, 0)
                   for r in rows if r["split"] != "val" for stat in ("mean", "std") if not math.isnan(r[stat])]
        for i in range(0, len(metrics), tracking.METRIC_LIMIT):
            client.log_batch(parent, metrics=metrics[i:i + tracking.METRIC_LIMIT])
    client.log_text(parent, text + "\n", MARKDOWN_FILE)
    artifacts = [MARKDOWN_FILE, TABLE_FILE] if rows else [MARKDOWN_FILE]
    from . import figures, lineage
    from grounding import tasks

    try:
        fig = figures.iid_vs_ood(client, parent, runs, tasks.get(ccfg.task).default_metric,
                                 lambda r: f"{r.data.tags.get('method')}/{r.data.tags.get('variant')}")
        artifacts += [fig] if fig else []
    except Exception as e:  # a figure never fails a comparison
        print(f"[compare] IID-vs-OOD figure not logged: {e}", flush=True)
    lineage.describe(client, exp_id, parent,
                     f"Comparison of {', '.join(ccfg.methods)}: {len(ccfg.cells)} trials "
                     f"({len(ccfg.seeds)} seeds, {ccfg['epochs']} epochs). `{MARKDOWN_FILE}`: mean ± std "
                     f"[95% CI] per split and metric; `{TABLE_FILE}`: the same as an MLflow table; each child "
                     f"has its learning curves and its selected model under `model/`.", artifacts)
    client.set_terminated(parent, status=status)
    return text + f"\n\ncompare the trials in MLflow (parent run {parent}):\n  {ui}"


class CompareTrialLogger(MlflowTrialLogger):
    """The sweep's MLflow callback; a child is named, tagged and parameterised by its cell."""

    def child_name(self, trial) -> str:
        return f"{self.sweep}-{Cell(**trial.config['cell']).label().replace('/', '-')}"

    def child_tags(self, trial) -> dict[str, str]:
        c = trial.config["cell"]
        return {**super().child_tags(trial), "method": c["method"], "variant": c["variant"], "seed": str(c["seed"]),
                "point": c.get("point", "paper")}

    def child_params(self, trial) -> dict[str, Any]:
        c = trial.config["cell"]
        return {**c["params"], "method": c["method"], "variant": c["variant"], "seed": c["seed"],
                "trial_id": trial.trial_id}


