"""One registry of methods. A method's key is also its module name in ``grounding.models``, its
search space file ``search_spaces/<key>.py`` and its CLI name (``method=<key>``)."""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any

from .base import DataInfo, GroundingModel, ModelConfig

# Registry key -> module. Every method lives in grounding/models/<key>.py.
METHODS = ("stvg", "causal", "cpl", "ccr", "tubemil")

_REGISTRY: dict[str, type[GroundingModel]] = {}


def register(name: str):
    def deco(cls: type[GroundingModel]) -> type[GroundingModel]:
        if cls.__module__.rsplit(".", 1)[-1] != name:
            raise RuntimeError(f"method {name!r} must live in grounding/models/{name}.py")
        _REGISTRY[name] = cls
        cls.method = name
        return cls

    return deco


def names() -> tuple[str, ...]:
    return METHODS


def get(name: str) -> type[GroundingModel]:
    if name not in METHODS:
        raise KeyError(f"unknown method {name!r}; allowed: {', '.join(METHODS)}")
    if name not in _REGISTRY:
        importlib.import_module(f"{__package__}.{name}")
    return _REGISTRY[name]


def task_of(name: str) -> str:
    return get(name).task


def config_fields(name: str) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(get(name).Config)}


def make_config(name: str, params: dict[str, Any]) -> ModelConfig:
    """The method's config from a flat dict; unknown keys are an error naming the allowed ones."""
    fields = config_fields(name)
    unknown = sorted(set(params) - set(fields))
    if unknown:
        raise KeyError(
            f"{name} has no hyperparameter {', '.join(unknown)}; allowed: {', '.join(fields)}"
        )
    return get(name).Config(**params)


def build(name: str, params: dict[str, Any], info: DataInfo) -> GroundingModel:
    return get(name)(make_config(name, params), info)
