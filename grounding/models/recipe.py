"""What a method declares about its training: a :class:`Recipe`, a small graph of :class:`Stage`.

A :class:`Recipe` is data. Each :class:`Stage` names a model variant (a registry key plus config
overrides, which is also where its loss terms are switched), its initialisation (scratch, or the
*selected* checkpoint of another stage), its optimiser and schedule (:class:`~grounding.engine.OptimConfig`
overrides), its epochs, its checkpoint-selection metric and its seed (the trial's, or with ``seed_offset`` an
independent one derived from it: :func:`stage_seed`). The recipe's ``output`` stages form the
predictor, combined by ``combine`` (e.g. :func:`sigmoid_ensemble`); every other stage is a
prerequisite, trained to completion before the output stages start.

A method declares its recipe with a classmethod ``recipe(params) -> Recipe | None`` on its model
class (``params``: the trial's merged model hyperparameters). A method without one, or returning
None, is the trivial one-stage recipe (:func:`trivial`): one stage named after the method, trained
from scratch, which runs exactly as a method without recipes always did.

Layers: model files import this module only; the layers above the models (``recipes.py``, which
resolves a method's recipe and hyperparameters into stages, and ``training.py``, which runs them)
import it, never the reverse.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import numpy as np
import torch


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
