"""Ray task bodies of the final evaluation: a trial's delivered predictor (``selected.pt``, each
output stage at its best-validation epoch) on the IID and OOD test splits, beside its last-epoch
predictor for reference, and over a model's inference-only grid on val. Launched by the driver's
:class:`orchestration.callbacks.FinalTest` (the whole protocol is described there)."""

from __future__ import annotations

import os
import time

import torch
from ray.tune import Checkpoint

from grounding import engine, inference_grid, training
from grounding.models import registry

from .data import load_data
from .spec import TrialSpec
from .trial import SELECTED_FILE, load_state

SPLITS = ("test_iid", "test_ood")
LAST = "last"  # metric prefix of the last-epoch predictor's test scores (reported, never selected)


def evaluate_selected(checkpoint, spec: TrialSpec) -> dict:
    """Ray task body: the delivered predictor of a trial's checkpoint on the test splits."""
    torch.set_num_threads(max(1, int(spec.threads)))
    with checkpoint.as_directory() as d:
        package = torch.load(os.path.join(d, SELECTED_FILE), map_location="cpu", weights_only=True)
        state = load_state(d, package)  # the weights state.pt shares with selected.pt put back
    if package["data_digest"] != spec.data_digest:
        raise RuntimeError(f"checkpoint of dataset {package['data_digest'][:12]}, sweep's is {spec.data_digest[:12]}")
    # a model with inference-only knobs (grounding.inference_grid) is also scored on val over their grid
    gridded = any(hasattr(registry.get(st["method"]), "inference_grid") for st in package["stages"].values())
    data = load_data(spec, 0, 1, splits=SPLITS + (("val",) if gridded else ()))
    predictor = training.load_predictor(package, data.info)
    out: dict = {"selected_epoch": int(package["selected_epoch"])}
    t0 = time.time()
    for split in SPLITS:
        if split in data.splits:
            m = engine.evaluate(predictor, data[split], data.task, data.info, spec.eval_batch_size)
            out.update({f"{split}/{k}": v for k, v in m.items()})
    out["time/test_s"] = time.time() - t0
    last = last_package(package, state)
    if last is not None:
        out["last_epoch"] = int(last["selected_epoch"])
        same = all(st["epoch"] == package["stages"][n]["epoch"] for n, st in last["stages"].items())
        last_predictor = predictor if same else training.load_predictor(last, data.info)
        for split in SPLITS:
            if split in data.splits:
                m = ({k[len(split) + 1:]: v for k, v in out.items() if k.startswith(f"{split}/")} if same else
                     engine.evaluate(last_predictor, data[split], data.task, data.info, spec.eval_batch_size))
                out.update({f"{LAST}/{split}/{k}": v for k, v in m.items()})
    grid = inference_grid.knobs(predictor)
    if grid and "val" in data.splits:
        t0 = time.time()
        rows = inference_grid.evaluate_grid(predictor, data["val"], data.task, data.info, spec.eval_batch_size)
        metric = spec.metric
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
    scheme = storage_path.split("://", 1)[0] if "://" in storage_path else ""
    return Checkpoint(f"{scheme}://{path}" if scheme and "://" not in path else path)
