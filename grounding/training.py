"""How a recipe runs: its stages trained, selected, packaged and rebuilt as a predictor.

The engine runs stages, the models stay one file per method (what a method declares:
:mod:`grounding.models.recipe`; its resolved stages: :mod:`grounding.recipes`).

* :class:`Group` trains the output stages together, one epoch at a time: every stage trains one
  epoch, every stage is scored on val, each keeps its best-validation epoch (strictly better sum
  of its ``select`` metrics; the earliest epoch wins a tie), and the group reports the predictor it
  would deliver now (each output stage at its own selected epoch) as ``val/<metric>``, so a
  scheduler's decision is about that predictor. ``epoch_val/<metric>`` is the combination of this
  epoch's models (the learning curve), ``stage/<name>/...`` each stage's own train and val curves.
* A model's :meth:`~grounding.models.base.GroundingModel.validation_variants` (diagnostics, e.g.
  ``winner`` with its fusion off at test time) are scored on val every epoch beside the real pass
  and reported as ``epoch_val/<variant>/<metric>`` (``stage/<name>/val/<variant>/<metric>`` in a
  group of several stages); they never select a checkpoint.
* Validation predictions of each stage's selected epoch are kept (this rank's rows only), so the
  delivered combination is scored without keeping extra models or running extra forward passes.
* :func:`train_stage` trains a prerequisite on its own and returns its selected state.
* :meth:`Group.package` is everything needed to rebuild the delivered predictor
  (:func:`load_predictor`), which is what the IID and OOD test splits are evaluated on, once.

Everything works under ``torch.distributed`` as the engine does: every rank trains its share, and
metric counts are summed over ranks before they are computed (:func:`grounding.engine.merge_ranks`).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import time
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from . import engine
from .models import registry
from .models.recipe import Recipe, Stage, combine_from_spec, stage_seed
from .recipes import ResolvedStage, for_method

PACKAGE_FORMAT = 1


def _batches(data, batch_size: int):
    return [np.arange(i, min(i + batch_size, len(data))) for i in range(0, len(data), batch_size)]


def _cpu(x):
    if isinstance(x, torch.Tensor):
        return x.detach().to("cpu")
    if isinstance(x, dict):
        return {k: _cpu(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_cpu(v) for v in x)
    return x


def load_matching(model: nn.Module, state: dict[str, torch.Tensor]) -> list[str]:
    """Load every entry of ``state`` that ``model`` has; a shared name with another shape is an
    error (another architecture). Returns the names loaded."""
    own = model.state_dict()
    bad = [f"{k} {tuple(v.shape)} != {tuple(own[k].shape)}" for k, v in state.items()
           if k in own and tuple(v.shape) != tuple(own[k].shape)]
    if bad:
        raise ValueError(f"initial checkpoint does not fit the model: {bad[0]}")
    loaded = [k for k in state if k in own]
    if not loaded:
        raise ValueError("initial checkpoint shares no parameter with the model")
    model.load_state_dict({k: state[k] for k in loaded}, strict=False)
    return loaded


def _state_copy(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


@dataclasses.dataclass
class Selection:
    epoch: int = 0
    score: float = -math.inf
    metrics: dict[str, float] = dataclasses.field(default_factory=dict)
    state: dict[str, torch.Tensor] | None = None
    preds: list | None = None  # this rank's val predictions at the selected epoch


class StageRun:
    """One stage in training: its model, optimiser, schedule and selected epoch."""

    def __init__(self, rs: ResolvedStage, data, seed: int, device, init_state: dict | None = None,
                 wrap: Callable[[nn.Module], nn.Module] | None = None):
        self.rs, self.seed, self.device = rs, stage_seed(seed, rs.seed_offset), torch.device(device)
        engine.seed_everything(self.seed)
        self.model = registry.build(rs.method, rs.params, data.info).to(self.device)
        self.init_loaded = load_matching(self.model, init_state) if init_state is not None else []
        self.optimizer = engine.make_optimizer(self.model, rs.optim)
        # the stage's learning-rate schedule over its own epochs (engine.OptimConfig.schedule)
        steps = engine.steps_per_epoch(data["train"], rs.optim)
        self.scheduler = engine.make_scheduler(self.optimizer, rs.optim, steps, rs.epochs) if steps > 0 else None
        self.net = wrap(self.model) if wrap is not None else self.model
        self.epoch = 0  # epochs trained
        self.best = Selection()
        # the stage's own convergence rule on its own selection score (rs.converge; patience 0: never)
        self.plateau = Plateau(*rs.converge)
        self.flat = False
        # the stage's own torch random stream (dropout, sampled negatives, ...), continued from its
        # seeded build: a stage trains the same whether or not other stages train beside it
        self.rng = _rng_state(self.device)

    @contextlib.contextmanager
    def own_stream(self):
        """Run the block on this stage's random stream; the caller's stream is restored after."""
        outer = _rng_state(self.device)
        _set_rng_state(self.device, self.rng)
        try:
            yield
        finally:
            self.rng = _rng_state(self.device)
            _set_rng_state(self.device, outer)

    def train_epoch(self, data, amp: bool = False) -> dict[str, float]:
        with self.own_stream():
            logs = engine.train_one_epoch(self.net, self.optimizer, data["train"], self.rs.optim, self.epoch,
                                          self.seed, self.device, amp=amp, scheduler=self.scheduler)
        self.epoch += 1
        return logs

    @property
    def done(self) -> bool:
        """No more epochs for this stage: its validation curve is flat or its epochs are spent."""
        return self.flat or self.epoch >= self.rs.epochs

    def score(self, metrics: dict[str, float]) -> float:
        absent = [m for m in self.rs.select if m not in metrics]
        if absent:  # a metric the split has no ground truth for is absent, never 0 (grounding.metrics)
            raise ValueError(f"stage {self.rs.name!r} selects its checkpoint on val/{absent[0]}, but the val split "
                             f"has no ground truth for it (scored: {', '.join(metrics) or 'nothing'})")
        return float(sum(metrics[m] for m in self.rs.select))

    def consider(self, metrics: dict[str, float], preds: list) -> bool:
        """Keep this epoch if it is strictly better on the stage's selection metric."""
        s = self.score(metrics)
        self.flat = self.plateau.update(s)
        if s > self.best.score:
            self.best = Selection(self.epoch, s, dict(metrics), _state_copy(self.model), preds)
            return True
        return False

    # checkpoints -------------------------------------------------------------------------
    def state_dict(self) -> dict:
        b = self.best
        out = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(), "epoch": self.epoch,
               "best": {"epoch": b.epoch, "score": b.score, "metrics": b.metrics, "state": b.state}, "rng": self.rng,
               "plateau": {"ref": self.plateau.ref, "stale": self.plateau.stale, "flat": self.flat}}
        if self.scheduler is not None:
            out["scheduler"] = self.scheduler.state_dict()
        return out

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and "scheduler" in state:
            self.scheduler.load_state_dict(state["scheduler"])
        self.epoch = int(state["epoch"])
        if "plateau" in state:  # checkpoints written before the stage kept its own rule have none
            p = state["plateau"]
            self.plateau.ref, self.plateau.stale, self.flat = float(p["ref"]), int(p["stale"]), bool(p["flat"])
        if "rng" in state:  # checkpoints written before the stage kept its own stream have none
            self.rng = {k: v for k, v in state["rng"].items() if k == "cpu" or self.device.type == "cuda"}
        b = state["best"]
        self.best = Selection(int(b["epoch"]), float(b["score"]), dict(b["metrics"]), b["state"], None)


