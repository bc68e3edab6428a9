"""Tuner pieces without a Ray cluster: the Optuna translation."""

from __future__ import annotations

import optuna

import search_spaces
from grounding.models import registry
from orchestration.search.tuner import DefineByRun, searcher_for
from search_spaces import Choice, Float, Int


def _suggest(space, known):
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    trial = study.ask()
    DefineByRun(space, known)(trial)
    return trial.params


def test_define_by_run_honours_conditions():
    space = {
        "acl_spatial": Choice((True, False)),
        "J": Int(10, 1000, log=True, when={"acl_spatial": True}),
        "lr": Float(1e-5, 1e-2, log=True),
    }
    seen = {True: 0, False: 0}
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    for _ in range(40):
        trial = study.ask()
        DefineByRun(space, {})(trial)
        p = trial.params
        assert ("J" in p) == p["acl_spatial"]
        assert 1e-5 <= p["lr"] <= 1e-2
        seen[p["acl_spatial"]] += 1
        study.tell(trial, 0.0)
    assert seen[True] and seen[False]
    # a switch pinned off removes its parameters
    assert "J" not in _suggest({k: v for k, v in space.items() if k != "acl_spatial"}, {"acl_spatial": False})


def _defaults(method):
    from grounding.engine import OPTIM_KEYS, OptimConfig

    cfg = registry.get(method).Config()
    return {**{f: getattr(cfg, f) for f in registry.config_fields(method)},
            **{k: getattr(OptimConfig(), k) for k in OPTIM_KEYS}}


def test_paper_values_are_suggested_first():
    space, points = search_spaces.resolve("causal", {"T": 5, "N": 20}, {}, _defaults("causal"))
    searcher = searcher_for("tpe", 0, space, _defaults("causal"), points, "val/box_micro")
    first = searcher.suggest("t1")
    assert {k: first[k] for k in ("J", "W", "B_r", "B_f", "eta", "alpha")} == \
        {"J": 100, "W": 1000, "B_r": 10, "B_f": 1, "eta": 0.2, "alpha": 0.9}
    second = searcher.suggest("t2")
    assert second != first


def test_ablation_pins_shrink_the_space():
    known = {**_defaults("causal"), "acl_spatial": False}
    space, points = search_spaces.resolve("causal", {"T": 5, "N": 20}, {"acl_spatial": False}, _defaults("causal"))
    assert "J" in space  # still declared ...
    searcher = searcher_for("random", 0, space, known, points, "val/box_micro")
    cfg = searcher.suggest("t1")
    assert "J" not in cfg and "B_r" not in cfg and "W" in cfg  # ... but never drawn
    assert "J" not in points[0] and points[0]["W"] == 1000
