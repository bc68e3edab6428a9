"""What one Tune trial runs.

``trial_fn`` is the Tune function trainable. With one worker per trial it trains in the trial's
own actor (no Train worker group, no placement group, no process group: the fixed start-up cost
is the actor, and with ``reuse_actors`` later trials reuse it, its imports and its loaded data).
With more workers it builds a Ray Train ``TorchTrainer`` (DDP over gloo on CPU, nccl on GPU) that
reports back to Tune through ``TuneReportCallback``. Both paths run the same :func:`train_loop`;
only the :class:`Session` that reports and checkpoints differs.
"""

from __future__ import annotations

import os
import socket
import tempfile
import time
from typing import Any

import ray
import ray.train
import torch
from ray import tune
from ray.train.torch import TorchConfig, TorchTrainer
from ray.tune.integration.ray_train import TuneReportCallback

from grounding import recipes, training
from grounding.engine import OPTIM_KEYS, OptimConfig
from grounding.models import registry

from .data import load_data
from .spec import TrialSpec
from .stage_store import prerequisites

STATE_FILE = "state.pt"
SELECTED_FILE = "selected.pt"

class Session:
    rank = 0
    world = 1

    def checkpoint(self):
        raise NotImplementedError

    def report(self, metrics: dict, checkpoint_dir: str | None) -> None:
        raise NotImplementedError


class TuneSession(Session):
    """Single-worker trial: report and checkpoint straight to Tune."""

    def checkpoint(self):
        return tune.get_checkpoint()

    def report(self, metrics, checkpoint_dir):
        ckpt = tune.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        tune.report(metrics, checkpoint=ckpt)


class TrainSession(Session):
    """A Ray Train worker: every rank reports (they must), rank 0 alone with a checkpoint."""

    def __init__(self):
        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()

    def checkpoint(self):
        return ray.train.get_checkpoint()

    def report(self, metrics, checkpoint_dir):
        ckpt = ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir and self.rank == 0 else None
        ray.train.report(metrics, checkpoint=ckpt)


def split_params(hp: dict, spec: TrialSpec) -> tuple[dict, OptimConfig]:
    """Trial hyperparameters + the sweep's fixed ones -> (model params, optimiser config)."""
    merged = {**spec.fixed, **hp}
    fields = registry.config_fields(spec.method)
    model = {k: v for k, v in merged.items() if k in fields}
    optim = {k: v for k, v in merged.items() if k in OPTIM_KEYS}
    unknown = set(merged) - set(model) - set(optim)
    if unknown:
        raise KeyError(f"hyperparameters {sorted(unknown)} belong to neither {spec.method} nor the optimiser")
    return model, OptimConfig(**optim)


def _same_state(a: dict | None, b: dict | None) -> bool:
    return (a is not None and b is not None and a.keys() == b.keys()
            and all(torch.equal(a[k].detach().cpu(), b[k]) for k in a))


def _save(group: training.Group, hp: dict, spec: TrialSpec, data, directory: str) -> None:
    """``state.pt``: everything a restarted trial continues from; ``selected.pt``: the predictor
    the trial delivers so far (each output stage at its selected epoch), evaluated on the test
    splits once the trial ends (:mod:`orchestration.callbacks`).

    Nothing is stored twice: each stage's selected weights live in ``selected.pt`` only
    (``state.pt`` marks them ``None``), and a stage whose current weights are its selected ones
    (it was selected at this epoch) stores no current weights either; :func:`load_state` puts
    both back. (At D = 4096 a causal trial's 328 MB frame bank was in both files, twice in state.pt.)"""
    params = {k: v for k, v in {**spec.fixed, **hp}.items() if k in registry.config_fields(spec.method)}
    package = group.package(spec.method, params, data.digest)
    state = group.state_dict()
    for n, st in state["stages"].items():
        selected = package["stages"][n]["model"]
        st["best"] = {**st["best"], "state": None}  # = selected.pt's stages[n]["model"]
        if int(st["best"]["epoch"]) == int(st["epoch"]) and _same_state(st["model"], selected):
            st["model"] = None  # the current weights are the selected ones
    torch.save({"group": state, "torch_rng": torch.get_rng_state(), "weights_in": SELECTED_FILE},
               os.path.join(directory, STATE_FILE))
    torch.save(package, os.path.join(directory, SELECTED_FILE))


def load_state(directory: str, package: dict | None = None) -> dict | None:
    """``state.pt`` of a checkpoint folder with the weights :func:`_save` left in ``selected.pt``
    put back (``package``: that file, if already read); None without a state file."""
    path = os.path.join(directory, STATE_FILE)
    if not os.path.exists(path):
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("weights_in"):
        if package is None:
            package = torch.load(os.path.join(directory, SELECTED_FILE), map_location="cpu", weights_only=True)
        for n, st in state["group"]["stages"].items():
            selected = package["stages"][n]["model"]
            if st["best"].get("state") is None:
                st["best"]["state"] = selected
            if st["model"] is None:
                st["model"] = selected
    return state