def _rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    out = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        out["cuda"] = torch.cuda.get_rng_state(device)
    return out


def _set_rng_state(device: torch.device, state: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


class Group:
    """The recipe's output stages, trained together one epoch at a time (module docstring)."""

    def __init__(self, recipe: Recipe, runs: dict[str, StageRun], task, info, eval_batch_size: int = 128):
        self.recipe, self.runs, self.task, self.info = recipe, runs, task, info
        self.eval_batch_size = eval_batch_size
        self.epochs = max(r.rs.epochs for r in runs.values())
        self.epoch = 0
        self.selected_epoch = 0  # the last epoch at which the delivered predictor changed
        self.selected_metrics: dict[str, float] = {}

    @property
    def single(self) -> bool:
        return len(self.runs) == 1 and self.recipe.combine is None

    def _combine(self, preds: dict[str, Any]):
        if self.single:
            return next(iter(preds.values()))
        return self.recipe.combine(preds)

    @torch.no_grad()
    def _refresh_selected_preds(self, data) -> None:
        """After a restore: recompute the selected epochs' val predictions from their states."""
        val = data["val"]
        for name, r in self.runs.items():
            if r.best.state is None or r.best.preds is not None:
                continue
            model = copy.deepcopy(r.model)
            model.load_state_dict(r.best.state)
            model.eval()
            r.best.preds = [_cpu(model.predict(val.batch(idx, r.device))) for idx in _batches(val, self.eval_batch_size)]

    @torch.no_grad()
    def validate(self, data) -> dict[str, float]:
        val = data["val"]
        self._refresh_selected_preds(data)
        trained = {n: r for n, r in self.runs.items() if r.epoch == self.epoch}  # trained this epoch
        for r in trained.values():
            r.model.eval()
        idxs = _batches(val, self.eval_batch_size)
        accs = {n: self.task.accumulator(self.info) for n in trained}
        variants = {n: _variants(r.model) for n, r in trained.items()}  # diagnostics, never selected on
        vaccs = {n: {v: self.task.accumulator(self.info) for v in vs} for n, vs in variants.items()}
        preds: dict[str, list] = {n: [] for n in trained}
        current = self.task.accumulator(self.info)
        for i, idx in enumerate(idxs):
            device = next(iter(self.runs.values())).device
            batch = val.batch(idx, device)
            now = {}
            for n, r in self.runs.items():
                if n in trained:
                    p = r.model.predict(batch)
                    accs[n].update_batch(p, batch)
                    preds[n].append(_cpu(p))
                    now[n] = p
                    for v, overrides in variants[n].items():
                        with r.model.variant(overrides):
                            vaccs[n][v].update_batch(r.model.predict(batch), batch)
                else:
                    now[n] = _to(r.best.preds[i], device)
            if not self.single:
                current.update_batch(self._combine(now), batch)
        out: dict[str, float] = {}
        changed = False
        for n, r in trained.items():
            m = engine.merge_ranks(accs[n]).compute()
            changed |= r.consider(m, preds[n])
            if not self.single:
                out.update({f"stage/{n}/val/{k}": v for k, v in m.items()})
                out[f"stage/{n}/selected_epoch"] = r.best.epoch
                out[f"stage/{n}/converge/flat"] = float(r.flat)
            else:
                out.update({f"epoch_val/{k}": v for k, v in m.items()})
            for v, acc in vaccs[n].items():
                prefix = f"epoch_val/{v}/" if self.single else f"stage/{n}/val/{v}/"
                out.update({prefix + k: x for k, x in engine.merge_ranks(acc).compute().items()})
        if not self.single:
            out.update({f"epoch_val/{k}": v for k, v in engine.merge_ranks(current).compute().items()})
        if changed or not self.selected_metrics:
            self.selected_epoch = self.epoch
            if self.single:
                self.selected_metrics = dict(next(iter(self.runs.values())).best.metrics)
            else:
                acc = self.task.accumulator(self.info)
                for i, idx in enumerate(idxs):
                    batch = val.batch(idx, device)
                    acc.update_batch(self._combine({n: _to(r.best.preds[i], device) for n, r in self.runs.items()}),
                                     batch)
                self.selected_metrics = engine.merge_ranks(acc).compute()
        out.update({f"val/{k}": v for k, v in self.selected_metrics.items()})
        out["selected_epoch"] = self.selected_epoch
        out["converge/flat"] = float(self.flat)
        return out

    @property
    def flat(self) -> bool:
        """Every stage stopped on its own flat validation curve (its convergence rule)."""
        return all(r.flat for r in self.runs.values())

    @property
    def done(self) -> bool:
        """No stage has epochs left: each is flat or has spent its epochs."""
        return all(r.done for r in self.runs.values())

    def step(self, data, amp: bool = False) -> dict[str, float]:
        """Train every stage that has epochs left for one epoch, then validate and select."""
        out: dict[str, float] = {}
        total = 0.0
        t0 = time.time()
        for n, r in self.runs.items():
            if r.done:
                continue
            logs = r.train_epoch(data, amp)
            if self.single:
                out.update({f"train/{k}": v for k, v in logs.items()})
            else:
                out.update({f"stage/{n}/train/{k}": v for k, v in logs.items()})
                total += logs["loss"]
        self.epoch += 1
        if not self.single:
            out["train/loss"] = total
        t1 = time.time()
        out.update(self.validate(data))
        out["time/train_s"], out["time/eval_s"] = t1 - t0, time.time() - t1
        return out

    # checkpoints -------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "selected_epoch": self.selected_epoch,
                "selected_metrics": self.selected_metrics, "stages": {n: r.state_dict() for n, r in self.runs.items()}}

    def load_state_dict(self, state: dict) -> None:
        for n, r in self.runs.items():
            r.load_state_dict(state["stages"][n])
        self.epoch = int(state["epoch"])
        self.selected_epoch = int(state["selected_epoch"])
        self.selected_metrics = dict(state["selected_metrics"])

    def package(self, method: str, params: dict[str, Any], data_digest: str) -> dict:
        """The delivered predictor: each output stage's selected state (see :func:`load_predictor`)."""
        spec = getattr(self.recipe.combine, "spec", None)
        return {"format": PACKAGE_FORMAT, "method": method, "params": dict(params), "data_digest": data_digest,
                "combine": spec() if spec is not None else None,
                "selected_epoch": self.selected_epoch, "val": dict(self.selected_metrics),
                "stages": {n: {"method": r.rs.method, "params": dict(r.rs.params), "epoch": r.best.epoch,
                               "metrics": dict(r.best.metrics), "model": r.best.state}
                           for n, r in self.runs.items()}}


