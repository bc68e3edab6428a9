"""MLflow: one parent run per sweep, one nested child run per trial.

All MLflow calls happen on the driver, in a Tune callback, so logging never runs inside a
training step. Each result becomes one ``log_batch`` call. Child runs are found again by their
``trial_id`` tag, so a resumed sweep reuses the parent and every child instead of duplicating
them, and an epoch that was already logged is never logged twice.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from ray.tune import Callback

from grounding.data.annotations import REPO_ROOT

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
    run = client.create_run(exp_id, run_name=sweep, tags={"sweep": sweep, **tags})
    _log_params(client, run.info.run_id, params)
    return run.info.run_id


def _log_params(client: MlflowClient, run_id: str, params: dict[str, Any]) -> None:
    items = [Param(k, str(v)[:6000]) for k, v in sorted(params.items())]
    for i in range(0, len(items), PARAM_LIMIT):
        client.log_batch(run_id, params=items[i:i + PARAM_LIMIT])


def _trial_number(trial) -> str:
    """The trial's position in the search (1 = first suggested), from Tune's experiment tag."""
    head = str(getattr(trial, "experiment_tag", "")).split("_", 1)[0]
    return head if head.isdigit() else ""


def _numeric(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


class MlflowTrialLogger(Callback):
    """Tune callback: child run per trial with params, per-epoch curves and final metrics.

    ``metric_prefixes`` selects which result keys are logged (e.g. ``train/``, ``val/``,
    ``test_iid/``, ``test_ood/``, ``time/``), each at ``step = epoch``.
    """

    def __init__(self, tracking_uri: str, experiment_id: str, parent_run_id: str, sweep: str,
                 method: str, fixed: dict[str, Any], epochs: int,
                 metric_prefixes=("train/", "val/", "epoch_val/", "stage/", "selected_epoch", "test_iid/",
                                  "test_ood/", "time/", "cluster/")):
        self.tracking_uri = tracking_uri
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.sweep, self.method, self.fixed, self.epochs = sweep, method, dict(fixed), epochs
        self.metric_prefixes = tuple(metric_prefixes)
        self._runs: dict[str, str] = {}
        self._last_epoch: dict[str, int] = {}
        self._started: dict[str, float] = {}
        self._client: MlflowClient | None = None
        self.dataset_input = None  # lineage.dataset_input(ds): logged as every child's input

    # Tune pickles callbacks with the experiment state; the client is rebuilt after restore.
    def __getstate__(self):
        state = dict(self.__dict__)
        state["_client"] = None
        return state

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = MlflowClient(self.tracking_uri)
        return self._client

    # ---------------------------------------------------------------- runs
    # what a new child run is called, tagged and parameterised with (a comparison overrides these)
    def child_name(self, trial) -> str:
        return f"{self.sweep}-{trial.trial_id}"

    def child_tags(self, trial) -> dict[str, str]:
        return {"trial_id": trial.trial_id, "sweep": self.sweep, "method": self.method,
                "trial_number": _trial_number(trial)}

    def child_params(self, trial) -> dict[str, Any]:
        return {**self.fixed, **dict(trial.config), "method": self.method, "trial_id": trial.trial_id}

    def _find_child(self, trial_id: str) -> str | None:
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.mlflow.parentRunId = '{self.parent_run_id}' and tags.trial_id = '{trial_id}'",
            max_results=1,
        )
        return runs[0].info.run_id if runs else None

    def run_id(self, trial) -> str:
        tid = trial.trial_id
        if tid in self._runs:
            return self._runs[tid]
        run_id = self._find_child(tid)
        if run_id is None:
            run = self.client.create_run(self.experiment_id, run_name=self.child_name(trial),
                                         tags={"mlflow.parentRunId": self.parent_run_id, **self.child_tags(trial)})
            run_id = run.info.run_id
            _log_params(self.client, run_id, self.child_params(trial))
            if self.dataset_input is not None:
                self.client.log_inputs(run_id, datasets=[self.dataset_input])
            self._last_epoch[tid] = 0
        else:  # resumed sweep: continue the same child run after its last logged epoch
            self.client.update_run(run_id, status="RUNNING")
            hist = self.client.get_metric_history(run_id, "train/loss")
            self._last_epoch[tid] = max((int(m.step) for m in hist), default=0)
        self._runs[tid] = run_id
        return run_id

    # ------------------------------------------------------------- callbacks
    def on_trial_start(self, iteration, trials, trial, **info):
        self._started[trial.trial_id] = time.time()
        self.run_id(trial)

    def on_trial_restore(self, iteration, trials, trial, **info):
        self._started.setdefault(trial.trial_id, time.time())
        self.run_id(trial)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        tid = trial.trial_id
        run_id = self.run_id(trial)
        epoch = int(result.get("epoch", result.get("training_iteration", 0)))
        if epoch <= self._last_epoch.get(tid, 0):
            return  # already logged (a trial resumed from an older checkpoint)
        self._last_epoch[tid] = epoch
        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, epoch) for k, v in result.items()
                   if k.startswith(self.metric_prefixes) and _numeric(v) and k != "time/first_step_unix"]
        if "time/first_step_unix" in result and tid in self._started:
            # Tune's trial start -> the trial's first training step, both on this machine's clock
            startup = float(result["time/first_step_unix"]) - self._started[tid]
            metrics.append(Metric("time/startup_s", startup, now, epoch))
        metrics.append(Metric("epoch", float(epoch), now, epoch))
        tags = [RunTag(k[4:], str(v)) for k, v in result.items() if k.startswith("tag/")]  # e.g. the backbone used
        for i in range(0, len(metrics), METRIC_LIMIT):
            self.client.log_batch(run_id, metrics=metrics[i:i + METRIC_LIMIT], tags=tags if i == 0 else [])

    def _end(self, trial, status: str, stopped_early: bool | None = None):
        tid = trial.trial_id
        run_id = self.run_id(trial)
        tags = [RunTag("stopped_early", str(bool(stopped_early)).lower())] if stopped_early is not None else []
        tags.append(RunTag("epochs_completed", str(self._last_epoch.get(tid, 0))))
        self.client.log_batch(run_id, tags=tags)
        if status == "FINISHED":
            try:
                from .figures import learning_curves

                learning_curves(self.client, run_id)
            except Exception as e:  # a figure never fails a sweep
                print(f"[mlflow] learning-curve figure of {tid} not logged: {e}", flush=True)
        self.client.set_terminated(run_id, status=status)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._end(trial, "FINISHED", stopped_early=self._last_epoch.get(trial.trial_id, 0) < self.epochs)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._end(trial, "FAILED")

    def on_experiment_end(self, trials, **info):
        # Safety net: nothing stays RUNNING (e.g. trials that never reported).
        for run in self.client.search_runs([self.experiment_id],
                                           filter_string=f"tags.mlflow.parentRunId = '{self.parent_run_id}' "
                                                         f"and attributes.status = 'RUNNING'"):
            self.client.set_terminated(run.info.run_id, status="KILLED")


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
    client.log_text(parent_run_id, summary_text, "summary.txt")
    client.set_terminated(parent_run_id, status=status)
    return best


def runs_url(base: str, experiment_id: str) -> str:
    """The experiment's runs table in the MLflow UI. The experiment's kind is set to training
    (orchestration/lineage.py), but MLflow 3.17's UI opens any experiment in the GenAI view until
    a browser has chosen "Model training" once; ``workflowType`` in the link chooses it."""
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


def ui_command(tracking_uri: str, experiment_id: str | None = None) -> str:
    if tracking_uri.startswith(("http://", "https://")):
        return f"open {runs_url(tracking_uri, experiment_id) if experiment_id else tracking_uri}"
    line = f"mlflow ui --backend-store-uri {tracking_uri}"
    return line + (f"\n  then open {runs_url('http://127.0.0.1:5000', experiment_id)}" if experiment_id else "")


def default_tracking_uri(cwd: Path) -> str:
    return f"sqlite:///{(cwd / 'mlflow.db').resolve()}"
