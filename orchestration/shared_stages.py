"""Stages shared by a sweep's trials, on the driver (a ``causal`` sweep's ``stvg`` backbone).

A recipe's prerequisite stage is *shared* when neither it nor any stage it starts from takes a
searched hyperparameter (:func:`grounding.recipes.is_shared`): every trial would train exactly
the same thing. Such a stage is trained once per sweep, keyed by the sha256 of the data digest,
the seed and the resolved configuration of the stage and of its init chain
(:func:`grounding.recipes.stage_key`), and stored at ``<sweep path>/stages/<name>-<key[:16]>/``
(a local folder or ``s3://…``, through :mod:`grounding.data.storage`).

Who builds it, and why no lock is needed: the stage's configuration does not depend on any
trial's sample, so the driver knows it before any trial exists. :func:`ensure_shared` builds it
there, in one Ray task with one trial's resources, *before* ``Tuner.fit`` starts; trials only
ever read a finished stage. There is therefore exactly one build per sweep, no trial waits on
another, and there is no cross-process lock to get wrong on an object store (S3 offers neither
rename nor, through fsspec, a portable create-if-absent; heartbeats would have to guess a
timeout). The concurrent trial slots would have had to wait for the backbone anyway, so building
it first costs no wall time.

Crash safety: a stage folder holds ``stage.pt`` (the selected state), ``history.json`` (its
curves) and ``manifest.json``, written last and carrying ``stage.pt``'s sha256. A folder without
a manifest is an interrupted build: ignored and rebuilt; a reader checks the sha256 before it
uses the state, so a half-written or damaged file is never loaded. ``resume=`` finds the manifest
and reuses the stage. The build is recorded as its own MLflow run (tag ``kind=stage``, its curves
at ``step = epoch``), linked from the sweep's parent run by the tags ``stage.<name>.run_id`` and
``stage.<name>.uri``; it is not nested under the parent, so it is never counted as a trial.

``backbone=<MLflow run id | stage folder>`` supplies the stage named ``backbone`` instead
(:func:`resolve_backbone`): it must hold a manifest, come from the same dataset (digest) and the
same model class, and have the parameter shapes the sweep's backbone would have (dims); anything
else is a one-line error before Ray starts.
"""

from __future__ import annotations

import dataclasses
import re
import time

import ray

from grounding import recipes, tasks
from grounding.models import registry

from .cli.keys import absolute_uri
from .tracking.runs import link_stage, log_stage_run, stage_run
from .worker.spec import TrialSpec
from .worker.stage_store import MANIFEST, StageError, build_stage, read_manifest, stage_uri


def shared_stages(spec: TrialSpec, searched: set[str]) -> list[tuple[str, recipes.ResolvedStage, str]]:
    """``(name, resolved stage, key)`` of every shared prerequisite of the sweep's recipe (the
    recipe as the sweep's fixed values and the method's defaults declare it)."""
    recipe, resolved = recipes.plan(spec.method, {}, spec.fixed, spec.epochs, spec.metric, searched, spec.converge)
    return [(n, resolved[n], recipes.stage_key(recipe, resolved, n, spec.data_digest, spec.seed))
            for n in recipe.prerequisites() if n in resolved]


