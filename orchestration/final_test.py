"""Selection on validation, the test splits evaluated once per trial, when it ends.

Every epoch a trial reports ``val/<metric>`` of the predictor it would deliver now (each output
stage of its recipe at its best-validation epoch so far, :mod:`grounding.recipes`) and saves that
predictor as ``selected.pt`` in its checkpoint; Tune keeps the best-scoring checkpoints by the
same metric (``checkpoint_score_attribute``) and always the latest one. A trial never evaluates
a test split itself: a Tune function trainable is not told that ASHA stopped it (its actor is
simply stopped after a report), so it cannot know which epoch is its last.

The driver knows. :class:`FinalTest` is a Tune callback: ``on_trial_complete`` (called by Tune
for a trial that returned and for one that a scheduler stopped, after its last checkpoint was
registered) starts one Ray task that loads ``selected.pt`` from the trial's latest checkpoint
and evaluates the IID and OOD test splits. The task asks for no CPU, so it starts at once beside
the running trials instead of queueing behind them (it is short next to training, and one-thread
torch). Finished evaluations are logged to the trial's MLflow child run (``test_iid/*``,
``test_ood/*`` at ``step = selected epoch``; tags ``selected_epoch`` and ``test_evaluated``) at
the next step of Tune's loop. A model that declares inference-only knobs
(:mod:`grounding.inference_grid`, e.g. ``vcma``'s beta) is also scored on the val split at every
point of their grid, at the same selected checkpoint, and the child run gets the table
``inference_grid/<knob>.json`` and the figure ``inference_grid/<knob>.png``
(:func:`orchestration.figures.inference_grid`); ``on_experiment_end`` waits for the rest. If the driver dies between
a trial's end and its evaluation, :func:`catch_up` (run after ``Tuner.fit`` returns, also after
``resume=``) evaluates every ended trial whose child run lacks ``test_evaluated``; so every
trial is tested exactly once.
"""

from __future__ import annotations

import os
import time

import torch
from ray.tune import Callback

SPLITS = ("test_iid", "test_ood")
LAST = "last"  # metric prefix of the last-epoch predictor's test scores (reported, never selected)


def evaluate_selected(checkpoint, run: dict) -> dict:
    """Ray task body: the delivered predictor of a trial's checkpoint on the test splits."""
    from grounding import engine, inference_grid, recipes
    from grounding.models import registry

    from .trial import SELECTED_FILE, load_data, load_state

    torch.set_num_threads(max(1, int(run["threads"])))
    with checkpoint.as_directory() as d:
        package = torch.load(os.path.join(d, SELECTED_FILE), map_location="cpu", weights_only=True)
        state = load_state(d, package)  # the weights state.pt shares with selected.pt put back
    if package["data_digest"] != run["data_digest"]:
        raise RuntimeError(f"checkpoint of dataset {package['data_digest'][:12]}, sweep's is {run['data_digest'][:12]}")
    # a model with inference-only knobs (grounding.inference_grid) is also scored on val over their grid
    gridded = any(hasattr(registry.get(st["method"]), "inference_grid") for st in package["stages"].values())
    data = load_data(run, 0, 1, splits=SPLITS + (("val",) if gridded else ()))
    predictor = recipes.load_predictor(package, data.info)
    out: dict = {"selected_epoch": int(package["selected_epoch"])}
    t0 = time.time()
    for split in SPLITS:
        if split in data.splits:
            m = engine.evaluate(predictor, data[split], data.task, data.info, run["eval_batch_size"])
            out.update({f"{split}/{k}": v for k, v in m.items()})
    out["time/test_s"] = time.time() - t0
    last = last_package(package, state)
    if last is not None:
        out["last_epoch"] = int(last["selected_epoch"])
        same = all(st["epoch"] == package["stages"][n]["epoch"] for n, st in last["stages"].items())
        last_predictor = predictor if same else recipes.load_predictor(last, data.info)
        for split in SPLITS:
            if split in data.splits:
                m = ({k[len(split) + 1:]: v for k, v in out.items() if k.startswith(f"{split}/")} if same else
                     engine.evaluate(last_predictor, data[split], data.task, data.info, run["eval_batch_size"]))
                out.update({f"{LAST}/{split}/{k}": v for k, v in m.items()})
    grid = inference_grid.knobs(predictor)
    if grid and "val" in data.splits:
        t0 = time.time()
        rows = inference_grid.evaluate_grid(predictor, data["val"], data.task, data.info, run["eval_batch_size"])
        metric = run.get("metric") or data.task.default_metric
        out["inference_grid"] = {"split": "val", "metric": metric, "rows": rows,
                                 "trained": inference_grid.current(predictor),
                                 "selected": package.get("val", {}).get(metric)}
        out["time/inference_grid_s"] = time.time() - t0
    out["stages"] = {n: int(s["epoch"]) for n, s in package["stages"].items()}
    return out


