"""Run (or resume, or extend) one sweep: :func:`prepare` checks everything that can be checked
before Ray (one line and exit 2 otherwise) and builds the :class:`Plan`; :func:`run_sweep` runs it
on the shared :class:`~orchestration.driver.Driver` (new Tune run, restored one or an extension),
then logs the outputs and the summary.

The sweep's state file (``<storage_path>/<name>/sweep.json``) holds its command line, parent run,
dataset digest and extensions; ``resume=<name>`` reads it back (:func:`_resolve_resume`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import time
from pathlib import Path
from typing import Any

from mlflow.tracking import MlflowClient
from ray import tune

import search_spaces
from grounding import tasks
from grounding.credentials import scrub_tree
from grounding.data import storage
from grounding.data.manifest import DataError
from grounding.engine import OPTIM_KEYS, OptimConfig
from grounding.models import registry

from . import preflight as pre
from . import sweep_outputs
from .callbacks import Children
from .cli.keys import ConfigError, absolute_uri, fail, tracking_uri
from .cli.sweep_args import KEY_INDEX, SweepConfig, parse
from .driver import MLFLOW_END_WAIT_S, Driver, storage_path, trial_spec
from .search import extend, study
from .search import tuner as tuner_mod
from .shared_stages import resolve_backbone
from .tracking import lineage, runs
from .tracking.summary import summary
from .worker.spec import TrialSpec
from .worker.stage_store import StageError

STATE_FILE = "sweep.json"
PENDING_FILE = "mlflow_pending.json"  # trial records the tracking server has not taken yet
LAYOUT = 2  # sweep.json of a sweep whose Tune state names this package's classes (callbacks, trainable)
# keys a resume may give again: deployment settings that can carry credentials, removed from the
# saved command line (the sweep's configuration itself stays as it was)
RESUME_KEYS = ("mlflow.tracking_uri", "ray.address", "data.cache_dir")


def _log(msg: str) -> None:
    print(f"[sweep] {msg}", flush=True)


def _read_state(path: str) -> dict | None:
    return storage.read_json(storage.join(path, STATE_FILE))


def _write_state(path: str, state: dict) -> None:
    fs, p = storage.filesystem(path)
    fs.makedirs(p, exist_ok=True)
    with fs.open(storage.join(p, STATE_FILE), "wb") as f:
        f.write(json.dumps(scrub_tree(state), indent=2).encode())  # never a credential


def _resolve_resume(cfg: SweepConfig, cwd: Path) -> tuple[SweepConfig, dict, str]:
    target = cfg["resume"]
    path = target if ("/" in target or "://" in target) else storage.join(storage_path(cfg, cwd), target)
    path = absolute_uri(path)
    state = _read_state(path)
    if state is None:
        fail(f"resume={target}: no sweep state ({STATE_FILE}) at {path}; pass a sweep name under "
             f"storage_path or the experiment path")
    extra = [a for a in cfg.argv if not a.startswith(("resume=", "trials=", *(k + "=" for k in RESUME_KEYS)))]
    if extra:
        fail(f"resume takes no other overrides than trials= (more trials for a finished sweep) and "
             f"{', '.join(RESUME_KEYS)} (the sweep keeps its configuration); got {' '.join(extra)}")
    again = [a for a in cfg.argv if a.startswith(tuple(k + "=" for k in RESUME_KEYS))]
    keys = {a.split("=", 1)[0] for a in again}
    # a saved value whose credentials were scrubbed comes from the environment or the command line
    for a in state["argv"]:
        key = a.split("=", 1)[0]
        spec = KEY_INDEX.get(key)
        if "***" in a and key not in keys and not (spec and spec.env and os.environ.get(spec.env)):
            fail(f"resume={target}: the sweep's {key} held credentials, which are never stored; give it again: "
                 f"resume={target} {key}=..." + (f" (or set {spec.env})" if spec and spec.env else ""))
    argv = [a for a in state["argv"] if a.split("=", 1)[0] not in keys and "***" not in a] + again
    try:
        saved = parse(argv)
    except ConfigError as e:
        fail(f"resume={target}: saved configuration no longer valid: {e}")
    return saved, state, path


@dataclasses.dataclass
class Plan:
    """A sweep checked before Ray: what runs, on which data, where it is recorded."""

    cfg: SweepConfig
    name: str
    exp_path: str
    storage: str
    tracking_uri: str
    ds: Any  # grounding.data.shards.Dataset
    fixed: dict[str, Any]
    defaults: dict[str, Any]  # the method's and the optimiser's config defaults
    space: dict[str, Any]  # name -> search_spaces.Param, clipped to the data
    points: list[dict]  # evaluated first (PAPER)
    metric: str  # "val/<name>"
    spec: TrialSpec
    state: dict | None = None  # sweep.json of a resumed sweep
    ext: extend.Extension | None = None  # more trials for a finished sweep

    @property
    def task(self):
        return tasks.get(self.cfg.task)


def _search(cfg: SweepConfig, ds) -> tuple[dict, dict, dict, list, list[str]]:
    """(fixed, defaults, space, points, notes): the method's space for these data, preflighted."""
    method = cfg.method
    fixed = {**getattr(search_spaces.load(method), "FIXED", {}), **cfg.model, **cfg.optim}
    try:  # what the method needs beyond its task family (e.g. scl: text features of the right encoder)
        registry.get(method).check_data(ds.manifest, ds.root, fixed)
    except DataError as e:
        fail(str(e).splitlines()[0])
    defaults = {**{f: getattr(registry.get(method).Config(), f) for f in registry.config_fields(method)},
                **{k: getattr(OptimConfig(), k) for k in OPTIM_KEYS}}
    space, points = search_spaces.resolve(method, ds.manifest.dims, fixed, defaults)
    configurations = [(f"the first point evaluated (PAPER in search_spaces/{method}.py)",
                       {**fixed, **p}) for p in points] or [("the fixed and pinned values", dict(fixed))]
    try:
        checked = pre.preflight(cfg, ds, configurations, space, fixed)
    except ConfigError as e:
        fail(str(e))
    return fixed, defaults, checked.space, points, checked.notes


