"""Every Tune callback of the driver; Tune pickles them with its experiment state.

- :class:`MlflowTrialLogger`: one MLflow child run per trial (a sweep's trial, a comparison's cell,
  an extension's numbered trial), its params, per-epoch curves and final test record, queued on the
  sweep's :class:`~orchestration.tracking.sender.Sender`.
- :class:`FinalTest`, :func:`catch_up`: each ended trial's selected checkpoint evaluated on the test
  splits exactly once (below).
- :class:`ProgressLines`: one console line when a trial starts, ends or fails; used instead of Ray
  Tune's periodic status tables (which print every trial's full config and checkpoint path) unless
  ``verbose=`` asks for those. Each end line says the trial's result, how many trials are done, the
  best value so far and the elapsed time.

Selection on validation, the test splits evaluated once per trial, when it ends:

Every epoch a trial reports ``val/<metric>`` of the predictor it would deliver now (each output
stage of its recipe at its best-validation epoch so far, :mod:`grounding.training`) and saves that
predictor as ``selected.pt`` in its checkpoint; Tune keeps the best-scoring checkpoints by the
same metric (``checkpoint_score_attribute``) and always the latest one. A trial never evaluates
a test split itself: a Tune function trainable is not told that ASHA stopped it (its actor is
simply stopped after a report), so it cannot know which epoch is its last.

The driver knows. :class:`FinalTest` is a Tune callback: ``on_trial_complete`` (called by Tune
for a trial that returned and for one that a scheduler stopped, after its last checkpoint was
registered) starts one Ray task (:func:`orchestration.worker.final_eval.evaluate_selected`) that loads ``selected.pt`` from the trial's latest checkpoint
and evaluates the IID and OOD test splits. The task asks for no CPU, so it starts at once beside
the running trials instead of queueing behind them (it is short next to training, and one-thread
torch). Finished evaluations are logged to the trial's MLflow child run (``test_iid/*``,
``test_ood/*`` at ``step = selected epoch``; tags ``selected_epoch`` and ``test_evaluated``) at
the next step of Tune's loop. A model that declares inference-only knobs
(:mod:`grounding.inference_grid`, e.g. ``vcma``'s beta) is also scored on the val split at every
point of their grid, at the same selected checkpoint, and the child run gets the table
``inference_grid/<knob>.json`` and the figure ``inference_grid/<knob>.png``
(:func:`orchestration.tracking.figures.inference_grid`); ``on_experiment_end`` waits for the rest. If the driver dies between
a trial's end and its evaluation, :func:`catch_up` (run after ``Tuner.fit`` returns, also after
``resume=``) evaluates every ended trial whose child run lacks ``test_evaluated``; so every
trial is tested exactly once.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable

import ray
from ray.tune import Callback

from grounding.credentials import scrub

from .cli.compare_args import Cell
from .tracking.sender import Sender, sender
from .worker.final_eval import evaluate_selected, trial_checkpoint
from .worker.spec import TrialSpec


def _trial_number(trial, offset: int = 0) -> str:
    """The trial's position in the search (1 = first suggested), from Tune's experiment tag; an
    extension's trials count on after the ``offset`` earlier ones."""
    head = str(getattr(trial, "experiment_tag", "")).split("_", 1)[0]
    return str(int(head) + offset) if head.isdigit() else ""


def _numeric(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)




@dataclasses.dataclass(frozen=True)
class Children:
    """How the child runs of a parent are named, tagged and parameterised: a sweep's trials
    (``<sweep>-<trial id>``), a comparison's cells (``cells``: by the cell in the trial's config)
    or an extension's trials (numbered after the ``trial_offset`` earlier ones, tagged ``extension``)."""

    sweep: str
    method: str
    fixed: dict[str, Any] = dataclasses.field(default_factory=dict)
    cells: bool = False
    trial_offset: int = 0
    extension: str = ""

    def name(self, trial) -> str:
        if self.cells:
            return f"{self.sweep}-{_cell(trial).label().replace('/', '-')}"
        return f"{self.sweep}-{trial.trial_id}"

    def tags(self, trial) -> dict[str, str]:
        tags = {"trial_id": trial.trial_id, "sweep": self.sweep, "method": self.method,
                "trial_number": _trial_number(trial, self.trial_offset)}
        if self.extension:
            tags["extension"] = self.extension
        if self.cells:
            c = _cell(trial)
            tags.update(method=c.method, variant=c.variant, seed=str(c.seed), point=c.point)
        return tags

    def params(self, trial) -> dict[str, Any]:
        if self.cells:
            c = _cell(trial)
            return {**c.params, "method": c.method, "variant": c.variant, "seed": c.seed, "trial_id": trial.trial_id}
        return {**self.fixed, **dict(trial.config), "method": self.method, "trial_id": trial.trial_id}


def _cell(trial) -> Cell:
    return Cell(**trial.config["cell"])


