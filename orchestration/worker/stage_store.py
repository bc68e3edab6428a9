"""The stage store: a stage a recipe shares across trials, stored at
``<sweep path>/stages/<name>-<key[:16]>/`` (a local folder or ``s3://…``): ``stage.pt`` (the selected
state), ``history.json`` (its curves) and ``manifest.json``, written last and carrying
``stage.pt``'s sha256. A folder without a manifest is an interrupted build; a reader checks the
sha256 before it uses the state. How the driver builds a shared stage once per sweep:
:mod:`orchestration.shared_stages`.

- :func:`stage_uri`, :func:`read_manifest`, :func:`write_stage`, :func:`load_stage`: the folder format
- :func:`prerequisites`: in a trial, the states its output stages start from (read or trained here)
- :func:`build_stage`: the Ray task body that trains one shared stage and writes it
"""

from __future__ import annotations

import hashlib
import io
import json
import time

import torch

from grounding import recipes, training
from grounding.data import storage

from .data import load_data
from .spec import TrialSpec

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
def prerequisites(recipe: recipes.Recipe, resolved: dict, spec: TrialSpec, data, device, wrap=None,
                  amp: bool = False) -> tuple[dict[str, dict], dict[str, dict]]:
    """The selected states of the recipe's prerequisite stages, for initialising the outputs:
    read from the sweep's store when the driver built (or was given) the stage, trained here
    otherwise. Returns ``(states, used)``; ``used[name]`` says where each came from."""
    shared = spec.shared or {}
    states: dict[str, dict] = {}
    used: dict[str, dict] = {}
    for name in recipe.prerequisites():
        rs = resolved[name]
        ref = shared.get(name)
        key = recipes.stage_key(recipe, resolved, name, spec.data_digest, spec.seed)
        if ref is not None and (ref.get("explicit") or ref["key"] == key):
            state, man = load_stage(ref["uri"])
            states[name] = state["model"]
            used[name] = {"sha256": man["sha256"], "uri": ref["uri"], "selected_epoch": str(man["selected_epoch"])}
        else:
            init = states.get(rs.init) if rs.init else None
            res = training.train_stage(rs, data, spec.seed, device, init, wrap, spec.eval_batch_size, amp)
            states[name] = res["model"]
            used[name] = {"sha256": "trained-in-trial", "selected_epoch": str(res["epoch"])}
    return states, used


def build_stage(spec: TrialSpec, searched: list[str], name: str, uri: str, key: str, mlflow_run_id: str) -> dict:
    """Ray task: train one shared stage (and, in order, the shared stages it starts from, which
    the driver built before it) and write it to the store."""
    torch.set_num_threads(spec.threads)
    use_cuda = spec.gpus_per_worker > 0 and torch.cuda.is_available()
    device = torch.device("cuda" if use_cuda else "cpu")
    data = load_data(spec, 0, 1)
    recipe, resolved = recipes.plan(spec.method, {}, spec.fixed, spec.epochs, spec.metric,
                                    set(searched), spec.converge)
    rs = resolved[name]
    init = None
    if rs.init:
        init = load_stage(spec.shared[rs.init]["uri"])[0]["model"]
    t0 = time.time()

    def progress(epoch, m):
        print(f"[stage {name}] epoch {epoch}/{rs.epochs}: val/{spec.metric}={m.get('epoch_val/' + spec.metric, 0):.4f} "
              f"({time.time() - t0:.0f}s)", flush=True)

    result = training.train_stage(rs, data, spec.seed, device, init, None, spec.eval_batch_size,
                                 use_cuda and spec.amp, on_epoch=progress)
    man = write_stage(uri, result, {"stage": name, "key": key, "method": rs.method, "params": rs.params,
                                    "identity": rs.identity(), "data_digest": spec.data_digest,
                                    "data_root": spec.data_root, "dims": dict(data.info.dims),
                                    "seed": spec.seed, "sweep": spec.sweep, "mlflow_run_id": mlflow_run_id,
                                    "train_s": time.time() - t0})
    return {"manifest": man, "history": result["history"]}
