"""Run (or resume) one sweep: data, Ray, MLflow parent, Tune, summary."""

from __future__ import annotations

import json
import shlex
import time
from pathlib import Path

from grounding.data import benchmarks, storage
from grounding.data.cache import ShardCache
from grounding.data.manifest import DataError
from grounding.data.shards import Dataset
from grounding.engine import OPTIM_KEYS, OptimConfig
from grounding.models import registry
from grounding import tasks
import search_spaces

from .config import ConfigError, SweepConfig, absolute_uri, fail, parse

STATE_FILE = "sweep.json"


def _log(msg: str) -> None:
    print(f"[sweep] {msg}", flush=True)


def _read_state(path: str) -> dict | None:
    fs, p = storage.filesystem(path)
    target = storage.join(p, STATE_FILE)
    if not fs.exists(target):
        return None
    with fs.open(target, "rb") as f:
        return json.loads(f.read().decode())


def _write_state(path: str, state: dict) -> None:
    fs, p = storage.filesystem(path)
    fs.makedirs(p, exist_ok=True)
    with fs.open(storage.join(p, STATE_FILE), "wb") as f:
        f.write(json.dumps(state, indent=2).encode())


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
    extra = [a for a in cfg.argv if not a.startswith("resume=")]
    if extra:
        fail(f"resume takes no other overrides (the sweep keeps its configuration); got {' '.join(extra)}")
    try:
        saved = parse(state["argv"])
    except ConfigError as e:
        fail(f"resume={target}: saved configuration no longer valid: {e}")
    return saved, state, path


def _dataset(cfg: SweepConfig, cwd: Path, smoke: bool) -> Dataset:
    bench = benchmarks.get(cfg.benchmark)
    overrides = dict(bench.smoke) if smoke else {}
    if cfg["data.seed"]:
        overrides["seed"] = cfg["data.seed"]
    if cfg["data.dim"]:
        overrides["D"] = cfg["data.dim"]
    root = cfg["data.root"]
    if not root:
        suffix = "".join(f"-{k}{v}" for k, v in sorted(overrides.items()))
        root = str(cwd / "data" / f"{bench.name}{suffix}")
    root = absolute_uri(root)
    cache = ShardCache(cfg["data.cache_dir"] or None, int(cfg["data.cache_max_gb"] * 2**30))
    t0 = time.time()
    if storage.is_remote(root):
        ds = Dataset.open(root, cache=cache)
    else:
        fs, p = storage.filesystem(root)
        exists = fs.exists(storage.join(p, "manifest.json"))
        if not exists and not cfg["data.generate"]:
            fail(f"data.root={root} holds no dataset and data.generate=false")
        if exists and cfg["data.root"]:
            ds = Dataset.open(root, cache=cache)  # a dataset the user chose: used as it is
        else:  # the default location: generated on first use, reused only with the same arguments
            ds = benchmarks.ensure(root, bench.name, overrides, log=_log)
    if ds.manifest.task != cfg.task:
        fail(f"data.root={root} holds a {ds.manifest.task} dataset; method {cfg.method} needs {cfg.task}")
    ds = Dataset.open(root, cache=cache)
    missing = [sp for sp in ("train", "val") if sp not in ds.manifest.splits]
    if missing:
        fail(f"data.root={root} has no {' or '.join(missing)} split (it has {', '.join(ds.manifest.splits)}); "
             f"a sweep trains on train and ranks trials on val")
    ds.verify()  # every shard against the manifest, before any trial starts
    _log(f"data {root} ({ds.manifest.task}, digest {ds.digest[:12]}) ready in {time.time() - t0:.1f}s")
    return ds


def _fixed_params(cfg: SweepConfig, space_mod) -> dict:
    fixed = dict(getattr(space_mod, "FIXED", {}))
    fixed.update(cfg.model)
    fixed.update(cfg.optim)
    return fixed