def _variants(model: nn.Module) -> dict[str, dict]:
    """The model's diagnostic validation variants (none for a model without the hook)."""
    hook = getattr(model, "validation_variants", None)
    return dict(hook()) if hook is not None else {}


def _to(x, device):
    if isinstance(x, torch.Tensor):
        return x.to(device)
    if isinstance(x, dict):
        return {k: _to(v, device) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_to(v, device) for v in x)
    return x


def build_group(recipe: Recipe, stages: dict[str, ResolvedStage], data, seed: int, device,
                init_states: dict[str, dict] | None = None, wrap=None, eval_batch_size: int = 128) -> Group:
    """The output stages, each built (and initialised from its init stage's selected state)."""
    init_states = init_states or {}
    runs = {}
    for name in recipe.outputs:
        rs = stages[name]
        runs[name] = StageRun(rs, data, seed, device, init_states.get(rs.init) if rs.init else None, wrap)
    return Group(recipe, runs, data.task, data.info, eval_batch_size)


def train_stage(rs: ResolvedStage, data, seed: int, device, init_state: dict | None = None, wrap=None,
                eval_batch_size: int = 128, amp: bool = False,
                on_epoch: Callable[[int, dict], None] | None = None) -> dict:
    """Train one stage to completion; returns its selected epoch, val metrics, state and history."""
    recipe = Recipe(stages=(Stage(rs.name, rs.method),))
    group = Group(recipe, {rs.name: StageRun(rs, data, seed, device, init_state, wrap)}, data.task, data.info,
                  eval_batch_size)
    history = []
    while not group.done:  # its epochs, or until its own convergence rule finds the curve flat
        m = group.step(data, amp)
        history.append({"epoch": group.epoch, **m})
        if on_epoch is not None:
            on_epoch(group.epoch, m)
    best = group.runs[rs.name].best
    return {"epoch": best.epoch, "metrics": dict(best.metrics), "model": best.state, "history": history,
            "method": rs.method, "params": dict(rs.params)}


