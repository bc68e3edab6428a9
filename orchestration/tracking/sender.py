"""The sweep's MLflow writer: a Tune callback queues each trial record and one background thread
per sweep (:class:`Sender`) writes them, so logging never runs inside a training step and a
tracking server that goes away holds nothing up (the records wait and are written when it is
back, at the end of the sweep, or on ``resume=``). Each result becomes one ``log_batch`` call.
Child runs are found again by their ``trial_id`` tag, so a resumed sweep reuses the parent and
every child instead of duplicating them, and an epoch that was already logged is never logged twice.
"""

from __future__ import annotations

import json
import threading
import time

from mlflow.entities import Metric, RunTag
from mlflow.tracking import MlflowClient

from grounding.credentials import scrub
from grounding.data import storage

from .figures import inference_grid, learning_curves
from .runs import METRIC_LIMIT, log_params


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

    def spill(self) -> None:
        """Keep every record not written yet in ``pending_path`` now (the driver is stopping)."""
        self._spill(force=True)

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
                log_params(self.client, run_id, op["params"])
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