def prepare(cfg: SweepConfig, cwd: Path) -> Plan:
    """Everything before Ray: the resumed state, the dataset, the method's space, the spec."""
    state = exp_path = ext = None
    if cfg["resume"]:
        asked = extend.asked_trials(cfg.argv)
        cfg, state, exp_path = _resolve_resume(cfg, cwd)
    name = (state or {}).get("name") or cfg["name"] or f"{cfg.method}-{time.strftime('%Y%m%d-%H%M%S')}"
    storage_ = storage_path(cfg, cwd) if exp_path is None else exp_path.rsplit("/", 1)[0]
    exp_path = exp_path or storage.join(storage_, name)
    if state is not None:
        ext = extend.plan(state, cfg["trials"], asked, exp_path, name, cfg["search.storage"])
        if ext is None and not extend.latest(state, exp_path)[1] and state.get("layout") != LAYOUT:
            fail(f"resume={name}: the sweep was started by an earlier version of this project, whose saved Tune "
                 f"state names classes that moved; allowed: extending it once finished (trials=), or a new sweep")
        cfg.values["trials"] = extend.planned(state, cfg["trials"]) + (ext.trials if ext else 0)
    uri = tracking_uri(cfg["mlflow.tracking_uri"])
    try:
        pre.check_services(uri, storage_, cfg["mlflow.experiment"])
        ds = pre.open_dataset(cfg, cwd, log=_log)
    except ConfigError as e:
        fail(str(e))
    if state is not None and state["data_digest"] != ds.digest:
        fail(f"resume: the dataset changed since the sweep started (digest {ds.digest[:12]} != {state['data_digest'][:12]})")
    fixed, defaults, space, points, notes = _search(cfg, ds)
    for note in notes:
        _log(f"clipped to these data: {note}")
    metric = cfg["search.metric"] or tasks.get(cfg.task).default_metric
    spec = trial_spec(cfg, ds, name=name, storage=storage_, method=cfg.method, epochs=cfg["epochs"],
                      seed=cfg["seed"], fixed=fixed, metric=metric)
    if cfg["backbone"]:  # checked before Ray starts
        try:
            given = resolve_backbone(cfg["backbone"], spec, ds, lambda: MlflowClient(uri))
        except StageError as e:
            fail(str(e))
        spec = dataclasses.replace(spec, shared={"backbone": given})
    return Plan(cfg=cfg, name=name, exp_path=exp_path, storage=storage_, tracking_uri=uri, ds=ds, fixed=fixed,
                defaults=defaults, space=space, points=points, metric=f"val/{metric}", spec=spec, state=state,
                ext=ext)


