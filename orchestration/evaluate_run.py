"""The MLflow/torch side of ``python -m orchestration.evaluate`` (imported after validation):
load a logged predictor, check the dataset fits it, score the splits, record the evaluation run."""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time

import torch
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from grounding import engine, tasks, training
from grounding.data.cache import ShardCache
from grounding.data.manifest import DataError
from grounding.data.shards import Dataset

from .cli.evaluate_args import EVAL_SPLITS
from .cli.keys import ConfigError, absolute_uri, fail
from .tracking import lineage
from .tracking.lineage import CONFIG_FILE, MODEL_DIR, SELECTED_FILE
from .tracking.summary import table


def _model_files(client, run_id: str, tmp: str) -> tuple[str, dict, str]:
    """(trial run id, its resolved config, the local state file) of ``run_id``."""
    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise ConfigError(f"run={run_id}: no such MLflow run at {client.tracking_uri}; allowed: a run id "
                          f"from the MLflow UI or a sweep's summary") from None
    if "best_run_id" in run.data.tags and not any(a.path == MODEL_DIR for a in client.list_artifacts(run_id)):
        run_id = run.data.tags["best_run_id"]
    if not any(a.path == f"{MODEL_DIR}/{CONFIG_FILE}" for a in client.list_artifacts(run_id, MODEL_DIR)):
        raise ConfigError(f"run={run_id} has no logged model ({MODEL_DIR}/{CONFIG_FILE}); allowed: a trial run "
                          f"with a model (a compared cell, a sweep's best trial) or a finished sweep's parent")
    cfg = json.load(open(client.download_artifacts(run_id, f"{MODEL_DIR}/{CONFIG_FILE}", tmp)))
    state = client.download_artifacts(run_id, f"{MODEL_DIR}/{SELECTED_FILE}", tmp)
    return run_id, cfg, state


def _open(values: dict, cfg: dict):
    root = absolute_uri(values["data.root"] or cfg["data"]["root"])
    cache = ShardCache(values["data.cache_dir"] or None, int(values["data.cache_max_gb"] * 2**30))
    try:
        ds = Dataset.open(root, cache=cache)
    except (DataError, FileNotFoundError, ValueError, OSError) as e:
        raise ConfigError(f"data.root={root}: {str(e).splitlines()[0]}") from None
    if ds.manifest.task != cfg["task"]:
        raise ConfigError(f"data.root={root} holds a {ds.manifest.task} dataset; the model ({cfg['method']}) "
                          f"needs {cfg['task']}")
    trained = cfg["data"]["dims"]
    if ds.manifest.dims.get("D") != trained.get("D"):
        raise ConfigError(f"data.root={root} has feature size D={ds.manifest.dims.get('D')}; the model was trained "
                          f"on D={trained.get('D')} ({cfg['data']['name']})")
    return ds


