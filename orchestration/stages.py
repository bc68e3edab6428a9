"""Stages shared by a sweep's trials (a ``causal`` sweep's ``stvg`` backbone).

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

import hashlib
import io
import json
import re
import time
import torch

from grounding import recipes
from grounding.data import storage

MANIFEST = "manifest.json"
STATE = "stage.pt"
HISTORY = "history.json"
FORMAT = 1


class StageError(ValueError):
    """A bad or missing stage; the message is one line."""


# ------------------------------------------------------------------------------------ the store
def stage_uri(exp_path: str, name: str, key: str) -> str:
    return storage.join(exp_path, "stages", f"{name}-{key[:16]}")


def read_manifest(uri: str) -> dict | None:
    return storage.read_json(storage.join(uri, MANIFEST))


def write_stage(uri: str, result: dict, manifest: dict) -> dict:
    """Write the state and the history, then the manifest (last: its presence means complete)."""
    buf = io.BytesIO()
    torch.save({"model": result["model"], "epoch": result["epoch"], "metrics": result["metrics"]}, buf)
    blob = buf.getvalue()
    fs, p = storage.filesystem(uri)
    fs.makedirs(p, exist_ok=True)
    with fs.open(storage.join(p, STATE), "wb") as f:
        f.write(blob)
    with fs.open(storage.join(p, HISTORY), "wb") as f:
        f.write(json.dumps(result["history"], default=float).encode())
    manifest = {**manifest, "format": FORMAT, "sha256": hashlib.sha256(blob).hexdigest(), "bytes": len(blob),
                "selected_epoch": result["epoch"], "val": result["metrics"],
                "shapes": {k: list(v.shape) for k, v in result["model"].items()}, "created": time.time()}
    with fs.open(storage.join(p, MANIFEST), "wb") as f:
        f.write(json.dumps(manifest, indent=2, sort_keys=True).encode())
    return manifest


def load_stage(uri: str) -> tuple[dict, dict]:
    """The stage's saved state and its manifest; the state is checked against the manifest."""
    man = read_manifest(uri)
    if man is None:
        raise StageError(f"no stage manifest ({MANIFEST}) at {uri}")
    fs, p = storage.filesystem(uri)
    with fs.open(storage.join(p, STATE), "rb") as f:
        blob = f.read()
    digest = hashlib.sha256(blob).hexdigest()
    if digest != man["sha256"]:
        raise StageError(f"stage at {uri}: {STATE} has sha256 {digest[:12]}, its manifest says {man['sha256'][:12]}")
    return torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True), man


# ----------------------------------------------------------------------------- in the trial
def prerequisites(recipe: recipes.Recipe, resolved: dict, run: dict, data, device, wrap=None,
                  amp: bool = False) -> tuple[dict[str, dict], dict[str, dict]]:
    """The selected states of the recipe's prerequisite stages, for initialising the outputs:
    read from the sweep's store when the driver built (or was given) the stage, trained here
    otherwise. Returns ``(states, used)``; ``used[name]`` says where each came from."""
    shared = run.get("shared") or {}
    states: dict[str, dict] = {}
    used: dict[str, dict] = {}
    for name in recipe.prerequisites():
        rs = resolved[name]
        ref = shared.get(name)
        key = recipes.stage_key(recipe, resolved, name, run["data_digest"], run["seed"])
        if ref is not None and (ref.get("explicit") or ref["key"] == key):
            state, man = load_stage(ref["uri"])
            states[name] = state["model"]
            used[name] = {"sha256": man["sha256"], "uri": ref["uri"], "selected_epoch": str(man["selected_epoch"])}
        else:
            init = states.get(rs.init) if rs.init else None
            res = recipes.train_stage(rs, data, run["seed"], device, init, wrap, run["eval_batch_size"], amp)
            states[name] = res["model"]
            used[name] = {"sha256": "trained-in-trial", "selected_epoch": str(res["epoch"])}
    return states, used


# ------------------------------------------------------------------------------- the driver
def shared_stages(run: dict, searched: set[str]) -> list[tuple[str, recipes.ResolvedStage, str]]:
    """``(name, resolved stage, key)`` of every shared prerequisite of the sweep's recipe (the
    recipe as the sweep's fixed values and the method's defaults declare it)."""
    recipe, resolved = recipes.plan(run["method"], {}, run["fixed"], run["epochs"], run["metric"], searched)
    return [(n, resolved[n], recipes.stage_key(recipe, resolved, n, run["data_digest"], run["seed"]))
            for n in recipe.prerequisites() if n in resolved]


