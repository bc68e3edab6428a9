"""Run (or resume) one sweep: data, Ray, MLflow parent, Tune, summary."""

from __future__ import annotations

import json
import os
import shlex
import signal
import time
from pathlib import Path

from grounding.credentials import scrub, scrub_tree
from grounding.data import storage
from grounding.data.manifest import DataError
from grounding.engine import OPTIM_KEYS, OptimConfig
from grounding.models import registry
from grounding import tasks
import search_spaces

from . import preflight as pre
from .config import KEY_INDEX, ConfigError, SweepConfig, absolute_uri, fail, parse

STATE_FILE = "sweep.json"
PENDING_FILE = "mlflow_pending.json"  # trial records the tracking server has not taken yet
MLFLOW_END_WAIT_S = float(os.environ.get("GROUNDING_MLFLOW_END_WAIT_S", "120"))


def _log(msg: str) -> None:
    print(f"[sweep] {scrub(msg)}", flush=True)


def _read_state(path: str) -> dict | None:
    return storage.read_json(storage.join(path, STATE_FILE))


def _write_state(path: str, state: dict) -> None:
    fs, p = storage.filesystem(path)
    fs.makedirs(p, exist_ok=True)
    with fs.open(storage.join(p, STATE_FILE), "wb") as f:
        f.write(json.dumps(scrub_tree(state), indent=2).encode())  # never a credential


# keys a resume may give again: deployment settings that can carry credentials, removed from the
# saved command line (the sweep's configuration itself stays as it was)
RESUME_KEYS = ("mlflow.tracking_uri", "ray.address", "data.cache_dir")


def _storage_path(cfg: SweepConfig, cwd: Path) -> str:
    return absolute_uri(cfg["storage_path"] or str(cwd / "ray_results"))


def _resolve_resume(cfg: SweepConfig, cwd: Path) -> tuple[SweepConfig, dict, str]:
    target = cfg["resume"]
    path = target if ("/" in target or "://" in target) else storage.join(_storage_path(cfg, cwd), target)
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


def _fixed_params(cfg: SweepConfig, space_mod) -> dict:
    fixed = dict(getattr(space_mod, "FIXED", {}))
    fixed.update(cfg.model)
    fixed.update(cfg.optim)
    return fixed


class _Interrupt:
    """SIGINT/SIGTERM end the sweep cleanly: the first one asks Tune to stop its trials and save
    the experiment state (Tune's own graceful stop, the one it binds to SIGUSR1), the sweep then
    shuts Ray down, marks the parent run KILLED and prints the summary so far; a second one stops
    at once. Before Tune runs, a signal stops the sweep straight away."""

    def __init__(self):
        self.signum: int | None = None
        self.in_fit = False
        self._previous: dict = {}

    def install(self) -> None:
        os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"  # this handler calls Tune's graceful stop itself
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous.setdefault(sig, signal.getsignal(sig))
            signal.signal(sig, self._handle)

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame) -> None:
        first = self.signum is None
        self.signum = signum if first else self.signum
        name = signal.Signals(signum).name
        tune_stop = signal.getsignal(signal.SIGUSR1) if hasattr(signal, "SIGUSR1") else None
        if first and self.in_fit and callable(tune_stop):
            _log(f"{name}: stopping the trials and saving the sweep's state (send it again to stop at once)")
            tune_stop(signal.SIGUSR1, frame)
            return
        _log(f"{name}: stopping now")
        raise KeyboardInterrupt

    @property
    def exit_code(self) -> int:
        return 128 + int(self.signum or signal.SIGINT)


def _local_summary(name: str, method: str, metric: str, sender, results) -> str:
    """The summary when the tracking server cannot be read: what Tune itself knows."""
    lines = [f"sweep {name} ({method}): MLflow unreachable at the end; the trials as Tune reports them", ""]
    for r in results or []:
        m = r.metrics or {}
        lines.append(f"  {m.get('trial_id', '?')}  epochs {m.get('epoch', '-')}  {metric} {m.get(metric, '-')}"
                     f"{'  ERROR' if r.error else ''}")
    return "\n".join(lines)


