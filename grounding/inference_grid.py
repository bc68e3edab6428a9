"""Inference-only knobs: one trained model evaluated over a grid of decoding settings.

A model may declare configuration fields that only its ``predict`` reads (``vcma``'s mixture
weight ``beta``) with a method ``inference_grid() -> {field: (value, ...)}``; an empty dict (or no
method) declares none. Because training never reads them, the same trained weights can be scored
at every value without retraining: :func:`with_inference` sets the fields for the duration of a
``with`` block (validated by the model's config class, restored afterwards) and
:func:`evaluate_grid` scores a split at every point of the grid (the Cartesian product of the
declared values; the other knobs stay at their trained values).

Works on a bare model and on a :class:`~grounding.training.Predictor`: a knob is set on every
member model that declares it (the grid of the first such member is used).
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
from typing import Any, Iterator

from torch import nn

from . import engine


def members(predictor: nn.Module) -> list[nn.Module]:
    """The models whose ``predict`` a predictor runs (itself for a bare model)."""
    net = engine.unwrap(predictor)
    inner = getattr(net, "members", None)
    return list(inner.values()) if isinstance(inner, nn.ModuleDict) else [net]


def knobs(predictor: nn.Module) -> dict[str, tuple]:
    """Every inference-only knob a member declares, with its grid (declaration order)."""
    out: dict[str, tuple] = {}
    for m in members(predictor):
        declare = getattr(m, "inference_grid", None)
        for k, values in (declare() if declare is not None else {}).items():
            out.setdefault(k, tuple(values))
    return out


def current(predictor: nn.Module) -> dict[str, Any]:
    """The trained (configured) value of each declared knob."""
    out: dict[str, Any] = {}
    for m in members(predictor):
        declare = getattr(m, "inference_grid", None)
        for k in (declare() if declare is not None else {}):
            out.setdefault(k, getattr(m.cfg, k))
    return out


@contextlib.contextmanager
def with_inference(predictor: nn.Module, **values) -> Iterator[nn.Module]:
    """Decode with ``values`` for the declared knobs inside the block; restored on exit.

    The member's config object is changed in place (so every sub-module holding it sees the new
    value) after the config class validated the new values."""
    declared = knobs(predictor)
    unknown = set(values) - set(declared)
    if unknown:
        raise ValueError(f"{sorted(unknown)} are not inference-only knobs of this model; "
                         f"allowed: {', '.join(declared) or 'none'}")
    saved = []
    try:
        for m in members(predictor):
            declare = getattr(m, "inference_grid", None)
            mine = {k: v for k, v in values.items() if k in (declare() if declare is not None else {})}
            if not mine:
                continue
            dataclasses.replace(m.cfg, **mine)  # the config's own range checks
            saved.append((m.cfg, {k: getattr(m.cfg, k) for k in mine}))
            for k, v in mine.items():
                setattr(m.cfg, k, v)
        yield predictor
    finally:
        for cfg, old in reversed(saved):
            for k, v in old.items():
                setattr(cfg, k, v)


def evaluate_grid(predictor: nn.Module, data: Any, task, info, batch_size: int = 64,
                  grid: dict[str, tuple] | None = None, device="cpu") -> list[dict[str, Any]]:
    """One row per grid point: the knob values and every metric of ``task`` on ``data``.

    ``grid``: {knob: values}; default: what the model declares (:func:`knobs`). Empty: no rows."""
    grid = knobs(predictor) if grid is None else dict(grid)
    if not grid:
        return []
    names = list(grid)
    rows = []
    for point in itertools.product(*(grid[n] for n in names)):
        values = dict(zip(names, point))
        with with_inference(predictor, **values):
            metrics = engine.evaluate(predictor, data, task, info, batch_size, device)
        rows.append({**values, **metrics})
    return rows
