"""MLflow: one parent run per sweep, one nested child run per trial.

All MLflow calls happen on the driver: a Tune callback queues each record and one background
thread per sweep (:class:`Sender`) writes them, so logging never runs inside a training step and a
tracking server that goes away holds nothing up (the records wait and are written when it is
back, at the end of the sweep, or on ``resume=``). Each result becomes one ``log_batch`` call. Child runs are found again by their
``trial_id`` tag, so a resumed sweep reuses the parent and every child instead of duplicating
them, and an epoch that was already logged is never logged twice.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from ray.tune import Callback

from grounding.credentials import scrub, scrub_tree
from grounding.data import storage
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
    run = client.create_run(exp_id, run_name=sweep, tags=scrub_tree({"sweep": sweep, **tags}))
    _log_params(client, run.info.run_id, params)
    return run.info.run_id


def _log_params(client: MlflowClient, run_id: str, params: dict[str, Any]) -> None:
    items = [Param(k, scrub(str(v))[:6000]) for k, v in sorted(params.items())]
    for i in range(0, len(items), PARAM_LIMIT):
        client.log_batch(run_id, params=items[i:i + PARAM_LIMIT])


def _trial_number(trial) -> str:
    """The trial's position in the search (1 = first suggested), from Tune's experiment tag."""
    head = str(getattr(trial, "experiment_tag", "")).split("_", 1)[0]
    return head if head.isdigit() else ""


def _numeric(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


class Sender:
    """Sends a sweep's trial records to MLflow in order, from a background thread, so a slow or
    absent tracking server never holds up Tune's driver loop (trials keep training and
    checkpointing). A record that cannot be sent waits, with the ones after it, and is retried
    every few seconds; while the server is away the queue is also kept in ``pending_path`` (the
    sweep's experiment folder), so a sweep that ends (or is killed) before the server returns
    writes the rest on ``resume=``.

    Sending is idempotent: a child run is found again by its ``trial_id`` tag before one is
    created, and an epoch already in the run's history (a request whose answer was lost) is not
    logged twice.
    """

    def __init__(self, tracking_uri: str, experiment_id: str, parent_run_id: str, epochs: int,
                 pending_path: str | None = None, retry_s: float = 5.0):
        self.tracking_uri, self.experiment_id, self.parent_run_id = tracking_uri, experiment_id, parent_run_id
        self.epochs, self.pending_path, self.retry_s = epochs, pending_path, retry_s
        self._queue: list[dict] = []
        self._cv = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._client: MlflowClient | None = None
        self.dataset_input = None  # lineage.dataset_input(ds): logged as every new child's input
        self._runs: dict[str, str] = {}
        self._sent_epoch: dict[str, int] = {}
        self._verify = False  # after a failed request: check the history before logging an epoch
        self._down_since: float | None = None
        self._last_spill = 0.0
        self.down_s = 0.0  # seconds the server was unreachable
        self.outages = 0
        self.last_error = ""
        self.delayed: dict[str, int] = {}  # kind -> records that waited for the server and were sent

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = MlflowClient(self.tracking_uri)
        return self._client

    # ------------------------------------------------------------------ queue
    def put(self, op: dict) -> None:
        with self._cv:
            op = dict(op, delayed=self._down_since is not None)
            self._queue.append(op)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="mlflow-sender", daemon=True)
                self._thread.start()
            self._cv.notify_all()

    def pending(self) -> int:
        with self._cv:
            return len(self._queue)

    def drain(self, timeout: float) -> bool:
        """Wait until everything queued is sent (True) or ``timeout`` seconds pass (False)."""
        deadline = time.time() + timeout
        with self._cv:
            while self._queue:
                left = deadline - time.time()
                if left <= 0:
                    return False
                self._cv.wait(min(left, 1.0))
        return True

    def close(self, timeout: float) -> bool:
        """Drain for up to ``timeout`` s, stop the thread and keep what is left in
        ``pending_path`` (removed when nothing is left). True when everything was sent."""
        done = self.drain(timeout)
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self._spill(force=True)
        return done

    def load_pending(self) -> int:
        """Queue the records an earlier run of this sweep could not send (first)."""
        if not self.pending_path:
            return 0
        ops = storage.read_json(self.pending_path, missing=[])
        with self._cv:
            self._queue[:0] = [dict(op, delayed=True) for op in ops]
        if ops:
            self.put({"op": "noop"})  # starts the thread
        return len(ops)

    def _spill(self, force: bool = False) -> None:
        if not self.pending_path or (not force and time.time() - self._last_spill < self.retry_s):
            return
        self._last_spill = time.time()
        with self._cv:
            ops = [{k: v for k, v in op.items() if k != "delayed"} for op in self._queue if op["op"] != "noop"]
        try:
            fs, path = storage.filesystem(self.pending_path)
            if ops:
                fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
                with fs.open(path, "wb") as f:
                    f.write(json.dumps(ops).encode())
            elif fs.exists(path):
                fs.rm(path)
        except Exception:  # noqa: BLE001 - the queue is still in memory; try again later
            pass

    def _loop(self) -> None:
        wait = 1.0
        while True:
            with self._cv:
                while not self._queue and not self._closed:
                    self._cv.wait()
                if self._closed and (not self._queue or self._down_since is not None):
                    return
                op = self._queue[0]
            try:
                self._apply(op)
            except Exception as e:  # noqa: BLE001 - the server is away or failing: keep the record
                now = time.time()
                if self._down_since is None:
                    self._down_since, self.outages = now, self.outages + 1
                    with self._cv:
                        for queued in self._queue:
                            queued["delayed"] = True
                self.last_error = scrub(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")[:300]
                self._verify = True
                self._spill()
                with self._cv:
                    if not self._closed:
                        self._cv.wait(wait)
                wait = min(wait * 2, self.retry_s)
                continue
            wait = 1.0
            recovered = False
            with self._cv:
                self._queue.pop(0)
                if self._down_since is not None:
                    self.down_s += time.time() - self._down_since
                    self._down_since, recovered = None, True
                if op.get("delayed") and op["op"] != "noop":
                    self.delayed[op["op"]] = self.delayed.get(op["op"], 0) + 1
                self._cv.notify_all()
            if recovered:
                self._spill(force=True)

    # ---------------------------------------------------------------- sending
    def _find_child(self, trial_id: str) -> str | None:
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.mlflow.parentRunId = '{self.parent_run_id}' and tags.trial_id = '{trial_id}'",
            max_results=1,
        )
        return runs[0].info.run_id if runs else None

    def _run(self, op: dict) -> str:
        tid = op["tid"]
        if tid in self._runs:
            return self._runs[tid]
        run_id = self._find_child(tid)
        if run_id is None:
            run_id = self.client.create_run(self.experiment_id, run_name=op.get("run_name") or tid,
                                            tags=op.get("tags") or {"mlflow.parentRunId": self.parent_run_id,
                                                                    "trial_id": tid}).info.run_id
            if self.dataset_input is not None:
                self.client.log_inputs(run_id, datasets=[self.dataset_input])
            self._sent_epoch[tid] = 0
        else:  # a resumed sweep (or a retried request): continue after its last logged epoch
            hist = self.client.get_metric_history(run_id, "epoch")
            self._sent_epoch[tid] = max((int(m.step) for m in hist), default=0)
        self._runs[tid] = run_id
        return run_id

    def _apply(self, op: dict) -> None:
        kind = op["op"]
        if kind == "noop":
            return
        if kind == "sweep_end":  # safety net: nothing stays RUNNING (e.g. trials that never reported)
            for run in self.client.search_runs(
                    [self.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{self.parent_run_id}' "
                                                        f"and attributes.status = 'RUNNING'"):
                self.client.set_terminated(run.info.run_id, status="KILLED")
            return
        tid = op["tid"]
        known = tid in self._runs
        run_id = self._run(op)
        if kind == "start":
            if known or self._sent_epoch.get(tid):
                self.client.update_run(run_id, status="RUNNING")
            if op.get("params"):
                _log_params(self.client, run_id, op["params"])
        elif kind == "metrics":
            epoch = op["epoch"]
            if epoch <= self._sent_epoch.get(tid, 0):
                return  # already logged (a trial resumed from an older checkpoint, a resent record)
            if self._verify and any(int(m.step) == epoch for m in self.client.get_metric_history(run_id, "epoch")):
                self._sent_epoch[tid] = epoch
                self._verify = False
                return
            metrics = [Metric(k, v, ts, epoch) for k, v, ts in op["metrics"]]
            tags = [RunTag(k, v) for k, v in (op.get("tags") or {}).items()]
            for i in range(0, len(metrics), METRIC_LIMIT):
                self.client.log_batch(run_id, metrics=metrics[i:i + METRIC_LIMIT], tags=tags if i == 0 else [])
            self._sent_epoch[tid] = epoch
        elif kind == "batch":  # metrics at their own steps and tags (the final test evaluation)
            metrics = [Metric(k, v, ts, step) for k, v, ts, step in op["metrics"]]
            if self._verify and metrics and any(
                    int(m.step) == metrics[0].step for m in self.client.get_metric_history(run_id, metrics[0].key)):
                self._verify = False
                return  # sent before; its answer was lost
            if op.get("grid"):  # before the tags: test_evaluated marks the record as complete
                from .figures import inference_grid

                inference_grid(self.client, run_id, op["grid"])
            self.client.log_batch(run_id, metrics=metrics, tags=[RunTag(k, v) for k, v in op["tags"].items()])
        elif kind == "end":
            done = self._sent_epoch.get(tid, 0)
            tags = [RunTag("epochs_completed", str(done))]
            if op.get("stopped_early_check"):
                tags.append(RunTag("stopped_early", str(done < self.epochs).lower()))
            self.client.log_batch(run_id, tags=tags)
            if op["status"] == "FINISHED":
                try:
                    from .figures import learning_curves

                    learning_curves(self.client, run_id)
                except Exception as e:  # noqa: BLE001 - a figure never fails a sweep
                    print(f"[mlflow] learning-curve figure of {tid} not logged: {scrub(str(e))}", flush=True)
            self.client.set_terminated(run_id, status=op["status"])
        self._verify = False

    def report(self) -> str:
        """One paragraph for the summary on what waited for the tracking server (empty if nothing did)."""
        left = self.pending()
        if not self.outages and not left and not self.delayed:
            return ""
        names = {"metrics": "epoch results", "start": "run starts", "end": "run ends", "sweep_end": "sweep end",
                 "batch": "test evaluations"}
        waited = ", ".join(f"{n} {names.get(k, k)}" for k, n in sorted(self.delayed.items()))
        down = self.down_s + (time.time() - self._down_since if self._down_since else 0.0)
        text = (f"MLflow at {scrub(self.tracking_uri)} was unreachable {self.outages} time(s), {down:.0f} s in all "
                f"(last error: {self.last_error or '-'}).")
        if waited:
            text += f" Delayed and written when it was back: {waited}."
        if left:
            text += (f" {left} record(s) are not written yet; they are kept in {self.pending_path} and written by "
                     f"python -m orchestration.sweep resume=<this sweep>.")
        else:
            text += " Nothing is missing."
        return text


_SENDERS: dict[str, Sender] = {}


def sender(tracking_uri: str, experiment_id: str, parent_run_id: str, epochs: int,
           pending_path: str | None = None) -> Sender:
    """The one :class:`Sender` of a sweep (its parent run) in this process; every copy of the
    callback shares it. The sweep creates it first, with the real tracking URI: the callback that
    Tune pickles into its experiment state holds the URI without credentials."""
    if parent_run_id not in _SENDERS:
        _SENDERS[parent_run_id] = Sender(tracking_uri, experiment_id, parent_run_id, epochs, pending_path)
    return _SENDERS[parent_run_id]


class MlflowTrialLogger(Callback):
    """Tune callback: child run per trial with params, per-epoch curves and final metrics.

    ``metric_prefixes`` selects which result keys are logged (e.g. ``train/``, ``val/``,
    ``test_iid/``, ``test_ood/``, ``time/``), each at ``step = epoch``. The callback only queues
    records; the sweep's :class:`Sender` writes them (and keeps them through an outage).
    """

    def __init__(self, tracking_uri: str, experiment_id: str, parent_run_id: str, sweep: str,
                 method: str, fixed: dict[str, Any], epochs: int,
                 metric_prefixes=("train/", "val/", "epoch_val/", "stage/", "selected_epoch", "test_iid/",
                                  "test_ood/", "time/", "cluster/"),
                 pending_path: str | None = None):
        self.tracking_uri = tracking_uri
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.sweep, self.method, self.fixed, self.epochs = sweep, method, dict(fixed), epochs
        self.metric_prefixes = tuple(metric_prefixes)
        self.pending_path = pending_path
        self._last_epoch: dict[str, int] = {}
        self._started: dict[str, float] = {}
        self.dataset_input = None  # lineage.dataset_input(ds): logged as every child's input

    def __getstate__(self):  # Tune pickles callbacks into its experiment state: no credential there
        state = dict(self.__dict__)
        state["tracking_uri"] = scrub(self.tracking_uri)
        return state

    @property
    def sender(self) -> Sender:
        s = sender(self.tracking_uri, self.experiment_id, self.parent_run_id, self.epochs,
                   getattr(self, "pending_path", None))
        if s.dataset_input is None:
            s.dataset_input = getattr(self, "dataset_input", None)
        return s

    def run_ids(self) -> dict[str, str]:
        """trial id -> child run id of the children the sender has created so far."""
        return dict(self.sender._runs)

    # what a new child run is called, tagged and parameterised with (a comparison overrides these)
    def child_name(self, trial) -> str:
        return f"{self.sweep}-{trial.trial_id}"

    def child_tags(self, trial) -> dict[str, str]:
        return {"trial_id": trial.trial_id, "sweep": self.sweep, "method": self.method,
                "trial_number": _trial_number(trial)}

    def child_params(self, trial) -> dict[str, Any]:
        return {**self.fixed, **dict(trial.config), "method": self.method, "trial_id": trial.trial_id}

    def _start(self, trial) -> None:
        self.sender.put({
            "op": "start", "tid": trial.trial_id, "run_name": self.child_name(trial),
            "tags": {"mlflow.parentRunId": self.parent_run_id, **self.child_tags(trial)},
            "params": {k: scrub(str(v)) for k, v in self.child_params(trial).items()}})

    # ------------------------------------------------------------- callbacks
    def on_trial_start(self, iteration, trials, trial, **info):
        self._started[trial.trial_id] = time.time()
        self._start(trial)

    def on_trial_restore(self, iteration, trials, trial, **info):
        self._started.setdefault(trial.trial_id, time.time())
        self._start(trial)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        tid = trial.trial_id
        epoch = int(result.get("epoch", result.get("training_iteration", 0)))
        if epoch <= self._last_epoch.get(tid, 0):
            return  # already logged (a trial resumed from an older checkpoint)
        self._last_epoch[tid] = epoch
        now = int(time.time() * 1000)
        metrics = [(k, float(v), now) for k, v in result.items()
                   if k.startswith(self.metric_prefixes) and _numeric(v) and k != "time/first_step_unix"]
        if "time/first_step_unix" in result and tid in self._started:
            # Tune's trial start -> the trial's first training step, both on this machine's clock
            metrics.append(("time/startup_s", float(result["time/first_step_unix"]) - self._started[tid], now))
        metrics.append(("epoch", float(epoch), now))
        tags = {k[4:]: str(v) for k, v in result.items() if k.startswith("tag/")}  # e.g. the backbone used
        self.sender.put({"op": "metrics", "tid": tid, "epoch": epoch, "metrics": metrics, "tags": tags})

    def log_final(self, trial, result: dict) -> None:
        """The test evaluation of a trial's selected checkpoint (``final_test``), through the sender."""
        now = int(time.time() * 1000)
        step = int(result["selected_epoch"])
        last = int(result.get("last_epoch", step))
        metrics = [(k, float(v), now, last if k.startswith("last/") else step) for k, v in result.items()
                   if k.startswith(("test_iid/", "test_ood/", "last/", "time/")) and _numeric(v)]
        tags = {"selected_epoch": str(step), "test_evaluated": "true",
                **({"last_epoch": str(last)} if "last_epoch" in result else {}),
                **{f"stage.{n}.selected_epoch": str(e) for n, e in result.get("stages", {}).items()}}
        op = {"op": "batch", "tid": trial.trial_id, "metrics": metrics, "tags": tags}
        if result.get("inference_grid"):  # a model's inference-only knobs over their grid, on val
            op["grid"] = result["inference_grid"]
        self.sender.put(op)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.sender.put({"op": "end", "tid": trial.trial_id, "status": "FINISHED", "stopped_early_check": True})

    def on_trial_error(self, iteration, trials, trial, **info):
        self.sender.put({"op": "end", "tid": trial.trial_id, "status": "FAILED"})

    def on_experiment_end(self, trials, **info):
        self.sender.put({"op": "sweep_end"})


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