class MlflowTrialLogger(Callback):
    """Tune callback: child run per trial with params, per-epoch curves and final metrics.

    The result keys under :attr:`METRIC_PREFIXES` are logged, each at ``step = epoch``. The
    callback only queues records; the sweep's :class:`Sender` writes them (and keeps them through
    an outage). ``children`` says how a child is named, tagged and parameterised.
    """

    METRIC_PREFIXES = ("train/", "val/", "epoch_val/", "stage/", "selected_epoch", "test_iid/", "test_ood/",
                       "time/", "cluster/", "converge/")

    def __init__(self, tracking_uri: str, experiment_id: str, parent_run_id: str, epochs: int,
                 children: Children, pending_path: str | None = None):
        self.tracking_uri = tracking_uri
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.epochs, self.children, self.pending_path = epochs, children, pending_path
        self._last_epoch: dict[str, int] = {}
        self._started: dict[str, float] = {}
        self.dataset_input = None  # lineage.dataset_input(ds): logged as every child's input

    def __getstate__(self):  # Tune pickles callbacks into its experiment state: no credential there
        state = dict(self.__dict__)
        state["tracking_uri"] = scrub(self.tracking_uri)
        return state

    @property
    def sender(self) -> Sender:
        s = sender(self.tracking_uri, self.experiment_id, self.parent_run_id, self.epochs, self.pending_path)
        if s.dataset_input is None:
            s.dataset_input = self.dataset_input
        return s

    def run_ids(self) -> dict[str, str]:
        """trial id -> child run id of the children the sender has created so far."""
        return dict(self.sender._runs)

    def _start(self, trial) -> None:
        self.sender.put({
            "op": "start", "tid": trial.trial_id, "run_name": self.children.name(trial),
            "tags": {"mlflow.parentRunId": self.parent_run_id, **self.children.tags(trial)},
            "params": {k: scrub(str(v)) for k, v in self.children.params(trial).items()}})

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
                   if k.startswith(self.METRIC_PREFIXES) and _numeric(v) and k != "time/first_step_unix"]
        if "time/first_step_unix" in result and tid in self._started:
            # Tune's trial start -> the trial's first training step, both on this machine's clock
            metrics.append(("time/startup_s", float(result["time/first_step_unix"]) - self._started[tid], now))
        metrics.append(("epoch", float(epoch), now))
        tags = {k[4:]: str(v) for k, v in result.items() if k.startswith("tag/")}  # e.g. the backbone used
        self.sender.put({"op": "metrics", "tid": tid, "epoch": epoch, "metrics": metrics, "tags": tags})

    def log_final(self, trial_id: str, result: dict) -> None:
        """The test evaluation of a trial's selected checkpoint (:func:`evaluate_selected`), through
        the sender: the one final-test record, also for :func:`catch_up`."""
        now = int(time.time() * 1000)
        step = int(result["selected_epoch"])
        last = int(result.get("last_epoch", step))
        metrics = [(k, float(v), now, last if k.startswith("last/") else step) for k, v in result.items()
                   if k.startswith(("test_iid/", "test_ood/", "last/", "time/")) and _numeric(v)]
        tags = {"selected_epoch": str(step), "test_evaluated": "true",
                **({"last_epoch": str(last)} if "last_epoch" in result else {}),
                **{f"stage.{n}.selected_epoch": str(e) for n, e in result.get("stages", {}).items()}}
        op = {"op": "batch", "tid": trial_id, "metrics": metrics, "tags": tags}
        if result.get("inference_grid"):  # a model's inference-only knobs over their grid, on val
            op["grid"] = result["inference_grid"]
        self.sender.put(op)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.sender.put({"op": "end", "tid": trial.trial_id, "status": "FINISHED", "stopped_early_check": True})

    def on_trial_error(self, iteration, trials, trial, **info):
        self.sender.put({"op": "end", "tid": trial.trial_id, "status": "FAILED"})

    def on_experiment_end(self, trials, **info):
        self.sender.put({"op": "sweep_end"})


def _final_task():
    """The Ray task of :func:`evaluate_selected`: no CPU asked, so it starts at once beside the trials."""
    return ray.remote(num_cpus=0, max_retries=1)(evaluate_selected)