def last_package(package: dict, state: dict | None) -> dict | None:
    """The predictor of the trial's last epoch, as a package like ``selected.pt``: each output
    stage's current weights from ``state.pt`` instead of its best-validation ones. Reported beside
    the selected one (``last/test_iid/*``) so a reader sees what selection on validation changed;
    it never selects anything. None without a training state."""
    if state is None or "group" not in state:
        return None
    stages = state["group"]["stages"]
    if set(stages) != set(package["stages"]):
        return None
    return {**package, "selected_epoch": int(state["group"]["epoch"]),
            "stages": {n: {**st, "model": stages[n]["model"], "epoch": int(stages[n]["epoch"])}
                       for n, st in package["stages"].items()}}


def trial_checkpoint(checkpoint, result: dict | None, storage_path: str):
    """A trial's latest checkpoint: Tune's own (single-worker trials report to Tune directly), else
    the one its Ray Train run saved, whose path ``TuneReportCallback`` adds to every report
    (``checkpoint_path``; a multi-worker trial's checkpoints live in the Train run, not in Tune)."""
    if checkpoint is not None:
        return checkpoint
    path = (result or {}).get("checkpoint_path")
    if not path:
        return None
    from ray.tune import Checkpoint

    scheme = storage_path.split("://", 1)[0] if "://" in storage_path else ""
    return Checkpoint(f"{scheme}://{path}" if scheme and "://" not in path else path)


def _task():
    import ray

    return ray.remote(num_cpus=0, max_retries=1)(evaluate_selected)


def log_result(client, run_id: str, result: dict) -> None:
    from mlflow.entities import Metric, RunTag

    now = int(time.time() * 1000)
    step = int(result["selected_epoch"])
    metrics = [Metric(k, float(v), now, int(result.get("last_epoch", step)) if k.startswith(f"{LAST}/") else step)
               for k, v in result.items()
               if k.startswith((*(f"{s}/" for s in SPLITS), f"{LAST}/", "time/")) and isinstance(v, (int, float))]
    tags = [RunTag("selected_epoch", str(step)), RunTag("test_evaluated", "true")]
    if "last_epoch" in result:
        tags.append(RunTag("last_epoch", str(result["last_epoch"])))
    tags += [RunTag(f"stage.{n}.selected_epoch", str(e)) for n, e in result.get("stages", {}).items()]
    if result.get("inference_grid"):
        from .figures import inference_grid

        inference_grid(client, run_id, result["inference_grid"])
    client.log_batch(run_id, metrics=metrics, tags=tags)


class FinalTest(Callback):
    """Evaluate each ended trial's selected checkpoint on the test splits, once (module docstring)."""

    def __init__(self, run: dict, logger, max_in_flight: int = 2):
        self.run, self.logger, self.max_in_flight = run, logger, max_in_flight
        self._queue: list = []  # (trial, checkpoint) not started yet
        self._pending: dict = {}  # trial_id -> (ObjectRef, trial)

    def __getstate__(self):  # Tune pickles callbacks with the experiment state
        state = dict(self.__dict__)
        state["_pending"], state["_queue"] = {}, []  # redone by catch_up after a restore
        return state

    def on_trial_complete(self, iteration, trials, trial, **info):
        ckpt = trial_checkpoint(trial.checkpoint, trial.last_result, self.run["storage_path"])
        if ckpt is not None:
            self._queue.append((trial, ckpt))
            self._launch()

    def _launch(self) -> None:
        while self._queue and len(self._pending) < self.max_in_flight:
            trial, ckpt = self._queue.pop(0)
            self._pending[trial.trial_id] = (_task().remote(ckpt, self.run), trial)

    def _drain(self, timeout: float | None) -> None:
        import ray

        while self._pending:
            self._collect(ray, timeout)
            self._launch()
            if timeout is not None:
                return

    def _collect(self, ray, timeout) -> None:
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
            self.logger.log_final(trial, result)  # through the sender: kept through an MLflow outage

    def on_step_begin(self, iteration, trials, **info):
        self._drain(timeout=0)

    def on_experiment_end(self, trials, **info):
        self._drain(timeout=None)


def catch_up(results, run: dict, client, experiment_id: str, parent_run_id: str, log=print) -> int:
    """Evaluate every ended trial of ``results`` whose MLflow child has no test metrics yet."""
    import ray

    todo = []
    for r in results:
        tid = (r.metrics or {}).get("trial_id")
        ckpt = trial_checkpoint(r.checkpoint, r.metrics, run["storage_path"])
        if r.error is not None or ckpt is None or not tid:
            continue
        found = client.search_runs([experiment_id], max_results=1, filter_string=(
            f"tags.mlflow.parentRunId = '{parent_run_id}' and tags.trial_id = '{tid}'"))
        if found and found[0].data.tags.get("test_evaluated") != "true":
            todo.append((found[0].info.run_id, _task().remote(ckpt, run)))
    for run_id, ref in todo:
        log_result(client, run_id, ray.get(ref))
    if todo:
        log(f"evaluated {len(todo)} trial(s) whose test evaluation was interrupted")
    return len(todo)