def run_sweep(cfg: SweepConfig) -> int:
    from grounding.credentials import scrub_output

    scrub_output()  # every line the driver prints, Ray's forwarded worker logs included
    os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"  # a run URL per trial, with its user:password@
    cwd = Path.cwd()
    state = None
    exp_path = None
    ext = None  # more trials for a finished sweep (orchestration/extend.py)
    if cfg["resume"]:
        from . import extend

        asked = extend.asked_trials(cfg.argv)
        cfg, state, exp_path = _resolve_resume(cfg, cwd)
    method, task = cfg.method, tasks.get(cfg.task)

    # ------------------------------------------------ everything that can be checked before Ray
    name = (state or {}).get("name") or cfg["name"] or f"{method}-{time.strftime('%Y%m%d-%H%M%S')}"
    storage_path = _storage_path(cfg, cwd) if exp_path is None else exp_path.rsplit("/", 1)[0]
    exp_path = exp_path or storage.join(storage_path, name)
    if state is not None:
        ext = extend.plan(state, cfg["trials"], asked, exp_path, name, cfg["search.storage"])
        cfg.values["trials"] = extend.planned(state, cfg["trials"]) + (ext.trials if ext else 0)
    tracking_uri = absolute_uri(cfg["mlflow.tracking_uri"] or f"sqlite:///{(cwd / 'mlflow.db').resolve()}")
    try:
        pre.check_services(tracking_uri, storage_path, cfg["mlflow.experiment"])
        ds = pre.open_dataset(cfg, cwd, log=_log)
    except ConfigError as e:
        fail(str(e))
    if state is not None and state["data_digest"] != ds.digest:
        fail(f"resume: the dataset changed since the sweep started (digest {ds.digest[:12]} != {state['data_digest'][:12]})")

    space_mod = search_spaces.load(method)
    fixed = _fixed_params(cfg, space_mod)
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
    space = checked.space
    for note in checked.notes:
        _log(f"clipped to these data: {note}")
    metric = f"val/{cfg['search.metric'] or task.default_metric}"

    from . import lineage, study, sweep_outputs, tracking  # MLflow

    # the tracking server's own retries would hold the driver for minutes; the sender retries instead
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "15")

    from . import tuner as tuner_mod  # Ray, Optuna

    threads = max(1, int(cfg["cpus_per_worker"]))
    run = {
        "sweep": name, "method": method, "task": cfg.task,
        "data_root": ds.root, "data_digest": ds.digest,
        "cache_dir": cfg["data.cache_dir"], "cache_max_bytes": int(cfg["data.cache_max_gb"] * 2**30),
        "epochs": cfg["epochs"], "seed": cfg["seed"], "fixed": fixed,
        "workers": cfg["workers"], "use_trainer": cfg["workers"] > 1 or cfg["trainer"] == "always",
        "cpus_per_worker": cfg["cpus_per_worker"],
        "gpus_per_worker": cfg["gpus_per_worker"], "threads": threads,
        "eval_batch_size": cfg["eval_batch_size"], "storage_path": storage_path,
        "checkpoints_keep": cfg["checkpoints.keep"], "failures": cfg["failures"],
        "metric": metric.split("/", 1)[1],
        "placement": "SPREAD" if cfg["workers"] > 1 else "PACK",
    }

    from mlflow.tracking import MlflowClient

    from . import stages

    if cfg["backbone"]:  # checked before Ray starts
        try:
            run["shared"] = {"backbone": stages.resolve_backbone(cfg["backbone"], run, ds,
                                                                 lambda: MlflowClient(tracking_uri))}
        except stages.StageError as e:
            fail(str(e))
    import ray


    interrupt = _Interrupt()
    interrupt.install()
    from .progress import ProgressLines, start_ray

    try:
        t0 = time.time()
        address = cfg["ray.address"] or None
        start_ray(address, cfg["verbose"])
    except KeyboardInterrupt:
        ray.shutdown()
        interrupt.restore()
        return interrupt.exit_code
    interrupt.install()  # again: ray.init installs native SIGTERM handlers that dump stacks and exit
    _log(f"ray {'joined ' + address if address else 'started locally'} in {time.time() - t0:.1f}s: "
         f"{ray.cluster_resources().get('CPU', 0):g} CPUs, {ray.cluster_resources().get('GPU', 0):g} GPUs")

    need = {"CPU": cfg["workers"] * cfg["cpus_per_worker"], "GPU": cfg["workers"] * cfg["gpus_per_worker"]}
    have = ray.cluster_resources()
    if not address:  # a local Ray cannot grow: refuse a trial that can never be placed
        for res, amount in need.items():
            if amount > have.get(res, 0) + 1e-9:
                ray.shutdown()
                fail(f"one trial needs {amount:g} {res} (workers x {res.lower()}s_per_worker) but the local Ray "
                     f"has {have.get(res, 0):g}; allowed: at most {have.get(res, 0):g}")
    status = "FAILED"
    parent = None
    results = None
    sender = None
    artifacts: list[str] = []
    try:
        client = MlflowClient(tracking_uri)
        exp_id = tracking.experiment_id(client, cfg["mlflow.experiment"])
        command = "python -m orchestration.sweep " + " ".join(shlex.quote(a) for a in cfg.argv)
        parent = tracking.start_parent(
            client, cfg["mlflow.experiment"], name,
            tags={"method": method, "task": cfg.task, "command": command, "git_commit": tracking.git_commit(),
                  "data_manifest_sha256": ds.digest, "data_root": ds.root, "mlflow.note.content":
                  f"Sweep of `{method}` ({cfg['trials']} trials, ≤{cfg['epochs']} epochs) ranked by {metric}."},
            params=scrub_tree({**{k: v for k, v in cfg.to_flat().items() if k not in ("resume",)},
                               "searched": ",".join(space), "metric": metric}),
            parent_run_id=(state or {}).get("parent_run_id"))
        lineage.mark_training_experiment(client, exp_id)
        if state is None:
            lineage.log_dataset(client, parent, ds)
            state = {"name": name, "argv": cfg.argv, "parent_run_id": parent, "experiment_id": exp_id,
                     "tracking_uri": tracking_uri, "data_digest": ds.digest, "created": time.time()}
            _write_state(exp_path, state)
            resuming = False
        else:
            resuming = True
        _log(f"MLflow parent run {parent} in experiment '{cfg['mlflow.experiment']}' at {tracking_uri}")
        _log(f"searching {', '.join(space) or 'nothing'} for {method}; fixed {fixed}; paper point first: {points}")

        pending = storage.join(exp_path, PENDING_FILE)
        sender = tracking.sender(tracking_uri, exp_id, parent, cfg["epochs"], pending)
        if resuming and (n := sender.load_pending()):
            _log(f"writing {n} record(s) an earlier run of this sweep could not send to MLflow")
            if not sender.drain(MLFLOW_END_WAIT_S):
                fail(f"mlflow.tracking_uri={tracking_uri}: {sender.pending()} earlier record(s) could not be "
                     f"written ({sender.last_error}); try resume= again when the server is back")
        logger = tracking.MlflowTrialLogger(tracking_uri, exp_id, parent, name, method, fixed, cfg["epochs"],
                                            pending_path=pending)
        logger.dataset_input = lineage.dataset_input(ds)
        progress = ProgressLines(metric, ext.trials if ext else cfg["trials"])
        study_storage = study.storage_for(exp_path, cfg["search.storage"])
        from ray import tune

        from .final_test import FinalTest, catch_up


        run["shared"] = stages.ensure_shared(run, set(space), exp_path, client, exp_id, parent, log=_log)
        from . import extend

        folder = extend.latest(state, exp_path)[0] if resuming and ext is None else None
        if folder is not None and not tune.Tuner.can_restore(folder):
            ext = extend.unsaved(state, cfg["trials"])  # an extension killed before its first Tune save
            if ext is None:
                status = "KILLED"
                fail(f"resume: no Tune state under {folder} yet (the sweep stopped before its first "
                     f"state checkpoint); start it again under another name")
            _log(f"{ext.folder} stopped before Tune saved its state: starting its {ext.trials} trial(s) again")
        if folder is not None and ext is None:
            _log(f"resuming {folder}")
            tuner = tuner_mod.restore(folder, run)
        else:
            sampler = None
            if ext is not None:  # the same study, the previous run's sampler, no first points again
                sampler = extend.previous_sampler(extend.latest(state, exp_path)[0])
                extend.record(exp_path, state, _write_state, extension=ext)
                logger = extend.numbered_logger(logger, ext)
                _log(f"extending {name} by {ext.trials} trial(s) after its {ext.before} in {ext.folder}")
            searcher = tuner_mod.searcher_for(cfg["search.algo"], cfg["search.seed"] + (ext.index if ext else 0),
                                              space, {**defaults, **fixed}, [] if ext else points, metric,
                                              study_name=name, storage=study_storage, sampler=sampler)
            scheduler = tuner_mod.scheduler_for(cfg["scheduler"], cfg["epochs"], cfg["asha.grace_period"],
                                                cfg["asha.reduction_factor"])
            tuner = tuner_mod.build(run, name=ext.folder if ext else name,
                                    storage_path=exp_path if ext else storage_path,
                                    trials=ext.trials if ext else cfg["trials"],
                                    concurrent=cfg["concurrent"], metric=metric, searcher=searcher,
                                    scheduler=scheduler, callbacks=[logger, FinalTest(run, logger), progress],
                                    verbose=cfg["verbose"])
        t_fit = time.time()
        interrupt.in_fit = True
        results = tuner.fit()
        interrupt.in_fit = False
        try:  # after the records queued so far are written: catch_up reads test_evaluated from MLflow
            if not sender.drain(MLFLOW_END_WAIT_S):
                raise ConnectionError("MLflow unreachable")
            catch_up(results, run, client, exp_id, parent, log=_log)
        except Exception as e:  # noqa: BLE001 - MLflow away at the end: resume= evaluates them
            _log(f"test evaluation of interrupted trials deferred to resume= ({type(e).__name__})")
        errors = [r for r in results if r.error]
        if interrupt.signum is not None:
            status = "KILLED"
            _log(f"interrupted after {time.time() - t_fit:.0f}s; continue with: python -m orchestration.sweep "
                 f"resume={name}")
        else:
            status = "FINISHED" if not errors else "FAILED"
            _log(f"tune finished in {time.time() - t_fit:.0f}s; {len(results)} trials, {len(errors)} failed")
            extend.record(exp_path, state, _write_state, finished=True)
        every = extend.earlier_results(state, exp_path, metric) + list(results) if state.get("extensions") else results
        artifacts = sweep_outputs.record(client, exp_id, parent, every, logger, ds, run, metric, task, name,
                                         study_storage)
    except KeyboardInterrupt:
        status = "KILLED"
        _log(f"interrupted; continue with: python -m orchestration.sweep resume={name}")
    except SystemExit:
        status = "KILLED" if status == "FAILED" else status
        raise
    finally:
        interrupt.in_fit = False
        try:
            ray.shutdown()  # first: no trial keeps running while the records are written
        except KeyboardInterrupt:
            pass
        if parent is not None:
            _finish(cfg, client, exp_id, parent, name, method, metric, task, space, tracking_uri, status,
                    sender, results, tracking, artifacts)
        interrupt.restore()
    if interrupt.signum is not None:
        return interrupt.exit_code
    return 0 if status == "FINISHED" else 1