def _build_task(run: dict, name: str, uri: str, key: str, mlflow_run_id: str) -> dict:
    """Ray task: train one shared stage (and, in order, the shared stages it starts from, which
    the driver built before it) and write it to the store."""
    from .trial import load_data

    torch.set_num_threads(run["threads"])
    use_cuda = run["gpus_per_worker"] > 0 and torch.cuda.is_available()
    device = torch.device("cuda" if use_cuda else "cpu")
    data = load_data(run, 0, 1)
    recipe, resolved = recipes.plan(run["method"], {}, run["fixed"], run["epochs"], run["metric"],
                                    set(run["searched"]))
    rs = resolved[name]
    init = None
    if rs.init:
        init = load_stage(run["shared"][rs.init]["uri"])[0]["model"]
    t0 = time.time()

    def progress(epoch, m):
        print(f"[stage {name}] epoch {epoch}/{rs.epochs}: val/{run['metric']}={m.get('epoch_val/' + run['metric'], 0):.4f} "
              f"({time.time() - t0:.0f}s)", flush=True)

    result = recipes.train_stage(rs, data, run["seed"], device, init, None, run["eval_batch_size"],
                                 use_cuda and run.get("amp", True), on_epoch=progress)
    man = write_stage(uri, result, {"stage": name, "key": key, "method": rs.method, "params": rs.params,
                                    "identity": rs.identity(), "data_digest": run["data_digest"],
                                    "data_root": run["data_root"], "dims": dict(data.info.dims),
                                    "seed": run["seed"], "sweep": run["sweep"], "mlflow_run_id": mlflow_run_id,
                                    "train_s": time.time() - t0})
    return {"manifest": man, "history": result["history"]}


def ensure_shared(run: dict, searched: set[str], exp_path: str, client, exp_id: str, parent: str,
                  log=print) -> dict[str, dict]:
    """Build (or find) every shared stage of the sweep; returns ``run['shared']``."""
    import ray

    shared = dict(run.get("shared") or {})
    for name, rs, key in shared_stages(run, searched):
        if name in shared:  # given on the command line (backbone=)
            log(f"stage {name}: given, {shared[name]['uri']} (sha256 {shared[name]['sha256'][:12]})")
            _link(client, exp_id, parent, name, shared[name].get("run_id", ""), shared[name]["uri"])
            continue
        uri = stage_uri(exp_path, name, key)
        man = read_manifest(uri)
        if man is not None:
            log(f"stage {name}: reusing {uri} (built {time.strftime('%H:%M:%S', time.localtime(man['created']))}, "
                f"selected epoch {man['selected_epoch']}, sha256 {man['sha256'][:12]})")
        else:
            run_id = stage_run(client, exp_id, run["sweep"], name, key, uri, rs, run["data_digest"])
            log(f"stage {name}: building once for the sweep ({rs.method}, {rs.epochs} epochs) -> {uri}; "
                f"MLflow run {run_id}")
            t0 = time.time()
            task = ray.remote(_build_task).options(
                num_cpus=run["cpus_per_worker"], num_gpus=run["gpus_per_worker"], max_retries=run["failures"])
            out = ray.get(task.remote({**run, "shared": shared, "searched": sorted(searched)}, name, uri, key, run_id))
            man = out["manifest"]
            log_stage_run(client, run_id, out["history"], man)
            log(f"stage {name}: built in {time.time() - t0:.0f}s, selected epoch {man['selected_epoch']} "
                f"(val/{run['metric']}={man['val'].get(run['metric'], float('nan')):.4f}), sha256 {man['sha256'][:12]}")
        shared[name] = {"uri": uri, "key": key, "explicit": False, "sha256": man["sha256"]}
        _link(client, exp_id, parent, name, man.get("mlflow_run_id", ""), uri)
    return shared


def _link(client, exp_id: str, parent: str, name: str, run_id: str, uri: str) -> None:
    """Tags on the sweep's parent run, and a line in its description, pointing at the stage."""
    client.set_tag(parent, f"stage.{name}.run_id", run_id)
    client.set_tag(parent, f"stage.{name}.uri", uri)
    note = client.get_run(parent).data.tags.get("mlflow.note.content", "")
    line = f"Shared stage `{name}`: [its MLflow run](#/experiments/{exp_id}/runs/{run_id}), stored at `{uri}`."
    if run_id and line not in note:
        client.set_tag(parent, "mlflow.note.content", f"{note}\n\n{line}" if note else line)