@dataclasses.dataclass
class Plateau:
    """When a validation curve is flat: for ``patience`` consecutive epochs no score has exceeded
    the reference (the score of the last epoch that did) by more than ``min_delta``, so a slow steady
    climb is not flat (``patience`` 0: never flat, the run takes its whole epoch budget). The rule
    every converged result in this project states."""

    patience: int
    min_delta: float = 0.005
    ref: float = -math.inf
    stale: int = 0

    def update(self, score: float) -> bool:
        """Record one epoch's score; True once the curve is flat."""
        if score > self.ref + self.min_delta:
            self.ref, self.stale = score, 0
        else:
            self.stale += 1
        return self.patience > 0 and self.stale >= self.patience


def stage_params(stage: dict, options: dict[str, Any] | None) -> dict[str, Any]:
    """A delivered stage's model params with ``options`` (prediction-time values, its method's
    ``prediction_options``) put in; ValueError in one line for an option the method also trains with
    or a value its config refuses."""
    params = dict(stage["params"])
    if not options:
        return params
    allowed = registry.get(stage["method"]).prediction_options
    if bad := sorted(set(options) - set(allowed)):
        raise ValueError(f"model.{bad[0]}: not an option {stage['method']} reads at prediction time; allowed: "
                         f"{', '.join(f'model.{o}' for o in allowed) or 'none for this method'}")
    params.update(options)
    try:
        registry.make_config(stage["method"], params)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{', '.join(f'model.{k}={v}' for k, v in options.items())}: {str(e).splitlines()[0]}") from None
    return params