def _open_records(plan: Plan, driver: Driver) -> bool:
    """The parent run (reopened on resume), the state file, the sender; True when resuming."""
    cfg, ds = plan.cfg, plan.ds
    command = "python -m orchestration.sweep " + " ".join(shlex.quote(a) for a in cfg.argv)
    driver.open_parent(
        plan.name, ds, tags={"method": cfg.method, "task": cfg.task, "command": command, "mlflow.note.content":
                             f"Sweep of `{cfg.method}` ({cfg['trials']} trials, ≤{cfg['epochs']} epochs) ranked "
                             f"by {plan.metric}."},
        params=scrub_tree({**{k: v for k, v in cfg.to_flat().items() if k != "resume"},
                           "searched": ",".join(plan.space), "metric": plan.metric}),
        parent_run_id=(plan.state or {}).get("parent_run_id"))
    resuming = plan.state is not None
    if not resuming:
        plan.state = {"name": plan.name, "argv": cfg.argv, "parent_run_id": driver.parent,
                      "experiment_id": driver.exp_id, "tracking_uri": plan.tracking_uri, "data_digest": ds.digest,
                      "created": time.time(), "layout": LAYOUT}
        _write_state(plan.exp_path, plan.state)
    _log(f"searching {', '.join(plan.space) or 'nothing'} for {cfg.method}; fixed {plan.fixed}; "
         f"paper point first: {plan.points}")
    sender = driver.open_sender(cfg["epochs"], storage.join(plan.exp_path, PENDING_FILE))
    if resuming and (n := sender.load_pending()):
        _log(f"writing {n} record(s) an earlier run of this sweep could not send to MLflow")
        if not sender.drain(MLFLOW_END_WAIT_S):
            fail(f"mlflow.tracking_uri={plan.tracking_uri}: {sender.pending()} earlier record(s) could not be "
                 f"written ({sender.last_error}); try resume= again when the server is back")
    return resuming


def _tuner(plan: Plan, driver: Driver, spec: TrialSpec, resuming: bool, study_storage):
    """A new Tune run, the restored one (``resume=``) or an extension's (``resume= trials=``)."""
    cfg, ext = plan.cfg, plan.ext
    folder = extend.latest(plan.state, plan.exp_path)[0] if resuming and ext is None else None
    if folder is not None and not tune.Tuner.can_restore(folder):
        ext = plan.ext = extend.unsaved(plan.state, cfg["trials"])  # an extension killed before its first save
        if ext is None:
            fail(f"resume: no Tune state under {folder} yet (the sweep stopped before its first "
                 f"state checkpoint); start it again under another name")
        _log(f"{ext.folder} stopped before Tune saved its state: starting its {ext.trials} trial(s) again")
    children = Children(plan.name, cfg.method, plan.fixed, trial_offset=ext.before if ext else 0,
                        extension=ext.folder if ext else "")
    callbacks = driver.callbacks(spec, children, plan.ds, total=ext.trials if ext else cfg["trials"])
    if folder is not None and ext is None:
        _log(f"resuming {folder}")
        return tuner_mod.restore(folder, spec)
    sampler = None
    if ext is not None:  # the same study, the previous run's sampler, no first points again
        sampler = extend.previous_sampler(extend.latest(plan.state, plan.exp_path)[0])
        extend.record(plan.exp_path, plan.state, _write_state, extension=ext)
        _log(f"extending {plan.name} by {ext.trials} trial(s) after its {ext.before} in {ext.folder}")
    searcher = tuner_mod.searcher_for(cfg["search.algo"], cfg["search.seed"] + (ext.index if ext else 0),
                                      plan.space, {**plan.defaults, **plan.fixed}, [] if ext else plan.points,
                                      plan.metric, study_name=plan.name, storage=study_storage, sampler=sampler)
    scheduler = tuner_mod.scheduler_for(cfg["scheduler"], cfg["epochs"], cfg["asha.grace_period"],
                                        cfg["asha.reduction_factor"])
    run = tuner_mod.TuneRun(name=ext.folder if ext else plan.name, storage_path=plan.exp_path if ext else plan.storage,
                            trials=ext.trials if ext else cfg["trials"], concurrent=cfg["concurrent"],
                            metric=plan.metric, verbose=cfg["verbose"], searcher=searcher, scheduler=scheduler)
    return tuner_mod.build(spec, run, callbacks)