def _restore(checkpoint, group: training.Group) -> int:
    with checkpoint.as_directory() as d:
        state = load_state(d)
    group.load_state_dict(state["group"])  # each stage's convergence rule and random stream included
    torch.set_rng_state(state["torch_rng"])
    return group.epoch


def _node_id() -> str:
    try:
        return ray.get_runtime_context().get_node_id()
    except Exception:  # outside Ray (tests driving the loop directly)
        return socket.gethostname()


def train_loop(hp: dict, spec: TrialSpec, session: Session) -> None:
    """Train one configuration: the method's recipe (resolved by :mod:`grounding.recipes`, run by
    :mod:`grounding.training`; one stage for most methods), its prerequisite stages first (shared
    ones as the sweep built them), then its output stages together, reporting after each epoch."""
    t_entry = time.time()
    torch.set_num_threads(spec.threads)
    use_cuda = spec.gpus_per_worker > 0 and torch.cuda.is_available()
    device = torch.device(f"cuda:{torch.cuda.current_device()}" if use_cuda else "cpu")
    amp = use_cuda and spec.amp
    data = load_data(spec, session.rank, session.world)
    recipe, resolved = recipes.plan(spec.method, hp, spec.fixed, spec.epochs,
                                    spec.metric, converge=spec.converge)

    def ddp(m):
        return torch.nn.parallel.DistributedDataParallel(
            m, device_ids=[device.index] if use_cuda else None, broadcast_buffers=False,
            # a model whose steps leave parameters unused (vcma's E/M phases) says so
            find_unused_parameters=bool(getattr(m, "ddp_find_unused_parameters", False)))

    wrap = ddp if session.world > 1 else None
    init, used = prerequisites(recipe, resolved, spec, data, device, wrap, amp)
    group = training.build_group(recipe, resolved, data, spec.seed, device, init, wrap, spec.eval_batch_size)
    start = 0
    ckpt = session.checkpoint()
    if ckpt is not None:
        start = _restore(ckpt, group)
    nodes = 1
    if session.world > 1:
        hosts = [None] * session.world
        torch.distributed.all_gather_object(hosts, _node_id())
        nodes = len(set(hosts))
    t_ready = time.time()
    for epoch in range(start, group.epochs):
        if group.done:  # every stage flat or out of epochs (also when restored from the epoch it stopped at)
            break
        metrics = {"epoch": epoch + 1, **group.step(data, amp)}
        if epoch == start:
            metrics["time/setup_s"] = t_ready - t_entry  # entry -> first training step
            metrics["time/first_step_unix"] = t_ready
            metrics["time/resumed_from_epoch"] = start
            metrics["cluster/world_size"] = session.world
            metrics["cluster/nodes"] = nodes  # distinct Ray nodes the ranks run on
            metrics.update({f"tag/stage.{n}.{k}": v for n, u in used.items() for k, v in u.items()})
        # converge/flat (from group.step): 1 once every stage's own curve is flat (stage/<n>/converge/flat
        # per stage of an ensemble); a stage's rule runs on its selection score, the same on every rank
        with tempfile.TemporaryDirectory() as d:
            if session.rank == 0:
                _save(group, hp, spec, data, d)
            session.report(metrics, d if session.rank == 0 else None)


def _worker_loop(config: dict) -> None:
    train_loop(config["hp"], config["spec"], TrainSession())


def _fit_torch_trainer(hp: dict, spec: TrialSpec) -> None:
    gpu = spec.gpus_per_worker > 0
    resources = {"CPU": spec.cpus_per_worker, **({"GPU": spec.gpus_per_worker} if gpu else {})}
    trial_id = tune.get_context().get_trial_id()
    trainer = TorchTrainer(
        _worker_loop,
        train_loop_config={"hp": hp, "spec": spec},
        scaling_config=ray.train.ScalingConfig(num_workers=spec.workers, use_gpu=gpu,
                                               resources_per_worker=resources,
                                               placement_strategy=spec.placement),
        torch_config=TorchConfig(backend="nccl" if gpu else "gloo"),
        run_config=ray.train.RunConfig(
            # a fixed name per trial: a restarted trial resumes this run's latest checkpoint
            name=f"{spec.sweep}-train-{trial_id}",
            storage_path=spec.storage_path,
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=spec.checkpoints_keep, checkpoint_score_order="max",
                checkpoint_score_attribute=f"val/{spec.metric}"),
            failure_config=ray.train.FailureConfig(max_failures=spec.failures),
            callbacks=[TuneReportCallback()],
        ),
    )
    trainer.fit()


def trial_fn(config: dict[str, Any], spec: TrialSpec) -> None:
    """Tune function trainable: ``config`` holds the trial's sampled hyperparameters."""
    if spec.use_trainer:
        _fit_torch_trainer(dict(config), spec)
    else:
        train_loop(dict(config), spec, TuneSession())


def cell_trial(config: dict[str, Any], spec: TrialSpec) -> None:
    """Tune function trainable of one comparison cell: the sweep's trial under the cell's method,
    seed and configuration (all fixed, nothing sampled)."""
    cell = config["cell"]
    trial_fn({}, spec.cell(cell["method"], cell["seed"], cell["params"], cell.get("shared") or {}))