def evaluate(values: dict) -> int:
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # stderr is for the one-line errors
    client = MlflowClient(values["mlflow.tracking_uri"])
    with tempfile.TemporaryDirectory() as tmp:
        try:
            run_id, cfg, state_file = _model_files(client, values["run"], tmp)
            ds = _open(values, cfg)
        except ConfigError as e:
            fail(str(e))
        state = torch.load(state_file, map_location="cpu", weights_only=True)
    members = [m for m in values["members"].split(",") if m] or None
    if members is not None and (bad := [m for m in members if m not in state.get("stages", {})]):
        fail(f"members={values['members']}: {', '.join(bad)} not a stage of the model of run {run_id}; allowed: "
             f"a subset of {', '.join(state.get('stages', {}))}")
    options = values["model"]
    for name in (members or state.get("stages", {})):  # checked before the data loads
        try:
            training.stage_params(state["stages"][name], options)
        except ValueError as e:
            fail(str(e))
    present = ds.manifest.splits
    splits = [s for s in values["splits"].split(",") if s] or [s for s in EVAL_SPLITS if s in present]
    missing = [s for s in splits if s not in present]
    if missing or not splits:
        fail(f"splits={','.join(missing) or '(none)'}: not in data.root={ds.root}; allowed: "
             f"{', '.join(s for s in present if s != 'train')}")
    try:
        ds.verify(splits)
        data = tasks.load(ds, splits=tuple(splits), optional=())
    except (DataError, ValueError, KeyError) as e:
        fail(f"data.root={ds.root}: {str(e).splitlines()[0]}")
    try:
        model = training.load_predictor(state, data.info, members=members, options=options or None)
    except (RuntimeError, ValueError, KeyError) as e:
        first = next((ln.strip() for ln in str(e).splitlines() if "size mismatch" in ln or "Missing" in ln),
                     str(e).splitlines()[0])
        fail(f"data.root={ds.root} does not fit the model of run {run_id} ({cfg['method']}, trained on "
             f"{cfg['data']['name']}): {first.rstrip('.')}")

    t0 = time.time()
    results, per_class = {}, {}
    for sp in splits:
        acc = engine.accumulate(model, data[sp], data.task, data.info, values["eval_batch_size"])
        results[sp] = acc.compute()
        if hasattr(acc, "per_class"):
            per_class[sp] = acc.per_class()
    names = list(data.task.metric_names)
    kept = f", stages {','.join(members)} of {','.join(state['stages'])}" if members else ""
    kept += "".join(f", model.{k}={v}" for k, v in options.items())
    print(f"model of run {run_id} ({cfg['method']}{kept}, epoch {cfg.get('epoch')}, trained on {cfg['data']['name']}) "
          f"on {ds.root} (digest {ds.digest[:12]}), {time.time() - t0:.1f}s:\n")
    if protocol := tasks.scoring_protocol(ds):
        print(protocol + "\n")
    print(table([[sp, *(results[sp].get(m) for m in names)] for sp in splits], ["split", *names]))  # absent: no GT
    if values["log"]:
        eval_id = _record(client, run_id, cfg, ds, results, per_class, values)
        print(f"\nrecorded as MLflow run {eval_id} (source run {run_id})")
    return 0


def per_class_rows(ds, per_class: dict) -> dict[str, list]:
    """The per-class accuracies as table columns: one row per (split, class)."""
    names = ds.read_table("classes").sort_by("class_id")
    ids, labels = names["class_id"].to_pylist(), names["name"].to_pylist()
    heldout = names["heldout"].to_pylist() if "heldout" in names.column_names else [False] * len(ids)
    cols: dict[str, list] = {"split": [], "class_id": [], "class": [], "heldout": [], "box": [], "query": []}
    for sp, arrays in per_class.items():
        for i, cid in enumerate(ids):
            box, query = float(arrays["box"][cid]), float(arrays["query"][cid])
            if box != box and query != query:  # NaN: the class never occurs in this split
                continue
            cols["split"].append(sp)
            cols["class_id"].append(cid)
            cols["class"].append(labels[i])
            cols["heldout"].append(bool(heldout[i]))
            cols["box"].append(None if box != box else box)
            cols["query"].append(None if query != query else query)
    return cols


def _record(client, source: str, cfg: dict, ds, results: dict, per_class: dict, values: dict) -> str:
    src = client.get_run(source)
    exp_id = src.info.experiment_id
    run = client.create_run(exp_id, run_name=f"evaluate-{lineage.dataset_name(str(ds.root))}-{source[:8]}",
                            tags={"kind": "evaluation", "source_run": source, "method": cfg["method"],
                                  "model_uri": f"runs:/{source}/{lineage.MODEL_DIR}",
                                  **({"members": values["members"]} if values.get("members") else {}),
                                  **{f"model.{k}": str(v) for k, v in values["model"].items()},
                                  "command": "python -m orchestration.evaluate " + " ".join(sys.argv[1:])})
    rid = run.info.run_id
    lineage.log_dataset(client, rid, ds, context="evaluation")
    now = int(time.time() * 1000)
    client.log_batch(rid, metrics=[Metric(f"{sp}/{m}", float(v), now, 0) for sp, d in results.items()
                                   for m, v in d.items()])
    if per_class:
        client.log_table(rid, data=per_class_rows(ds, per_class), artifact_file="per_class.json")
    client.set_terminated(rid, "FINISHED")
    return rid
