"""Resolution: a method plus a trial's hyperparameters, turned into resolved stages.

The method's declared recipe (:mod:`grounding.models.recipe`; :func:`for_method`) and, per stage,
its model parameters, optimiser, epochs, selection metric and seed offset (:class:`ResolvedStage`,
:func:`resolve`, :func:`plan`); :func:`stage_key` identifies a stage's result, :func:`is_shared`
tells the stages no searched hyperparameter reaches (trained once per sweep). How the stages are
trained is :mod:`grounding.training`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

from .engine import OPTIM_KEYS, OptimConfig
from .models import registry
from .models.recipe import Recipe, trivial


def for_method(method: str, params: dict[str, Any]) -> Recipe:
    """The recipe ``method`` declares for these model hyperparameters (trivial if none)."""
    declare = getattr(registry.get(method), "recipe", None)
    recipe = declare(dict(params)) if declare is not None else None
    return recipe if recipe is not None else trivial(method)


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
    converge: tuple[int, float] = (0, 0.005)  # (patience, min_delta) of grounding.training.Plateau; 0: all epochs

    def identity(self) -> dict[str, Any]:
        """What determines this stage's result besides data, seed and its init (for keys)."""
        cfg = registry.make_config(self.method, self.params)
        out = {"stage": self.name, "method": self.method, "model": _jsonable(dataclasses.asdict(cfg)),
               "optim": _jsonable(dataclasses.asdict(self.optim)), "epochs": self.epochs,
               "select": list(self.select), "init": self.init}
        if self.seed_offset:  # absent at 0, so existing stage keys are unchanged
            out["seed_offset"] = self.seed_offset
        if self.converge[0]:  # likewise absent without a convergence rule
            out["converge"] = list(self.converge)
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
            metric: str, only: set[str] | None = None,
            converge: tuple[int, float] = (0, 0.005)) -> dict[str, ResolvedStage]:
    """Each stage's model params, optimiser and epochs from the trial's sampled ``hp``, the
    sweep's ``fixed`` values and the stage's own overrides (which win); ``only``: these stages
    (e.g. the shared ones, which the driver resolves before any value is sampled). ``converge``:
    every stage's convergence rule (its epochs become a maximum)."""
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
                                    s.init, tuple(s.select) or (metric,), s.seed_offset,
                                    (int(converge[0]), float(converge[1])))
    return out


def plan(method: str, hp: dict[str, Any], fixed: dict[str, Any], epochs: int,
         metric: str, searched: set[str] | None = None,
         converge: tuple[int, float] = (0, 0.005)) -> tuple[Recipe, dict[str, ResolvedStage]]:
    """The recipe of a trial and its resolved stages. With ``searched`` (the sweep's searched
    names, before any value is sampled): only the shared prerequisites are resolved."""
    merged = {**fixed, **hp}
    fields = registry.config_fields(method)
    defaults = dataclasses.asdict(registry.get(method).Config())
    recipe = for_method(method, {**defaults, **{k: v for k, v in merged.items() if k in fields}})
    only = None
    if searched is not None:
        only = {n for n in recipe.prerequisites() if is_shared(recipe, n, searched)}
    return recipe, resolve(recipe, method, hp, fixed, epochs, metric, only, converge)