class Predictor(nn.Module):
    """The delivered model: one stage's ``predict``, or ``combine`` over several."""

    def __init__(self, models: dict[str, nn.Module], combine=None):
        super().__init__()
        self.members = nn.ModuleDict(models)
        self.combine = combine

    @torch.no_grad()
    def predict(self, batch):
        if self.combine is None and len(self.members) == 1:
            return next(iter(self.members.values())).predict(batch)
        return self.combine({n: m.predict(batch) for n, m in self.members.items()})


def load_predictor(package: dict, info, device="cpu", members: list[str] | None = None,
                   options: dict[str, Any] | None = None) -> Predictor:
    """Rebuild the predictor a trial delivered from :meth:`Group.package`. ``members``: only these
    stages of an ensemble, combined as the package combines them with the others left out (a
    leave-one-out without retraining; ``causal``'s staged components train independently of each
    other, so this equals the ensemble of those components trained alone, up to when the run
    stopped). ``options``: config values read only at prediction time (each stage's method's
    ``prediction_options``, e.g. ``scl``'s ``inference``) replaced on the trained weights. Raises
    ValueError naming what is allowed for an unknown stage, option or value."""
    if package.get("format") != PACKAGE_FORMAT:
        raise ValueError(f"unknown predictor package format {package.get('format')!r}; allowed: {PACKAGE_FORMAT}")
    stages = dict(package["stages"])
    if members is not None:
        unknown = [m for m in members if m not in stages]
        if unknown or not members:
            raise ValueError(f"members={','.join(members) or '(none)'}: not stages of this predictor; allowed: "
                             f"a non-empty subset of {', '.join(stages)}")
        stages = {n: stages[n] for n in stages if n in members}
    models = {}
    for name, st in stages.items():
        m = registry.build(st["method"], stage_params(st, options), info)
        m.load_state_dict(st["model"])
        models[name] = m.to(device)
    combine = None
    if package.get("combine"):
        spec = dict(package["combine"])
        if members is not None and "weights" in spec:
            spec["weights"] = {n: w for n, w in spec["weights"].items() if n in models}
        combine = combine_from_spec(spec)
    elif len(package["stages"]) > 1:  # a combine function without a spec: the method's recipe rebuilds it
        if members is not None:
            raise ValueError("members=: this predictor's combine has no spec, so a subset cannot be combined; "
                             "allowed: every stage (leave members= out)")
        fields = registry.config_fields(package["method"])
        defaults = dataclasses.asdict(registry.get(package["method"]).Config())
        recipe = for_method(package["method"], {**defaults, **{k: v for k, v in package["params"].items() if k in fields}})
        combine = recipe.combine
    return Predictor(models, combine)
