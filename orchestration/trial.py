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
import tempfile
import time
from typing import Any

import torch

from grounding import recipes, tasks
from grounding.data.cache import ShardCache
from grounding.data.shards import Dataset
from grounding.engine import OPTIM_KEYS, OptimConfig
from grounding.models import registry

STATE_FILE = "state.pt"
SELECTED_FILE = "selected.pt"

# One process keeps the data it loaded for the next trial it runs (actors are reused).
_DATA: dict[tuple, tasks.TaskData] = {}


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
        from ray import tune

        return tune.get_checkpoint()

    def report(self, metrics, checkpoint_dir):
        from ray import tune

        ckpt = tune.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        tune.report(metrics, checkpoint=ckpt)


class TrainSession(Session):
    """A Ray Train worker: every rank reports (they must), rank 0 alone with a checkpoint."""

    def __init__(self):
        import ray.train

        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()

    def checkpoint(self):
        import ray.train

        return ray.train.get_checkpoint()

    def report(self, metrics, checkpoint_dir):
        import ray.train

        ckpt = ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir and self.rank == 0 else None
        ray.train.report(metrics, checkpoint=ckpt)


def load_data(run: dict, rank: int, world: int, splits: tuple | None = None) -> tasks.TaskData:
    """This rank's share of the dataset (``splits``: a subset, e.g. the test splits only)."""
    key = (run["data_root"], run["data_digest"], rank, world, splits, run["seed"])  # DataInfo holds the seed
    if key not in _DATA:
        _DATA.clear()  # keep one dataset per process
        cache = ShardCache(run.get("cache_dir") or None, run.get("cache_max_bytes"))
        ds = Dataset.open(run["data_root"], cache=cache)
        if ds.digest != run["data_digest"]:
            raise RuntimeError(f"dataset at {run['data_root']} changed during the sweep "
                               f"(digest {ds.digest[:12]} != {run['data_digest'][:12]})")
        _DATA[key] = tasks.load(ds, **({"splits": splits} if splits else {}), rank=rank, world=world, seed=run["seed"])
    return _DATA[key]


def split_params(hp: dict, run: dict) -> tuple[dict, OptimConfig]:
    """Trial hyperparameters + the sweep's fixed ones -> (model params, optimiser config)."""
    merged = {**run["fixed"], **hp}
    fields = registry.config_fields(run["method"])
    model = {k: v for k, v in merged.items() if k in fields}
    optim = {k: v for k, v in merged.items() if k in OPTIM_KEYS}
    unknown = set(merged) - set(model) - set(optim)
    if unknown:
        raise KeyError(f"hyperparameters {sorted(unknown)} belong to neither {run['method']} nor the optimiser")
    return model, OptimConfig(**optim)


def _same_state(a: dict | None, b: dict | None) -> bool:
    return (a is not None and b is not None and a.keys() == b.keys()
            and all(torch.equal(a[k].detach().cpu(), b[k]) for k in a))


def _save(group: recipes.Group, hp: dict, run: dict, data, directory: str) -> None:
    """``state.pt``: everything a restarted trial continues from; ``selected.pt``: the predictor
    the trial delivers so far (each output stage at its selected epoch), evaluated on the test
    splits once the trial ends (:mod:`orchestration.final_test`).

    Nothing is stored twice: each stage's selected weights live in ``selected.pt`` only
    (``state.pt`` marks them ``None``), and a stage whose current weights are its selected ones
    (it was selected at this epoch) stores no current weights either; :func:`load_state` puts
    both back. (At D = 4096 a causal trial's 328 MB frame bank was in both files, twice in state.pt.)"""
    params = {k: v for k, v in {**run["fixed"], **hp}.items() if k in registry.config_fields(run["method"])}
    package = group.package(run["method"], params, data.digest)
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


def _restore(checkpoint, group: recipes.Group) -> int:
    with checkpoint.as_directory() as d:
        state = load_state(d)
    group.load_state_dict(state["group"])
    torch.set_rng_state(state["torch_rng"])
    return group.epoch