def ensure_shared(spec: TrialSpec, searched: set[str], exp_path: str, client, exp_id: str, parent: str,
                  log=print) -> dict[str, dict]:
    """Build (or find) every shared stage of the sweep; returns ``spec.shared``."""
    shared = dict(spec.shared)
    for name, rs, key in shared_stages(spec, searched):
        if name in shared:  # given on the command line (backbone=)
            log(f"stage {name}: given, {shared[name]['uri']} (sha256 {shared[name]['sha256'][:12]})")
            link_stage(client, exp_id, parent, name, shared[name].get("run_id", ""), shared[name]["uri"])
            continue
        uri = stage_uri(exp_path, name, key)
        man = read_manifest(uri)
        if man is not None:
            log(f"stage {name}: reusing {uri} (built {time.strftime('%H:%M:%S', time.localtime(man['created']))}, "
                f"selected epoch {man['selected_epoch']}, sha256 {man['sha256'][:12]})")
        else:
            run_id = stage_run(client, exp_id, spec.sweep, name, key, uri, rs, spec.data_digest)
            log(f"stage {name}: building once for the sweep ({rs.method}, {rs.epochs} epochs) -> {uri}; "
                f"MLflow run {run_id}")
            t0 = time.time()
            task = ray.remote(build_stage).options(
                num_cpus=spec.cpus_per_worker, num_gpus=spec.gpus_per_worker, max_retries=spec.failures)
            out = ray.get(task.remote(dataclasses.replace(spec, shared=shared), sorted(searched), name, uri, key,
                                      run_id))
            man = out["manifest"]
            log_stage_run(client, run_id, out["history"], man)
            log(f"stage {name}: built in {time.time() - t0:.0f}s, selected epoch {man['selected_epoch']} "
                f"(val/{spec.metric}={man['val'].get(spec.metric, float('nan')):.4f}), sha256 {man['sha256'][:12]}")
        shared[name] = {"uri": uri, "key": key, "explicit": False, "sha256": man["sha256"]}
        link_stage(client, exp_id, parent, name, man.get("mlflow_run_id", ""), uri)
    return shared


_RUN_ID = re.compile(r"^[0-9a-f]{32}$")


def resolve_backbone(value: str, spec: TrialSpec, ds, client_factory) -> dict:
    """``backbone=`` as a stage reference, checked against the sweep (raises :class:`StageError`)."""
    recipe = recipes.plan(spec.method, {}, spec.fixed, spec.epochs, spec.metric, set())[0]
    if "backbone" not in recipe.prerequisites():
        raise StageError(f"backbone={value}: method {spec.method} (with these settings) trains no backbone "
                         f"stage; allowed only where its recipe has one")
    if _RUN_ID.match(value):
        try:
            tags = client_factory().get_run(value).data.tags
        except Exception as e:  # noqa: BLE001 - MLflow raises several kinds for an unknown id
            raise StageError(f"backbone={value}: no MLflow run with this id ({type(e).__name__})") from None
        uri = tags.get("stage_uri")
        if not uri:
            raise StageError(f"backbone={value}: MLflow run {value} is not a stage run (no stage_uri tag)")
    else:
        uri = absolute_uri(value)
    man = read_manifest(uri)
    if man is None:
        raise StageError(f"backbone={value}: no stage manifest ({MANIFEST}) at {uri}")
    rs = recipes.resolve(recipe, spec.method, {}, spec.fixed, spec.epochs, spec.metric,
                         set(recipe.chain("backbone")), spec.converge)["backbone"]
    if man["data_digest"] != ds.digest:
        raise StageError(f"backbone={value}: trained on dataset {man['data_digest'][:12]}, this sweep's is "
                         f"{ds.digest[:12]}; allowed: a backbone of the same dataset")
    if man["method"] != rs.method:
        raise StageError(f"backbone={value}: a {man['method']} model; this sweep's backbone is {rs.method}")
    info = tasks.get(ds.manifest.task).data_info(ds, None, spec.seed)
    want = {k: list(v.shape) for k, v in registry.build(rs.method, rs.params, info).state_dict().items()}
    diff = sorted(k for k in set(want) | set(man["shapes"]) if want.get(k) != man["shapes"].get(k))
    if diff:
        k = diff[0]
        dims = ", ".join(f"{p}={man['params'][p]}" for p in ("embed_dim", "heads") if p in man["params"])
        raise StageError(f"backbone={value}: parameter {k} has shape {man['shapes'].get(k)}, this sweep's backbone "
                         f"needs {want.get(k)} (the given one has {dims or 'other dims'})")
    return {"uri": uri, "key": man["key"], "explicit": True, "sha256": man["sha256"],
            "run_id": man.get("mlflow_run_id", "")}