def _closing(plan: Plan, driver: Driver, status: str, artifacts: list[str]):
    """The summary written to the parent (best child, ``summary.txt``, description) on close."""
    cfg = plan.cfg

    def close(note: str) -> str:
        children = runs.children(driver.client, driver.exp_id, driver.parent)
        text = summary(plan.name, cfg.method, children, plan.metric, plan.task.metric_names, list(plan.space),
                       runs.ui_command(plan.tracking_uri, driver.exp_id), tasks.scoring_protocol(plan.ds))
        if status == "KILLED":
            text += f"\n\ninterrupted: continue with python -m orchestration.sweep resume={plan.name}"
        text += "\n\n" + note if note else ""
        runs.finish_parent(driver.client, driver.exp_id, driver.parent, plan.metric, text, status=status)
        lineage.describe(driver.client, driver.exp_id, driver.parent,
                         f"Sweep of `{cfg.method}` ({cfg['trials']} trials, ≤{cfg['epochs']} epochs) ranked by "
                         f"{plan.metric}; each trial is a child run with its learning curves, the best one with "
                         f"its selected model under `model/`.", ["summary.txt", *artifacts])
        return text

    return close


def _fit(plan: Plan, driver: Driver) -> tuple[str, Any, list[str]]:
    """Records, shared stages, the Tune run and its outputs: (status, results, artifacts)."""
    resuming = _open_records(plan, driver)
    study_storage = study.storage_for(plan.exp_path, plan.cfg["search.storage"])
    spec = dataclasses.replace(plan.spec, shared=driver.shared(plan.spec, set(plan.space), plan.exp_path))
    tuner = _tuner(plan, driver, spec, resuming, study_storage)
    t_fit = time.time()
    results = driver.fit(tuner, spec)
    errors = [r for r in results if r.error]
    if driver.interrupted:
        status = "KILLED"
        _log(f"interrupted after {time.time() - t_fit:.0f}s; continue with: python -m orchestration.sweep "
             f"resume={plan.name}")
    else:
        status = "FINISHED" if not errors else "FAILED"
        _log(f"tune finished in {time.time() - t_fit:.0f}s; {len(results)} trials, {len(errors)} failed")
        extend.record(plan.exp_path, plan.state, _write_state, finished=True)
    every = (extend.earlier_results(plan.state, plan.exp_path, plan.metric) + list(results)
             if plan.state.get("extensions") else results)
    artifacts = sweep_outputs.record(driver, every, plan.ds, spec, plan.metric, study_storage)
    return status, results, artifacts


def run_sweep(cfg: SweepConfig) -> int:
    plan = prepare(cfg, Path.cwd())
    driver = Driver(plan.cfg, plan.tracking_uri, prefix="sweep", verbose=plan.cfg["verbose"])
    if (code := driver.start()) is not None:
        return code
    status, results, artifacts = "FAILED", None, []
    try:
        status, results, artifacts = _fit(plan, driver)
    except KeyboardInterrupt:
        status = "KILLED"
        _log(f"interrupted; continue with: python -m orchestration.sweep resume={plan.name}")
    except SystemExit:
        status = "KILLED" if status == "FAILED" else status
        raise
    finally:
        driver.close(plan.name, plan.metric, results, _closing(plan, driver, status, artifacts))
    if driver.interrupted:
        return driver.interrupt.exit_code
    return 0 if status == "FINISHED" else 1
