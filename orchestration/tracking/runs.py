"""MLflow records of the driver: the experiment, a sweep's parent run and its children, the
stage runs, the commit, the UI link. Everything here runs on the driver (never in a Ray process).

- :func:`experiment_id`, :func:`start_parent`, :func:`finish_parent`, :func:`children`: the parent and its children
- :func:`stage_run`, :func:`log_stage_run`, :func:`link_stage`: a shared stage's own run and the parent's link to it
- :func:`git_commit`, :func:`log_params`, :func:`ui_command`, :func:`runs_url`
"""

from __future__ import annotations

import subprocess
import time
from typing import Any

import mlflow
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from grounding.credentials import scrub, scrub_tree
from grounding.data.annotations import REPO_ROOT
from grounding.recipes import ResolvedStage

PARAM_LIMIT = 100  # params per log_batch call
METRIC_LIMIT = 1000


def git_commit() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                             text=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return (sha + ("-dirty" if dirty else "")) if sha else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def experiment_id(client: MlflowClient, name: str) -> str:
    exp = client.get_experiment_by_name(name)
    return exp.experiment_id if exp else client.create_experiment(name)


def start_parent(client: MlflowClient, experiment: str, sweep: str, tags: dict[str, str],
                 params: dict[str, Any], parent_run_id: str | None = None) -> str:
    """Create the sweep's parent run, or reopen ``parent_run_id`` when resuming."""
    if parent_run_id:
        client.update_run(parent_run_id, status="RUNNING")
        return parent_run_id
    exp_id = experiment_id(client, experiment)
    run = client.create_run(exp_id, run_name=sweep, tags=scrub_tree({"sweep": sweep, **tags}))
    log_params(client, run.info.run_id, params)
    return run.info.run_id


def log_params(client: MlflowClient, run_id: str, params: dict[str, Any]) -> None:
    items = [Param(k, scrub(str(v))[:6000]) for k, v in sorted(params.items())]
    for i in range(0, len(items), PARAM_LIMIT):
        client.log_batch(run_id, params=items[i:i + PARAM_LIMIT])


def children(client: MlflowClient, experiment_id: str, parent_run_id: str):
    return client.search_runs([experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'",
                              max_results=10000)


def finish_parent(client: MlflowClient, experiment_id: str, parent_run_id: str, metric: str,
                  summary_text: str, status: str = "FINISHED") -> dict | None:
    """Record the best child (by its last ``metric``) on the parent and end the parent."""
    best = None
    for run in children(client, experiment_id, parent_run_id):
        value = run.data.metrics.get(metric)
        if value is not None and (best is None or value > best.data.metrics[metric]):
            best = run
    if best is not None:
        params = [Param(f"best.{k}", v) for k, v in best.data.params.items()][:PARAM_LIMIT]
        metrics = [Metric(f"best/{k}", v, int(time.time() * 1000), 0) for k, v in best.data.metrics.items()
                   if k.startswith(("val/", "test_iid/", "test_ood/"))]
        try:
            client.log_batch(parent_run_id, metrics=metrics, params=params,
                             tags=[RunTag("best_trial_id", best.data.tags.get("trial_id", "")),
                                   RunTag("best_run_id", best.info.run_id)])
        except mlflow.exceptions.MlflowException:
            # resumed sweep whose best params were logged before: params are immutable
            client.log_batch(parent_run_id, metrics=metrics,
                             tags=[RunTag("best_trial_id", best.data.tags.get("trial_id", "")),
                                   RunTag("best_run_id", best.info.run_id)])
    client.log_text(parent_run_id, scrub(summary_text), "summary.txt")
    client.set_terminated(parent_run_id, status=status)
    return best


def runs_url(base: str, experiment_id: str) -> str:
    """The experiment's runs table in the MLflow UI. The experiment's kind is set to training
    (:mod:`orchestration.tracking.lineage`), but MLflow 3.17's UI opens any experiment in the GenAI view until
    a browser has chosen "Model training" once; ``workflowType`` in the link chooses it."""
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


def ui_command(tracking_uri: str, experiment_id: str | None = None) -> str:
    if tracking_uri.startswith(("http://", "https://")):
        return f"open {runs_url(tracking_uri, experiment_id) if experiment_id else tracking_uri}"
    line = f"mlflow ui --backend-store-uri {tracking_uri}"
    return line + (f"\n  then open {runs_url('http://127.0.0.1:5000', experiment_id)}" if experiment_id else "")


def stage_run(client, exp_id: str, sweep: str, name: str, key: str, uri: str, rs: ResolvedStage,
              data_digest: str) -> str:
    """The stage's own MLflow run (found again by sweep + key after an interrupted build)."""
    found = client.search_runs([exp_id], filter_string=f"tags.sweep = '{sweep}' and tags.stage_key = '{key}'",
                               max_results=1)
    if found:
        client.update_run(found[0].info.run_id, status="RUNNING")
        return found[0].info.run_id
    run = client.create_run(exp_id, run_name=f"{sweep}-stage-{name}",
                            tags={"sweep": sweep, "kind": "stage", "stage": name, "stage_key": key, "stage_uri": uri,
                                  "method": rs.method, "data_manifest_sha256": data_digest,
                                  "mlflow.note.content": f"Stage `{name}` ({rs.method}) of sweep {sweep}, "
                                                         f"trained once and shared by its trials."})
    ident = rs.identity()
    params = {**{f"model.{k}": v for k, v in ident["model"].items()},
              **{f"optim.{k}": v for k, v in ident["optim"].items()},
              "epochs": ident["epochs"], "select": ",".join(ident["select"]), "init": ident["init"] or "scratch"}
    client.log_batch(run.info.run_id, params=[Param(k, str(v)[:6000]) for k, v in sorted(params.items())])
    return run.info.run_id


def log_stage_run(client, run_id: str, hist: list[dict], man: dict) -> None:
    now = int(time.time() * 1000)
    metrics = [Metric(k, float(v), now, int(h["epoch"])) for h in hist for k, v in h.items()
               if k != "epoch" and isinstance(v, (int, float)) and not isinstance(v, bool)]
    for i in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[i:i + 1000])
    client.log_batch(run_id, tags=[RunTag("selected_epoch", str(man["selected_epoch"])),
                                   RunTag("stage_sha256", man["sha256"])])
    client.set_terminated(run_id, status="FINISHED")


def link_stage(client, exp_id: str, parent: str, name: str, run_id: str, uri: str) -> None:
    """Tags on the sweep's parent run, and a line in its description, pointing at the stage."""
    client.set_tag(parent, f"stage.{name}.run_id", run_id)
    client.set_tag(parent, f"stage.{name}.uri", uri)
    note = client.get_run(parent).data.tags.get("mlflow.note.content", "")
    line = f"Shared stage `{name}`: [its MLflow run](#/experiments/{exp_id}/runs/{run_id}), stored at `{uri}`."
    if run_id and line not in note:
        client.set_tag(parent, "mlflow.note.content", f"{note}\n\n{line}" if note else line)