def run_sweep(cfg: SweepConfig) -> int:
    cwd = Path.cwd()
    state = None
    exp_path = None
    if cfg["resume"]:
        cfg, state, exp_path = _resolve_resume(cfg, cwd)
    smoke = cfg["smoke"]
    method, task = cfg.method, tasks.get(cfg.task)

    try:
        ds = _dataset(cfg, cwd, smoke)
    except (DataError, FileNotFoundError, ValueError) as e:
        fail(str(e).splitlines()[0])
    if state is not None and state["data_digest"] != ds.digest:
        fail(f"resume: the dataset changed since the sweep started (digest {ds.digest[:12]} != {state['data_digest'][:12]})")

    space_mod = search_spaces.load(method)
    fixed = _fixed_params(cfg, space_mod)
    defaults = {**{f: getattr(registry.get(method).Config(), f) for f in registry.config_fields(method)},
                **{k: getattr(OptimConfig(), k) for k in OPTIM_KEYS}}
    space, points = search_spaces.resolve(method, ds.manifest.dims, fixed, defaults)
    metric = f"val/{cfg['search.metric'] or task.default_metric}"

    from . import lineage, study, sweep_outputs, tracking, tuner as tuner_mod  # Ray/MLflow/Optuna imports

    name = (state or {}).get("name") or cfg["name"] or f"{method}-{time.strftime('%Y%m%d-%H%M%S')}"
    storage_path = _storage_path(cfg, cwd) if exp_path is None else exp_path.rsplit("/", 1)[0]
    exp_path = exp_path or storage.join(storage_path, name)
    tracking_uri = absolute_uri(cfg["mlflow.tracking_uri"] or tracking.default_tracking_uri(cwd))
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

    t0 = time.time()
    address = cfg["ray.address"] or None
    from .progress import ProgressLines, console

    ray.init(address=address, log_to_driver=True, configure_logging=True, logging_level="WARNING",
             **console(cfg["verbose"]))
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
    client = MlflowClient(tracking_uri)
    exp_id = tracking.experiment_id(client, cfg["mlflow.experiment"])
    lineage.mark_training_experiment(client, exp_id)
    command = "python -m orchestration.sweep " + " ".join(shlex.quote(a) for a in cfg.argv)
    parent = tracking.start_parent(
        client, cfg["mlflow.experiment"], name,
        tags={"method": method, "task": cfg.task, "command": command, "git_commit": tracking.git_commit(),
              "data_manifest_sha256": ds.digest, "data_root": ds.root, "mlflow.note.content":
              f"Sweep of `{method}` ({cfg['trials']} trials, ≤{cfg['epochs']} epochs) ranked by {metric}."},
        params={**{k: v for k, v in cfg.to_flat().items() if k not in ("resume",)},
                "searched": ",".join(space), "metric": metric},
        parent_run_id=(state or {}).get("parent_run_id"))
    if state is None:
        lineage.log_dataset(client, parent, ds)
        _write_state(exp_path, {"name": name, "argv": cfg.argv, "parent_run_id": parent,
                                "experiment_id": exp_id, "tracking_uri": tracking_uri,
                                "data_digest": ds.digest, "created": time.time()})
    _log(f"MLflow parent run {parent} in experiment '{cfg['mlflow.experiment']}' at {tracking_uri}")
    _log(f"searching {', '.join(space) or 'nothing'} for {method}; fixed {fixed}; paper point first: {points}")

    logger = tracking.MlflowTrialLogger(tracking_uri, exp_id, parent, name, method, fixed, cfg["epochs"])
    logger.dataset_input = lineage.dataset_input(ds)
    progress = ProgressLines(metric, cfg["trials"])
    study_storage = study.storage_for(exp_path, cfg["search.storage"])
    from ray import tune

    from .final_test import FinalTest, catch_up

    status = "FAILED"
    artifacts: list[str] = []
    try:
        run["shared"] = stages.ensure_shared(run, set(space), exp_path, client, exp_id, parent, log=_log)
        if state is not None:
            if not tune.Tuner.can_restore(exp_path):
                status = "KILLED"
                fail(f"resume: no Tune state under {exp_path} yet (the sweep stopped before its first "
                     f"state checkpoint); start it again under another name")
            _log(f"resuming {exp_path}")
            tuner = tuner_mod.restore(exp_path, run)
        else:
            searcher = tuner_mod.searcher_for(cfg["search.algo"], cfg["search.seed"], space,
                                              {**defaults, **fixed}, points, metric,
                                              study_name=name, storage=study_storage)
            scheduler = tuner_mod.scheduler_for(cfg["scheduler"], cfg["epochs"], cfg["asha.grace_period"],
                                                cfg["asha.reduction_factor"])
            tuner = tuner_mod.build(run, name=name, storage_path=storage_path, trials=cfg["trials"],
                                    concurrent=cfg["concurrent"], metric=metric, searcher=searcher,
                                    scheduler=scheduler, callbacks=[logger, FinalTest(run, logger), progress],
                                    verbose=cfg["verbose"])
        t_fit = time.time()
        results = tuner.fit()
        catch_up(results, run, client, exp_id, parent, log=_log)
        errors = [r for r in results if r.error]
        status = "FINISHED" if not errors else "FAILED"
        artifacts = sweep_outputs.record(client, exp_id, parent, results, logger, ds, run, metric, task, name,
                                         study_storage)
        _log(f"tune finished in {time.time() - t_fit:.0f}s; {len(results)} trials, {len(errors)} failed")
    except (KeyboardInterrupt, SystemExit):
        status = "KILLED"
        raise
    finally:
        from .report import summary

        runs = tracking.children(client, exp_id, parent)
        text = summary(name, method, runs, metric, task.metric_names, list(space),
                       tracking.ui_command(tracking_uri, exp_id))
        tracking.finish_parent(client, exp_id, parent, metric, text, status=status)
        lineage.describe(client, exp_id, parent, f"Sweep of `{method}` ({cfg['trials']} trials, ≤{cfg['epochs']} "
                         f"epochs) ranked by {metric}; each trial is a child run with its learning curves, the "
                         f"best one with its selected model under `model/`.", ["summary.txt", *artifacts])
        print("\n" + text, flush=True)
        ray.shutdown()
    return 0 if status == "FINISHED" else 1

