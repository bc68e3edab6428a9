"""Lineage in MLflow: the dataset every run used, the model a trial selected, where users land.

* :func:`log_dataset` records a run's dataset with ``log_inputs`` (what the runs table's Datasets
  column shows): name (the dataset folder), digest (the manifest's sha256, first 16 hex digits),
  source (its root, a local folder or ``s3://…``), and as input tags the task, the full manifest
  digest, the feature dims and every split with its row count.
* :func:`log_model` logs a trial's delivered predictor (``model/selected.pt``) with the resolved
  configuration (``model/config.json``: method, task, model and optimiser hyperparameters, the
  dataset's digest, dims and root, the selected epoch and its validation metrics) to the trial's run; ``python -m
  orchestration.evaluate run=<run id>`` reads exactly these two files.
* :func:`mark_training_experiment` sets the MLflow 3 experiment kind, so the UI opens the
  experiment on its training runs rather than the GenAI traces overview.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from typing import Any

import torch
from mlflow.data.dataset_source_registry import resolve_dataset_source
from mlflow.data.meta_dataset import MetaDataset
from mlflow.entities import DatasetInput, InputTag
from mlflow.tracking import MlflowClient

from grounding import tasks
from grounding.engine import OPTIM_KEYS
from grounding.models import registry

from ..worker.final_eval import trial_checkpoint
from ..worker.trial import SELECTED_FILE  # the delivered predictor

MODEL_DIR = "model"
CONFIG_FILE = "config.json"

EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
TRAINING_KIND = "custom_model_development"


def dataset_name(root: str) -> str:
    return root.rstrip("/").rsplit("/", 1)[-1] or root


def dataset_input(ds, context: str = "training") -> DatasetInput:
    m = ds.manifest
    with warnings.catch_warnings():  # a local path matches two equivalent registered source types
        warnings.simplefilter("ignore")
        source = resolve_dataset_source(str(ds.root))
    meta = MetaDataset(source=source, name=dataset_name(str(ds.root)), digest=ds.digest[:16])
    splits = ",".join(f"{sp}:{m.split_rows(sp)}" for sp in m.splits)
    tags = [InputTag("mlflow.data.context", context), InputTag("task", m.task),
            InputTag("manifest_sha256", ds.digest), InputTag("splits", splits),
            InputTag("dims", ",".join(f"{k}={v}" for k, v in m.dims.items())),
            *([InputTag("scoring", p)] if (p := tasks.scoring_protocol(ds)) else [])]
    return DatasetInput(dataset=meta._to_mlflow_entity(), tags=tags)


def log_dataset(client: MlflowClient, run_id: str, ds, context: str = "training") -> None:
    client.log_inputs(run_id, datasets=[dataset_input(ds, context)])


def mark_training_experiment(client: MlflowClient, experiment_id: str) -> None:
    """The experiment opens on its runs (MLflow 3 shows a GenAI overview for an untyped one)."""
    exp = client.get_experiment(experiment_id)
    if exp.tags.get(EXPERIMENT_KIND_TAG) != TRAINING_KIND:
        client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, TRAINING_KIND)


def resolved_config(method: str, task: str, params: dict[str, Any], ds_info: dict[str, Any],
                    epoch: int | None, metric: str | None = None) -> dict:
    fields = registry.config_fields(method)
    return {"method": method, "task": task,
            "model": {k: v for k, v in params.items() if k in fields},
            "optim": {k: v for k, v in params.items() if k in OPTIM_KEYS},
            "data": ds_info, "epoch": epoch, "selected_by": metric}


def data_info(ds) -> dict:
    return {"root": str(ds.root), "name": dataset_name(str(ds.root)), "manifest_sha256": ds.digest,
            "task": ds.manifest.task, "dims": dict(ds.manifest.dims), "splits": list(ds.manifest.splits)}


def log_model(client: MlflowClient, run_id: str, checkpoint, config: dict) -> str:
    """Log the predictor a trial delivered (its checkpoint's ``selected.pt``: each output stage at
    its best-validation epoch, :mod:`orchestration.worker.final_eval`) and ``config`` under ``model/``
    of ``run_id``; returns the ``runs:/`` URI."""
    with checkpoint.as_directory() as d:
        src = os.path.join(d, SELECTED_FILE)
        package = torch.load(src, map_location="cpu", weights_only=True)
        config = {**config, "epoch": int(package.get("selected_epoch") or 0),
                  "val": {k: float(v) for k, v in (package.get("val") or {}).items()}}
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, MODEL_DIR)
            os.makedirs(out)
            shutil.copy(src, os.path.join(out, SELECTED_FILE))
            with open(os.path.join(out, CONFIG_FILE), "w") as f:
                json.dump(config, f, indent=2, default=str)
            client.log_artifacts(run_id, out, MODEL_DIR)
    client.set_tag(run_id, "model_uri", f"runs:/{run_id}/{MODEL_DIR}")
    return f"runs:/{run_id}/{MODEL_DIR}"


def best_checkpoint(result, metric: str):
    """The checkpoint holding the predictor a trial delivered: its latest (``selected.pt`` in it
    is each output stage at its best-validation epoch); a multi-worker trial's is in its Train run
    (:func:`orchestration.worker.final_eval.trial_checkpoint`)."""
    return trial_checkpoint(result.checkpoint, result.metrics, getattr(result, "path", "") or "")


def artifact_link(experiment_id: str, run_id: str, path: str) -> str:
    """A link the MLflow UI (hash router) opens on the run's artifact view with ``path`` selected."""
    return f"#/experiments/{experiment_id}/runs/{run_id}/artifacts/{path}"


def describe(client: MlflowClient, experiment_id: str, run_id: str, text: str, artifacts: list[str]) -> None:
    """The run's description (the Overview's note): ``text`` and a link to each artifact."""
    links = "\n".join(f"* [{p}]({artifact_link(experiment_id, run_id, p)})" for p in artifacts)
    client.set_tag(run_id, "mlflow.note.content", text + ("\n\nArtifacts:\n\n" + links if artifacts else ""))
