"""Build (or restore) the Ray Tune run of a sweep: Optuna search, ASHA, resources, storage."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import optuna
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search.optuna import OptunaSearch

from search_spaces import Choice, Float, Int, Param

from ..worker.spec import TrialSpec
from ..worker.trial import trial_fn


class DefineByRun:
    """A declarative space as an Optuna define-by-run function (conditions honoured).

    A class rather than a closure: Tune pickles the searcher with the experiment state."""

    def __init__(self, space: dict[str, Param], fixed: dict[str, Any]):
        self.space, self.fixed = space, dict(fixed)

    def __call__(self, trial) -> None:
        values = dict(self.fixed)
        for name, p in self.space.items():
            if not p.applies(values):
                continue
            if isinstance(p, Float):
                values[name] = trial.suggest_float(name, p.low, p.high, log=p.log)
            elif isinstance(p, Int):
                values[name] = trial.suggest_int(name, p.low, p.high, log=p.log)
            elif isinstance(p, Choice):
                values[name] = trial.suggest_categorical(name, list(p.values))
            else:
                raise TypeError(f"unsupported parameter type {type(p).__name__} for {name}")
        return None


def scheduler_for(name: str, epochs: int, grace_period: int, reduction_factor: int):
    if name == "asha":
        return ASHAScheduler(time_attr="training_iteration", max_t=epochs, grace_period=grace_period,
                             reduction_factor=reduction_factor)
    return FIFOScheduler()


def searcher_for(algo: str, seed: int, space: dict[str, Param], known: dict[str, Any],
                 points: list[dict], metric: str, study_name: str | None = None, storage=None,
                 sampler=None):
    """OptunaSearch over ``space``; ``known`` (config defaults + fixed values) decides conditions.
    With ``storage`` (:mod:`orchestration.search.study`) the study named ``study_name`` is persisted (loaded
    when it exists: an extension, :mod:`orchestration.search.extend`, passes the earlier run's ``sampler``)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # one line per trial is the progress display's
    if sampler is None:
        sampler = (optuna.samplers.RandomSampler(seed=seed) if algo == "random"
                   else optuna.samplers.TPESampler(seed=seed))
    return OptunaSearch(space=DefineByRun(space, known), metric=metric, mode="max",
                        points_to_evaluate=points or None, sampler=sampler, study_name=study_name,
                        storage=storage)


def trainable(spec: TrialSpec, fn=trial_fn):
    """The trial function with its resources: the worker's own when training in the trial actor,
    none when the trial only drives a TorchTrainer whose workers hold the resources (Tune refuses
    an empty request, so it asks for one byte of memory, a purely logical resource)."""
    if spec.use_trainer:
        resources = {"cpu": 0, "memory": 1}
    else:
        resources = {"cpu": spec.cpus_per_worker, "gpu": spec.gpus_per_worker}
    return tune.with_resources(tune.with_parameters(fn, spec=spec), resources)


@dataclasses.dataclass(frozen=True)
class TuneRun:
    """One Tune run of a sweep, an extension or a comparison: where it is stored, how many trials,
    how they are chosen (``searcher``/``scheduler``: None for a comparison's grid in
    ``param_space``) and which trainable runs them."""

    name: str  # the Tune experiment folder under storage_path
    storage_path: str
    trials: int
    concurrent: int
    metric: str  # "val/<name>", maximised
    verbose: int = 0
    searcher: Any = None
    scheduler: Any = None
    fn: Callable = trial_fn
    param_space: dict | None = None


def build(spec: TrialSpec, run: TuneRun, callbacks: list) -> tune.Tuner:
    return tune.Tuner(
        trainable(spec, run.fn), param_space=run.param_space,
        tune_config=tune.TuneConfig(
            metric=run.metric, mode="max", num_samples=run.trials, max_concurrent_trials=run.concurrent,
            search_alg=run.searcher, scheduler=run.scheduler,
            reuse_actors=not spec.use_trainer,  # keep the process, its imports and its data
        ),
        run_config=tune.RunConfig(
            name=run.name, storage_path=run.storage_path, callbacks=callbacks, verbose=run.verbose,
            # the best checkpoints by the reported (selected) val metric; Tune always keeps the latest too
            checkpoint_config=tune.CheckpointConfig(num_to_keep=spec.checkpoints_keep,
                                                    checkpoint_score_attribute=run.metric,
                                                    checkpoint_score_order="max"),
            failure_config=tune.FailureConfig(max_failures=spec.failures),
        ),
    )


def restore(path: str, spec: TrialSpec) -> tune.Tuner:
    return tune.Tuner.restore(path, trainable=trainable(spec), resume_unfinished=True,
                              resume_errored=True)