class FinalTest(Callback):
    """Evaluate each ended trial's selected checkpoint on the test splits, once (module docstring)."""

    def __init__(self, spec: TrialSpec, logger: MlflowTrialLogger, max_in_flight: int = 2):
        self.spec, self.logger, self.max_in_flight = spec, logger, max_in_flight
        self._queue: list = []  # (trial, checkpoint) not started yet
        self._pending: dict = {}  # trial_id -> (ObjectRef, trial)

    def __getstate__(self):  # Tune pickles callbacks with the experiment state
        state = dict(self.__dict__)
        state["_pending"], state["_queue"] = {}, []  # redone by catch_up after a restore
        return state

    def on_trial_complete(self, iteration, trials, trial, **info):
        ckpt = trial_checkpoint(trial.checkpoint, trial.last_result, self.spec.storage_path)
        if ckpt is not None:
            self._queue.append((trial, ckpt))
            self._launch()

    def _launch(self) -> None:
        while self._queue and len(self._pending) < self.max_in_flight:
            trial, ckpt = self._queue.pop(0)
            self._pending[trial.trial_id] = (_final_task().remote(ckpt, self.spec), trial)

    def _drain(self, timeout: float | None) -> None:
        while self._pending:
            self._collect(timeout)
            self._launch()
            if timeout is not None:
                return

    def _collect(self, timeout) -> None:
        refs = {ref: tid for tid, (ref, _) in self._pending.items()}
        ready, _ = ray.wait(list(refs), num_returns=1 if timeout is None else len(refs), timeout=timeout)
        for ref in ready:
            tid = refs[ref]
            _, trial = self._pending.pop(tid)
            try:
                result = ray.get(ref)
            except Exception as e:  # noqa: BLE001 - recorded on the run, the sweep goes on
                print(f"[sweep] test evaluation of trial {tid} failed: {type(e).__name__}: {e}", flush=True)
                continue
            self.logger.log_final(trial.trial_id, result)  # through the sender: kept through an MLflow outage

    def on_step_begin(self, iteration, trials, **info):
        self._drain(timeout=0)

    def on_experiment_end(self, trials, **info):
        self._drain(timeout=None)


def catch_up(results, spec: TrialSpec, logger: MlflowTrialLogger, client, log=print) -> int:
    """Evaluate every ended trial of ``results`` whose MLflow child has no test metrics yet; the
    records go through ``logger``'s sender like :class:`FinalTest`'s."""
    todo = []
    for r in results:
        tid = (r.metrics or {}).get("trial_id")
        ckpt = trial_checkpoint(r.checkpoint, r.metrics, spec.storage_path)
        if r.error is not None or ckpt is None or not tid:
            continue
        found = client.search_runs([logger.experiment_id], max_results=1, filter_string=(
            f"tags.mlflow.parentRunId = '{logger.parent_run_id}' and tags.trial_id = '{tid}'"))
        if found and found[0].data.tags.get("test_evaluated") != "true":
            todo.append((tid, _final_task().remote(ckpt, spec)))
    for tid, ref in todo:
        logger.log_final(tid, ray.get(ref))
    if todo:
        log(f"evaluated {len(todo)} trial(s) whose test evaluation was interrupted")
    return len(todo)


class ProgressLines(Callback):
    def __init__(self, metric: str, total: int, label: Callable | None = None, prefix: str = "[sweep]"):
        self.metric, self.total, self.prefix = metric, total, prefix
        self.label = label
        self.t0 = time.time()
        self.started: dict[str, float] = {}
        self.last: dict[str, dict] = {}
        self.done = 0
        self.failed = 0
        self.best: float | None = None

    def __getstate__(self):  # Tune pickles callbacks with the experiment state; labels may be lambdas
        state = dict(self.__dict__)
        state["label"] = None
        return state

    def _name(self, trial) -> str:
        if self.label is not None:
            try:
                return str(self.label(trial))
            except Exception:  # a label that does not fit this trial's config
                pass
        return trial.trial_id

    def _print(self, msg: str) -> None:
        print(f"{self.prefix} {msg}", flush=True)

    def _elapsed(self) -> str:
        s = int(time.time() - self.t0)
        return f"{s // 60}:{s % 60:02d}"

    def on_trial_start(self, iteration, trials, trial, **info):
        self.started[trial.trial_id] = time.time()
        self._print(f"start {self._name(trial)} ({len(self.started)}/{self.total} started, {self._elapsed()} elapsed)")

    def on_trial_restore(self, iteration, trials, trial, **info):
        self.started.setdefault(trial.trial_id, time.time())
        self._print(f"resume {self._name(trial)}")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.last[trial.trial_id] = result

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.done += 1
        result = self.last.get(trial.trial_id) or getattr(trial, "last_result", {}) or {}
        value = result.get(self.metric)
        if isinstance(value, (int, float)):
            self.best = value if self.best is None else max(self.best, value)
        took = time.time() - self.started.get(trial.trial_id, time.time())
        epochs = result.get("epoch", result.get("training_iteration", "?"))
        shown = f"{value:.4f}" if isinstance(value, (int, float)) else "-"
        best = f"{self.best:.4f}" if self.best is not None else "-"
        self._print(f"done  {self._name(trial)}: {self.metric} {shown} after {epochs} epochs in {took:.0f}s "
                    f"({self.done + self.failed}/{self.total} ended, best {best}, {self._elapsed()} elapsed)")

    def on_trial_error(self, iteration, trials, trial, **info):
        self.failed += 1
        err = getattr(trial, "error_file", None) or "see the Ray logs"
        self._print(f"FAILED {self._name(trial)} ({self.done + self.failed}/{self.total} ended): {err}")
