"""Hyperparameter search spaces, one module per method (``search_spaces/<method>.py``).

A module defines ``space(dims) -> dict[name, Param]`` (the data dims, e.g. ``{"T": 5, "N": 20}``,
let ranges depend on the data) and ``PAPER``, the published values, which the sweep evaluates
first. An optional ``POINTS = {name: {...}}`` holds further named points (e.g. the authors' code
values where they differ from the paper's), evaluated right after ``PAPER`` in their order. Parameters may be conditional: ``when={"acl_spatial": True}`` means the parameter only
exists where ``acl_spatial`` is True (pinned on the command line or drawn earlier in the space).

``python -m orchestration.compare`` (fixed configurations, no search) reads two of them:

* ``VARIANTS = {name: {hyperparameter: value}}`` — the method's ablations, each a set of
  overrides on top of the compared point (e.g. ``causal``'s ``"no_bda": {"bda": False}``).
  Names are snake_case; ``base`` is reserved (the point itself, no overrides). A new method
  declares its own ablation switches here, next to its space, never in a bench script.
* ``POINTS`` (above) — a comparison's ``point=<name>`` picks one of them instead of ``paper``
  (``PAPER``, the default) or ``defaults`` (the config defaults, nothing set), both always
  present; a compared method that declares no such point keeps ``paper``. ``FIXED`` applies under every point and variant unless pinned otherwise.

Every key of a variant or point must be a field of the method's config or an optimiser key
(``tests/search_spaces`` checks this for every registered method).

This package is declarative and imports neither Ray nor Optuna; orchestration translates it.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any


@dataclasses.dataclass(frozen=True)
class Param:
    when: dict[str, Any] = dataclasses.field(default_factory=dict, kw_only=True)

    def applies(self, values: dict[str, Any]) -> bool:
        return all(values.get(k) == v for k, v in self.when.items())

    def contains(self, value: Any) -> bool:
        raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class Float(Param):
    low: float
    high: float
    log: bool = False

    def contains(self, value) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and self.low <= value <= self.high


@dataclasses.dataclass(frozen=True)
class Int(Param):
    low: int
    high: int
    log: bool = False

    def contains(self, value) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and self.low <= value <= self.high


@dataclasses.dataclass(frozen=True)
class Choice(Param):
    values: tuple

    def contains(self, value) -> bool:
        return value in self.values


def load(method: str):
    """The search-space module of ``method`` (``search_spaces/<method>.py``)."""
    try:
        return importlib.import_module(f"{__name__}.{method}")
    except ModuleNotFoundError as e:
        if e.name == f"{__name__}.{method}":
            raise KeyError(f"no search space for method {method!r} (search_spaces/{method}.py)") from None
        raise


def resolve(method: str, dims: dict[str, int], pinned: dict[str, Any],
            defaults: dict[str, Any] | None = None) -> tuple[dict[str, Param], list[dict]]:
    """The searched parameters (pinned ones removed) and the points to evaluate first, restricted
    to them: ``PAPER``, then each of ``POINTS`` (duplicates and empty points dropped).

    Conditions are read from the pinned values, then ``defaults`` (the method's config
    defaults), then earlier parameters of the space. A point keeps only the parameters that are
    searched and apply.
    """
    mod = load(method)
    space = {k: p for k, p in mod.space(dims).items() if k not in pinned}
    points: list[dict[str, Any]] = []
    for candidate in (mod.PAPER, *getattr(mod, "POINTS", {}).values()):
        point: dict[str, Any] = {}
        values = {**(defaults or {}), **pinned}
        for name, param in space.items():
            if name in candidate and param.applies(values):
                point[name] = candidate[name]
                values[name] = candidate[name]
        if point and point not in points:
            points.append(point)
    return space, points


RESERVED_VARIANT = "base"


def variants(method: str) -> dict[str, dict[str, Any]]:
    """The method's declared ablations (``VARIANTS``), without the reserved ``base``."""
    return dict(getattr(load(method), "VARIANTS", {}))


def points(method: str) -> dict[str, dict[str, Any]]:
    """Named fixed configurations: ``paper`` (``PAPER``), ``defaults`` (nothing set) and ``POINTS``."""
    mod = load(method)
    return {"paper": dict(mod.PAPER), "defaults": {}, **{k: dict(v) for k, v in getattr(mod, "POINTS", {}).items()}}
