"""Training recipes: a method's training as a small graph of stages.

A :class:`Recipe` is data. Each :class:`Stage` names a model variant (a registry key plus config
overrides, which is also where its loss terms are switched), its initialisation (scratch, or the
*selected* checkpoint of another stage), its optimiser and schedule (:class:`~grounding.engine.OptimConfig`
overrides), its epochs, its checkpoint-selection metric and its seed (the trial's, or with ``seed_offset`` an
independent one derived from it: :func:`stage_seed`). The recipe's ``output`` stages form the
predictor, combined by ``combine`` (e.g. :func:`sigmoid_ensemble`); every other stage is a
prerequisite, trained to completion before the output stages start.

A method declares its recipe with a classmethod ``recipe(params) -> Recipe | None`` on its model
class (``params``: the trial's merged model hyperparameters). A method without one, or returning
None, is the trivial one-stage recipe: one stage named after the method, trained from scratch,
which runs exactly as a method without recipes always did.

Execution (the engine runs stages, the models stay one file per method):

* :class:`Group` trains the output stages together, one epoch at a time: every stage trains one
  epoch, every stage is scored on val, each keeps its best-validation epoch (strictly better sum
  of its ``select`` metrics; the earliest epoch wins a tie), and the group reports the predictor it
  would deliver now (each output stage at its own selected epoch) as ``val/<metric>``, so a
  scheduler's decision is about that predictor. ``epoch_val/<metric>`` is the combination of this
  epoch's models (the learning curve), ``stage/<name>/...`` each stage's own train and val curves.
* Validation predictions of each stage's selected epoch are kept (this rank's rows only), so the
  delivered combination is scored without keeping extra models or running extra forward passes.
* :func:`train_stage` trains a prerequisite on its own and returns its selected state.
* :meth:`Group.package` is everything needed to rebuild the delivered predictor
  (:func:`load_predictor`), which is what the IID and OOD test splits are evaluated on, once.

Everything works under ``torch.distributed`` as the engine does: every rank trains its share, and
metric counts are summed over ranks before they are computed.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import time
from typing import Any, Callable, Mapping

import numpy as np
import torch
from torch import nn

from . import engine
from .engine import OPTIM_KEYS, OptimConfig
from .models import registry

PACKAGE_FORMAT = 1


@dataclasses.dataclass(frozen=True)
class Stage:
    name: str
    method: str  # registry key of the model class
    model: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # config overrides (variant, loss terms)
    optim: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # OptimConfig overrides
    init: str | None = None  # None: from scratch; a stage name: from that stage's selected checkpoint
    epochs: int | None = None  # None: the trial's epochs
    select: tuple[str, ...] = ()  # val metrics summed to select the checkpoint; (): the sweep's metric
    takes: tuple[str, ...] | None = None  # trial hyperparameters that reach this stage; None: all
    seed_offset: int = 0  # 0: the trial's seed; otherwise an independent seed derived from it (stage_seed)


@dataclasses.dataclass(frozen=True)
class Recipe:
    stages: tuple[Stage, ...]
    output: tuple[str, ...] = ()  # the stages the predictor combines; (): the last stage
    combine: Callable[[dict[str, Any]], Any] | None = None  # predictions by stage -> prediction

    def __post_init__(self):
        names = [s.name for s in self.stages]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"a recipe needs uniquely named stages; got {names}")
        for i, s in enumerate(self.stages):
            if s.init is not None and s.init not in names[:i]:
                raise ValueError(f"stage {s.name!r} starts from {s.init!r}, which is not an earlier stage; "
                                 f"allowed: {', '.join(names[:i]) or 'none'}")
            if "/" in s.name:
                raise ValueError(f"stage name {s.name!r} may not contain '/'")
        unknown = set(self.outputs) - set(names)
        if unknown:
            raise ValueError(f"recipe output {sorted(unknown)} names no stage; allowed: {', '.join(names)}")
        for name in self.outputs:
            if self.stage(name).init in self.outputs:
                raise ValueError(f"output stage {name!r} cannot start from another output stage")
        if len(self.outputs) > 1 and self.combine is None:
            raise ValueError("a recipe with several output stages needs a combine function")

    @property
    def outputs(self) -> tuple[str, ...]:
        return self.output or (self.stages[-1].name,)

    @property
    def trivial(self) -> bool:
        return len(self.stages) == 1 and self.combine is None

    def stage(self, name: str) -> Stage:
        for s in self.stages:
            if s.name == name:
                return s
        raise KeyError(f"no stage {name!r}; allowed: {', '.join(s.name for s in self.stages)}")

    def prerequisites(self) -> list[str]:
        """The non-output stages the outputs need, in an order where each follows its init."""
        needed: set[str] = set()
        for name in self.outputs:
            init = self.stage(name).init
            while init is not None and init not in needed:
                needed.add(init)
                init = self.stage(init).init
        return [s.name for s in self.stages if s.name in needed]

    def chain(self, name: str) -> list[str]:
        """``name`` and every stage its initialisation comes from, nearest first."""
        out = [name]
        while (init := self.stage(out[-1]).init) is not None:
            out.append(init)
        return out


def stage_seed(seed: int, offset: int = 0) -> int:
    """The seed a stage trains with (initialisation, data order, dropout): the trial's ``seed`` for
    ``offset=0``, otherwise a 31-bit seed drawn from ``SeedSequence([seed, offset])``, so stages with
    different offsets, and the same offset under different trial seeds, get unrelated streams."""
    if offset == 0:
        return int(seed)
    return int(np.random.SeedSequence([int(seed), int(offset)]).generate_state(1)[0] >> 1)


def trivial(method: str) -> Recipe:
    return Recipe(stages=(Stage(method, method),))


def for_method(method: str, params: dict[str, Any]) -> Recipe:
    """The recipe ``method`` declares for these model hyperparameters (trivial if none)."""
    declare = getattr(registry.get(method), "recipe", None)
    recipe = declare(dict(params)) if declare is not None else None
    return recipe if recipe is not None else trivial(method)


class sigmoid_ensemble:  # noqa: N801 (a picklable function object)
    """``sum_i w_i * sigmoid(pred_i)`` over the stages named in ``weights``."""

    def __init__(self, weights: Mapping[str, float]):
        self.weights = dict(weights)

    def __call__(self, preds: dict[str, torch.Tensor]) -> torch.Tensor:
        return sum(float(w) * torch.sigmoid(preds[name].float()) for name, w in self.weights.items())

    def __repr__(self) -> str:
        return f"sigmoid_ensemble({self.weights})"

    def spec(self) -> dict:
        return {"kind": "sigmoid_ensemble", "weights": dict(self.weights)}


def combine_from_spec(spec: dict):
    if spec.get("kind") == "sigmoid_ensemble":
        return sigmoid_ensemble(spec["weights"])
    raise ValueError(f"unknown combine {spec.get('kind')!r}; allowed: sigmoid_ensemble")


# ---------------------------------------------------------------------------------- resolution
@dataclasses.dataclass
class ResolvedStage:
    name: str
    method: str
    params: dict[str, Any]  # model hyperparameters handed to the registry
    optim: OptimConfig
    epochs: int
    init: str | None
    select: tuple[str, ...]
    seed_offset: int = 0

    def identity(self) -> dict[str, Any]:
        """What determines this stage's result besides data, seed and its init (for keys)."""
        cfg = registry.make_config(self.method, self.params)
        out = {"stage": self.name, "method": self.method, "model": _jsonable(dataclasses.asdict(cfg)),
               "optim": _jsonable(dataclasses.asdict(self.optim)), "epochs": self.epochs,
               "select": list(self.select), "init": self.init}
        if self.seed_offset:  # absent at 0, so existing stage keys are unchanged
            out["seed_offset"] = self.seed_offset
        return out