def _node_id() -> str:
    try:
        import ray

        return ray.get_runtime_context().get_node_id()
    except Exception:  # outside Ray (tests driving the loop directly)
        import socket

        return socket.gethostname()


def _prefixed(prefix: str, d: dict) -> dict:
    return {f"{prefix}/{k}": v for k, v in d.items()}


def train_loop(hp: dict, run: dict, session: Session) -> None:
    """Train one configuration: the method's recipe (:mod:`grounding.recipes`; one stage for most
    methods), its prerequisite stages first (shared ones as the sweep built them), then its output
    stages together, reporting after each epoch."""
    t_entry = time.time()
    torch.set_num_threads(run["threads"])
    use_cuda = run["gpus_per_worker"] > 0 and torch.cuda.is_available()
    device = torch.device(f"cuda:{torch.cuda.current_device()}" if use_cuda else "cpu")
    amp = use_cuda and run.get("amp", True)
    data = load_data(run, session.rank, session.world)
    recipe, resolved = recipes.plan(run["method"], hp, run["fixed"], run["epochs"],
                                    run.get("metric") or data.task.default_metric)

    def ddp(m):
        return torch.nn.parallel.DistributedDataParallel(
            m, device_ids=[device.index] if use_cuda else None, broadcast_buffers=False,
            # a model whose steps leave parameters unused (vcma's E/M phases) says so
            find_unused_parameters=bool(getattr(m, "ddp_find_unused_parameters", False)))

    wrap = ddp if session.world > 1 else None
    from .stages import prerequisites

    init, used = prerequisites(recipe, resolved, run, data, device, wrap, amp)
    group = recipes.build_group(recipe, resolved, data, run["seed"], device, init, wrap, run["eval_batch_size"])
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
        metrics = {"epoch": epoch + 1, **group.step(data, amp)}
        if epoch == start:
            metrics["time/setup_s"] = t_ready - t_entry  # entry -> first training step
            metrics["time/first_step_unix"] = t_ready
            metrics["time/resumed_from_epoch"] = start
            metrics["cluster/world_size"] = session.world
            metrics["cluster/nodes"] = nodes  # distinct Ray nodes the ranks run on
            metrics.update({f"tag/stage.{n}.{k}": v for n, u in used.items() for k, v in u.items()})
        with tempfile.TemporaryDirectory() as d:
            if session.rank == 0:
                _save(group, hp, run, data, d)
            session.report(metrics, d if session.rank == 0 else None)


def _worker_loop(config: dict) -> None:
    train_loop(config["hp"], config["run"], TrainSession())


def _fit_torch_trainer(hp: dict, run: dict) -> None:
    import ray.train
    from ray import tune
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    gpu = run["gpus_per_worker"] > 0
    resources = {"CPU": run["cpus_per_worker"], **({"GPU": run["gpus_per_worker"]} if gpu else {})}
    trial_id = tune.get_context().get_trial_id()
    trainer = TorchTrainer(
        _worker_loop,
        train_loop_config={"hp": hp, "run": run},
        scaling_config=ray.train.ScalingConfig(num_workers=run["workers"], use_gpu=gpu,
                                               resources_per_worker=resources,
                                               placement_strategy=run.get("placement", "PACK")),
        torch_config=TorchConfig(backend="nccl" if gpu else "gloo"),
        run_config=ray.train.RunConfig(
            # a fixed name per trial: a restarted trial resumes this run's latest checkpoint
            name=f"{run['sweep']}-train-{trial_id}",
            storage_path=run["storage_path"],
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=run["checkpoints_keep"], checkpoint_score_order="max",
                checkpoint_score_attribute=f"val/{run.get('metric') or 'box_micro'}"),
            failure_config=ray.train.FailureConfig(max_failures=run["failures"]),
            callbacks=[TuneReportCallback()],
        ),
    )
    trainer.fit()


def trial_fn(config: dict[str, Any], run: dict) -> None:
    """Tune function trainable: ``config`` holds the trial's sampled hyperparameters."""
    if run["use_trainer"]:
        _fit_torch_trainer(dict(config), run)
    else:
        train_loop(dict(config), run, TuneSession())
