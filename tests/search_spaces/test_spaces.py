"""One name everywhere: every registered method has its search space, and the space is valid."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

import search_spaces
from grounding.data import benchmarks
from grounding.engine import OPTIM_KEYS
from grounding.models import registry

REPO = Path(__file__).resolve().parents[2]
DIMS = {"T": 5, "N": 20, "L": 64, "D": 32}


def test_file_names_match_registry_keys():
    model_files = {p.stem for p in (REPO / "grounding" / "models").glob("*.py")} - {"__init__", "base", "registry", "memory"}
    space_files = {p.stem for p in (REPO / "search_spaces").glob("*.py")} - {"__init__"}
    assert set(registry.names()) <= model_files
    assert space_files == set(registry.names())


@pytest.mark.parametrize("method", registry.names())
def test_space_parameters_are_hyperparameters(method):
    mod = search_spaces.load(method)
    fields = registry.config_fields(method)
    space = mod.space(DIMS)
    for name in [*space, *mod.PAPER, *getattr(mod, "FIXED", {})]:
        assert name in fields or name in OPTIM_KEYS, f"{method}: {name} is neither a config field nor an optimiser key"


@pytest.mark.parametrize("method", registry.names())
def test_paper_values_lie_inside_the_space_and_build(method):
    mod = search_spaces.load(method)
    space = mod.space(DIMS)
    for name, value in mod.PAPER.items():
        if name in space:
            assert space[name].contains(value), f"{method}: paper {name}={value} outside {space[name]}"
    model_params = {k: v for k, v in {**mod.PAPER, **getattr(mod, "FIXED", {})}.items() if k in registry.config_fields(method)}
    registry.make_config(method, model_params)  # the published point is a valid configuration


@pytest.mark.parametrize("method", registry.names())
def test_search_spaces_import_neither_ray_nor_optuna(method):
    path = REPO / "search_spaces" / f"{method}.py"
    tree = ast.parse(path.read_text())
    names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {(n.module or "").split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not names & {"ray", "optuna", "mlflow"}


def test_every_task_has_a_default_benchmark():
    for method in registry.names():
        assert registry.task_of(method) in benchmarks.DEFAULT_FOR_TASK


def test_config_fields_are_plain_types():
    for method in registry.names():
        for f in dataclasses.fields(registry.get(method).Config):
            assert f.type in (int, float, bool, str, "int", "float", "bool", "str"), (method, f.name, f.type)


@pytest.mark.parametrize("method", registry.names())
def test_variants_and_points_are_valid_configurations(method):
    """Every declared ablation and named point builds on top of the published point."""
    mod = search_spaces.load(method)
    fields = registry.config_fields(method)
    named = {**{f"variant {k}": v for k, v in search_spaces.variants(method).items()},
             **{f"point {k}": v for k, v in search_spaces.points(method).items()}}
    assert search_spaces.RESERVED_VARIANT not in search_spaces.variants(method)
    assert "paper" in search_spaces.points(method) and search_spaces.points(method)["defaults"] == {}
    for label, overrides in named.items():
        assert overrides is not None and all(k.isidentifier() for k in overrides), (method, label)
        for name in overrides:
            assert name in fields or name in OPTIM_KEYS, f"{method} {label}: {name} is not a hyperparameter"
        merged = {**mod.PAPER, **getattr(mod, "FIXED", {}), **overrides}
        registry.make_config(method, {k: v for k, v in merged.items() if k in fields})


def test_the_ablations_the_methods_have_are_declared():
    assert {"no_acl_spatial", "no_acl_temporal", "no_bda"} <= set(search_spaces.variants("causal"))
    assert set(search_spaces.variants("cpl")) <= set(search_spaces.variants("ccr"))


def test_scl_tau_reaches_where_the_transfer_acts_and_keeps_the_published_point():
    """bench/mechanism_probe.py: CMAKT's gradient into the stable encoder reaches 1/10 of L^f_MIL's
    at tau ~ 0.03; the published tau = 1 stays the first point and the config default."""
    mod = search_spaces.load("scl")
    tau = mod.space(DIMS)["tau"]
    assert tau.log and tau.low <= 0.03 and tau.contains(1.0) and mod.PAPER["tau"] == 1.0
    assert registry.get("scl").Config().tau == 1.0
    registry.make_config("scl", {"tau": tau.low})  # the lower end is a valid configuration