def _jsonable(d: dict) -> dict:
    return json.loads(json.dumps(d, sort_keys=True, default=str))


def stage_key(recipe: Recipe, stages: dict[str, ResolvedStage], name: str, data_digest: str, seed: int) -> str:
    """sha256 of the data digest, the seed and the resolved configuration of ``name`` and of every
    stage it starts from: equal keys mean interchangeable results."""
    ident = {"data": data_digest, "seed": seed, "chain": [stages[n].identity() for n in recipe.chain(name)]}
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()


def is_shared(recipe: Recipe, name: str, searched: set[str]) -> bool:
    """A stage whose configuration (and whose init chain's) takes no searched hyperparameter."""
    return all(recipe.stage(n).takes is not None and not set(recipe.stage(n).takes) & searched
               for n in recipe.chain(name))


def resolve(recipe: Recipe, method: str, hp: dict[str, Any], fixed: dict[str, Any], epochs: int,
            metric: str, only: set[str] | None = None) -> dict[str, ResolvedStage]:
    """Each stage's model params, optimiser and epochs from the trial's sampled ``hp``, the
    sweep's ``fixed`` values and the stage's own overrides (which win); ``only``: these stages
    (e.g. the shared ones, which the driver resolves before any value is sampled)."""
    merged = {**fixed, **hp}
    allowed = set(registry.config_fields(method)) | set(OPTIM_KEYS)
    for s in recipe.stages:
        allowed |= set(registry.config_fields(s.method))
    unknown = set(merged) - allowed
    if unknown:
        raise KeyError(f"hyperparameters {sorted(unknown)} belong to neither {method} nor the optimiser")
    out = {}
    for s in recipe.stages:
        if only is not None and s.name not in only:
            continue
        base = {**fixed, **{k: v for k, v in hp.items() if s.takes is None or k in s.takes}}
        fields = registry.config_fields(s.method)
        params = {k: v for k, v in base.items() if k in fields}
        params.update(s.model)
        optim = {k: v for k, v in base.items() if k in OPTIM_KEYS}
        optim.update(s.optim)
        out[s.name] = ResolvedStage(s.name, s.method, params, OptimConfig(**optim), s.epochs or epochs,
                                    s.init, tuple(s.select) or (metric,), s.seed_offset)
    return out