_RUN_ID = re.compile(r"^[0-9a-f]{32}$")


def resolve_backbone(value: str, run: dict, ds, client_factory) -> dict:
    """``backbone=`` as a stage reference, checked against the sweep (raises :class:`StageError`)."""
    from grounding.models import registry

    recipe = recipes.plan(run["method"], {}, run["fixed"], run["epochs"], run["metric"], set())[0]
    if "backbone" not in recipe.prerequisites():
        raise StageError(f"backbone={value}: method {run['method']} (with these settings) trains no backbone "
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
        from .config import absolute_uri

        uri = absolute_uri(value)
    man = read_manifest(uri)
    if man is None:
        raise StageError(f"backbone={value}: no stage manifest ({MANIFEST}) at {uri}")
    rs = recipes.resolve(recipe, run["method"], {}, run["fixed"], run["epochs"], run["metric"],
                         set(recipe.chain("backbone")))["backbone"]
    if man["data_digest"] != ds.digest:
        raise StageError(f"backbone={value}: trained on dataset {man['data_digest'][:12]}, this sweep's is "
                         f"{ds.digest[:12]}; allowed: a backbone of the same dataset")
    if man["method"] != rs.method:
        raise StageError(f"backbone={value}: a {man['method']} model; this sweep's backbone is {rs.method}")
    from grounding import tasks

    info = tasks.get(ds.manifest.task).data_info(ds, None, run["seed"])
    want = {k: list(v.shape) for k, v in registry.build(rs.method, rs.params, info).state_dict().items()}
    diff = sorted(k for k in set(want) | set(man["shapes"]) if want.get(k) != man["shapes"].get(k))
    if diff:
        k = diff[0]
        dims = ", ".join(f"{p}={man['params'][p]}" for p in ("embed_dim", "heads") if p in man["params"])
        raise StageError(f"backbone={value}: parameter {k} has shape {man['shapes'].get(k)}, this sweep's backbone "
                         f"needs {want.get(k)} (the given one has {dims or 'other dims'})")
    return {"uri": uri, "key": man["key"], "explicit": True, "sha256": man["sha256"],
            "run_id": man.get("mlflow_run_id", "")}


# ------------------------------------------------------------------------------------ MLflow
def stage_run(client, exp_id: str, sweep: str, name: str, key: str, uri: str, rs: recipes.ResolvedStage,
              data_digest: str) -> str:
    """The stage's own MLflow run (found again by sweep + key after an interrupted build)."""
    from mlflow.entities import Param

    found = client.search_runs([exp_id], filter_string=f"tags.sweep = '{sweep}' and tags.stage_key = '{key}'",
                               max_results=1)
    if found:
        client.update_run(found[0].info.run_id, status="RUNNING")
        return found[0].info.run_id
    run = client.create_run(exp_id, run_name=f"{sweep}-stage-{name}",
                            tags={"sweep": sweep, "kind": "stage", "stage": name, "stage_key": key, "stage_uri": uri,
                                  "method": rs.method, "data_manifest_sha256": data_digest,
                                  "mlflow.note.content": f"Stage `{name}` ({rs.method}) of sweep {sweep}, "
                                                         f"trained once and shared by its trials."})
    ident = rs.identity()
    params = {**{f"model.{k}": v for k, v in ident["model"].items()},
              **{f"optim.{k}": v for k, v in ident["optim"].items()},
              "epochs": ident["epochs"], "select": ",".join(ident["select"]), "init": ident["init"] or "scratch"}
    client.log_batch(run.info.run_id, params=[Param(k, str(v)[:6000]) for k, v in sorted(params.items())])
    return run.info.run_id


def log_stage_run(client, run_id: str, hist: list[dict], man: dict) -> None:
    from mlflow.entities import Metric, RunTag

    now = int(time.time() * 1000)
    metrics = [Metric(k, float(v), now, int(h["epoch"])) for h in hist for k, v in h.items()
               if k != "epoch" and isinstance(v, (int, float)) and not isinstance(v, bool)]
    for i in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[i:i + 1000])
    client.log_batch(run_id, tags=[RunTag("selected_epoch", str(man["selected_epoch"])),
                                   RunTag("stage_sha256", man["sha256"])])
    client.set_terminated(run_id, status="FINISHED")