def _finish(cfg, client, exp_id, parent, name, method, metric, task, space, tracking_uri, status, sender,
            results, tracking, artifacts) -> None:
    """Write what is left, then the summary and the parent's end (or say why they must wait)."""
    from .report import summary

    try:
        sent = sender.close(MLFLOW_END_WAIT_S) if sender is not None else True
    except KeyboardInterrupt:  # a signal while waiting for the tracking server: keep the rest for resume=
        sender._spill(force=True)
        sent = False
    note = sender.report() if sender is not None else ""
    if not sent:
        text = _local_summary(name, method, metric, sender, results) + "\n\n" + note
        print("\n" + scrub(text), flush=True)
        return
    try:
        runs = tracking.children(client, exp_id, parent)
        text = summary(name, method, runs, metric, task.metric_names, list(space),
                       tracking.ui_command(tracking_uri, exp_id))
        if status == "KILLED":
            text += f"\n\ninterrupted: continue with python -m orchestration.sweep resume={name}"
        if note:
            text += "\n\n" + note
        tracking.finish_parent(client, exp_id, parent, metric, text, status=status)
        from . import lineage

        lineage.describe(client, exp_id, parent, f"Sweep of `{method}` ({cfg['trials']} trials, ≤{cfg['epochs']} "
                         f"epochs) ranked by {metric}; each trial is a child run with its learning curves, the "
                         f"best one with its selected model under `model/`.", ["summary.txt", *artifacts])
    except Exception as e:  # noqa: BLE001 - the server went away at the very end
        text = (_local_summary(name, method, metric, sender, results) +
                f"\n\nMLflow failed while the sweep was being closed ({type(e).__name__}); "
                f"python -m orchestration.sweep resume={name} closes it")
    print("\n" + scrub(text), flush=True)