def plan(method: str, hp: dict[str, Any], fixed: dict[str, Any], epochs: int,
         metric: str, searched: set[str] | None = None) -> tuple[Recipe, dict[str, ResolvedStage]]:
    """The recipe of a trial and its resolved stages. With ``searched`` (the sweep's searched
    names, before any value is sampled): only the shared prerequisites are resolved."""
    merged = {**fixed, **hp}
    fields = registry.config_fields(method)
    defaults = dataclasses.asdict(registry.get(method).Config())
    recipe = for_method(method, {**defaults, **{k: v for k, v in merged.items() if k in fields}})
    only = None
    if searched is not None:
        only = {n for n in recipe.prerequisites() if is_shared(recipe, n, searched)}
    return recipe, resolve(recipe, method, hp, fixed, epochs, metric, only)


# --------------------------------------------------------------------------------- evaluation
def _reduced(acc) -> dict[str, float]:
    local = np.array(acc.state(), dtype=np.float64)
    total = engine._all_reduce(torch.from_numpy(local.copy())).numpy()
    acc.merge(total - local)  # local counts + every other rank's
    return acc.compute()


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

    def train_epoch(self, data, amp: bool = False) -> dict[str, float]:
        logs = engine.train_one_epoch(self.net, self.optimizer, data["train"], self.rs.optim, self.epoch,
                                      self.seed, self.device, amp=amp, scheduler=self.scheduler)
        self.epoch += 1
        return logs

    def score(self, metrics: dict[str, float]) -> float:
        absent = [m for m in self.rs.select if m not in metrics]
        if absent:  # a metric the split has no ground truth for is absent, never 0 (grounding.metrics)
            raise ValueError(f"stage {self.rs.name!r} selects its checkpoint on val/{absent[0]}, but the val split "
                             f"has no ground truth for it (scored: {', '.join(metrics) or 'nothing'})")
        return float(sum(metrics[m] for m in self.rs.select))

    def consider(self, metrics: dict[str, float], preds: list) -> bool:
        """Keep this epoch if it is strictly better on the stage's selection metric."""
        s = self.score(metrics)
        if s > self.best.score:
            self.best = Selection(self.epoch, s, dict(metrics), _state_copy(self.model), preds)
            return True
        return False

    # checkpoints -------------------------------------------------------------------------
    def state_dict(self) -> dict:
        b = self.best
        out = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(), "epoch": self.epoch,
               "best": {"epoch": b.epoch, "score": b.score, "metrics": b.metrics, "state": b.state}}
        if self.scheduler is not None:
            out["scheduler"] = self.scheduler.state_dict()
        return out

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and "scheduler" in state:
            self.scheduler.load_state_dict(state["scheduler"])
        self.epoch = int(state["epoch"])
        b = state["best"]
        self.best = Selection(int(b["epoch"]), float(b["score"]), dict(b["metrics"]), b["state"], None)


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
                else:
                    now[n] = _to(r.best.preds[i], device)
            if not self.single:
                current.update_batch(self._combine(now), batch)
        out: dict[str, float] = {}
        changed = False
        for n, r in trained.items():
            m = _reduced(accs[n])
            changed |= r.consider(m, preds[n])
            if not self.single:
                out.update({f"stage/{n}/val/{k}": v for k, v in m.items()})
                out[f"stage/{n}/selected_epoch"] = r.best.epoch
            else:
                out.update({f"epoch_val/{k}": v for k, v in m.items()})
        if not self.single:
            out.update({f"epoch_val/{k}": v for k, v in _reduced(current).items()})
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
                self.selected_metrics = _reduced(acc)
        out.update({f"val/{k}": v for k, v in self.selected_metrics.items()})
        out["selected_epoch"] = self.selected_epoch
        return out

    def step(self, data, amp: bool = False) -> dict[str, float]:
        """Train every stage that has epochs left for one epoch, then validate and select."""
        out: dict[str, float] = {}
        total = 0.0
        t0 = time.time()
        for n, r in self.runs.items():
            if r.epoch >= r.rs.epochs:
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
    for _ in range(rs.epochs):
        m = group.step(data, amp)
        history.append({"epoch": group.epoch, **m})
        if on_epoch is not None:
            on_epoch(group.epoch, m)
    best = group.runs[rs.name].best
    return {"epoch": best.epoch, "metrics": dict(best.metrics), "model": best.state, "history": history,
            "method": rs.method, "params": dict(rs.params)}


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


def load_predictor(package: dict, info, device="cpu") -> Predictor:
    """Rebuild the predictor a trial delivered from :meth:`Group.package`."""
    if package.get("format") != PACKAGE_FORMAT:
        raise ValueError(f"unknown predictor package format {package.get('format')!r}; allowed: {PACKAGE_FORMAT}")
    models = {}
    for name, st in package["stages"].items():
        m = registry.build(st["method"], st["params"], info)
        m.load_state_dict(st["model"])
        models[name] = m.to(device)
    combine = None
    if package.get("combine"):
        combine = combine_from_spec(package["combine"])
    elif len(models) > 1:  # a combine function without a spec: the method's recipe rebuilds it
        fields = registry.config_fields(package["method"])
        defaults = dataclasses.asdict(registry.get(package["method"]).Config())
        recipe = for_method(package["method"], {**defaults, **{k: v for k, v in package["params"].items() if k in fields}})
        combine = recipe.combine
    return Predictor(models, combine)
