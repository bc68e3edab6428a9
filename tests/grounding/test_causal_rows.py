"""Issue 12's reproduction rows as ``causal`` variants: each compared cell's recipe (stages, inits,
switches, ensemble weights), the stvg control's independently seeded members, and the default
staged recipe unchanged. No Ray: the cells come from ``orchestration.compare.parse``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import search_spaces
from grounding import engine, recipes, tasks, training
from grounding.data.shards import Dataset
from grounding.models import causal, registry
from grounding.models.recipe import stage_seed
from orchestration.cli.compare_args import parse

ROWS = ("joint_paper", "staged_paper", "spatial_only", "temporal_only", "no_bda", "deconf_only", "stvg_ensemble")
SELECT = ("box_macro", "box_micro", "query_macro", "query_micro")


def _cells():
    cfg = parse(["methods=stvg,causal", f"variants={','.join(ROWS)}", "point=code", "seeds=1"])
    return cfg, {(c.method, c.variant): c for c in cfg.cells}


def _plan(cell):
    return recipes.plan(cell.method, {}, cell.params, 3, "box_micro")


def _cfg(rs):
    """The config the stage's model is built with (its params over the config defaults)."""
    return registry.make_config(rs.method, rs.params)


def _switches(rs):
    c = _cfg(rs)
    return c.acl_spatial, c.acl_temporal, c.bda


def test_point_code_applies_to_causal_and_stvg_runs_its_own_paper_point():
    cfg, cells = _cells()
    assert list(cells) == [("stvg", "base"), *[("causal", v) for v in ("base", *ROWS)]]
    assert cfg["points"] == {"stvg": "paper", "causal": "code"}
    stvg_paper = search_spaces.load("stvg").PAPER
    assert cells["stvg", "base"].point == "paper" and cells["stvg", "base"].params["lr"] == stvg_paper["lr"]
    code = search_spaces.load("causal").POINTS["code"]
    for v in ("base", *ROWS):
        c = cells["causal", v]
        assert c.point == "code" and c.params["lr"] == code["lr"] == 8e-4 and c.params["schedule"] == "step"


def test_default_staged_recipe_is_unchanged():
    _, cells = _cells()
    r, st = _plan(cells["causal", "base"])
    assert [s.name for s in r.stages] == ["backbone", "spatial", "temporal", "deconf"]
    assert r.outputs == ("spatial", "temporal", "deconf") and r.prerequisites() == ["backbone"]
    assert {n: st[n].init for n in st} == {"backbone": None, "spatial": "backbone", "temporal": "backbone",
                                           "deconf": None}
    assert {n: _switches(st[n]) for n in st} == {"backbone": (False, False, False), "spatial": (True, False, False),
                                                 "temporal": (False, True, False), "deconf": (False, False, True)}
    assert r.combine.weights == {"spatial": 0.5, "temporal": 0.5, "deconf": 1.0}
    assert _cfg(st["spatial"]).intervention == "code"
    # every stage trains with the trial's seed, and its key has no seed-offset entry (keys as before)
    assert all(s.seed_offset == 0 for s in r.stages) and all("seed_offset" not in st[n].identity() for n in st)
    assert all(stage_seed(7, st[n].seed_offset) == 7 for n in st)


@pytest.mark.parametrize("variant, members, switches", [
    ("spatial_only", {"spatial": 0.5}, {"spatial": (True, False, False)}),
    ("temporal_only", {"temporal": 0.5}, {"temporal": (False, True, False)}),
    ("no_bda", {"spatial": 0.5, "temporal": 0.5}, {"spatial": (True, False, False), "temporal": (False, True, False)}),
])
def test_acl_rows_are_ensembles_of_the_remaining_components_from_the_shared_backbone(variant, members, switches):
    _, cells = _cells()
    r, st = _plan(cells["causal", variant])
    assert [s.name for s in r.stages] == ["backbone", *members] and r.outputs == tuple(members)
    assert r.combine.weights == members and r.prerequisites() == ["backbone"]
    assert recipes.is_shared(r, "backbone", {"lr"})  # the same backbone build as the base row's
    base_r, base_st = _plan(cells["causal", "base"])
    key = lambda rr, s: recipes.stage_key(rr, s, "backbone", "d" * 64, 0)  # noqa: E731
    assert key(r, st) == key(base_r, base_st)
    for name, sw in switches.items():
        assert st[name].init == "backbone" and _switches(st[name]) == sw


def test_rows_that_differ_only_in_what_the_backbone_ignores_share_its_build():
    cfg = parse(["methods=causal", "variants=staged_paper,frozen_banks,spatial_only", "point=code", "seeds=1"])
    keys = {}
    for c in cfg.cells:
        r, st = _plan(c)
        keys[c.variant] = recipes.stage_key(r, st, "backbone", "d" * 64, 0)
        assert _cfg(st["backbone"]).intervention == "code" and _cfg(st["backbone"]).alpha == 0.9
    assert len(set(keys.values())) == 1, keys
    # what the backbone does depend on still reaches it
    other = parse(["methods=causal", "point=code", "seeds=1", "model.eta=0.5"]).cells[0]
    r, st = _plan(other)
    assert recipes.stage_key(r, st, "backbone", "d" * 64, 0) != keys["base"] and _cfg(st["backbone"]).eta == 0.5


def test_deconfounded_alone_is_one_component_from_scratch():
    _, cells = _cells()
    r, st = _plan(cells["causal", "deconf_only"])
    assert [s.name for s in r.stages] == ["deconf"] and r.prerequisites() == []
    assert st["deconf"].init is None and _switches(st["deconf"]) == (False, False, True)
    assert r.combine.weights == {"deconf": 1.0}


def test_intervention_rows():
    _, cells = _cells()
    r, st = _plan(cells["causal", "staged_paper"])
    assert r.outputs == ("spatial", "temporal", "deconf")
    assert _cfg(st["spatial"]).intervention == _cfg(st["temporal"]).intervention == "paper"
    joint, jst = _plan(cells["causal", "joint_paper"])
    assert joint.trivial and joint.outputs == ("causal",)
    assert {k: getattr(_cfg(jst["causal"]), k) for k in causal.LEGACY} == causal.LEGACY  # the earlier joint model
    assert _switches(jst["causal"]) == (True, True, True)


def test_stvg_control_is_three_independently_seeded_plain_mil_models():
    _, cells = _cells()
    r, st = _plan(cells["causal", "stvg_ensemble"])
    names = ["stvg_1", "stvg_2", "stvg_3"]
    assert [s.name for s in r.stages] == names and r.outputs == tuple(names) and r.prerequisites() == []
    assert r.combine.weights == {"stvg_1": 0.5, "stvg_2": 0.5, "stvg_3": 1.0}
    for n in names:
        assert st[n].init is None and _switches(st[n]) == (False, False, False)  # no ACL, no BDA
        assert st[n].optim.lr == 8e-4 and st[n].select == SELECT  # the trial's (code) optimiser
        assert _cfg(st[n]).negatives == "disjoint" and _cfg(st[n]).mil_form == "code"
    offsets = [st[n].seed_offset for n in names]
    assert len(set(offsets)) == 3 and 0 not in offsets
    seeds = {(trial_seed, n): stage_seed(trial_seed, st[n].seed_offset) for trial_seed in (0, 1, 2) for n in names}
    assert len(set(seeds.values())) == 9 and not set(seeds.values()) & {0, 1, 2}
    keys = {recipes.stage_key(r, st, n, "d" * 64, 0) for n in names}
    assert len(keys) == 3  # three distinct results, nothing shared


def test_stvg_control_needs_the_staged_protocol():
    with pytest.raises(ValueError, match="components=stvg_control needs protocol=staged"):
        causal.CausalConfig(components="stvg_control", protocol="joint")
    with pytest.raises(ValueError, match="components"):
        causal.CausalConfig(components="nope")


def test_stvg_control_members_differ_in_init_and_data_order_and_ensemble_as_declared(yc2_tiny):
    td = tasks.load(Dataset.open(yc2_tiny), splits=("train", "val", "test_iid"))
    params = {"embed_dim": 16, "heads": 2, "batch_size": 8, "components": "stvg_control",
              "acl_spatial": False, "acl_temporal": False, "bda": False}
    r, st = recipes.plan("causal", {}, params, 1, "box_micro")
    group = training.build_group(r, st, td, seed=0, device="cpu", eval_batch_size=16)
    runs = group.runs
    assert len({runs[n].seed for n in runs}) == 3
    sd = {m: runs[m].model.state_dict() for m in runs}
    for a, b in (("stvg_1", "stvg_2"), ("stvg_2", "stvg_3"), ("stvg_1", "stvg_3")):  # independent inits
        assert any(not torch.equal(sd[a][k], sd[b][k]) for k in sd[a] if sd[a][k].is_floating_point()), (a, b)
    n = len(td["train"])
    orders = [np.random.default_rng([runs[m].seed, 0, 0]).permutation(n) for m in runs]  # engine's epoch-0 order
    assert not np.array_equal(orders[0], orders[1]) and not np.array_equal(orders[1], orders[2])
    report = group.step(td)
    assert {f"stage/{m}/selected_epoch" for m in runs} <= set(report)
    assert not any(k.startswith("stage/") and "loss_acl" in k for k in report)  # plain MIL only
    pkg = group.package("causal", params, td.digest)
    assert pkg["combine"] == {"kind": "sigmoid_ensemble", "weights": {"stvg_1": 0.5, "stvg_2": 0.5, "stvg_3": 1.0}}
    predictor = training.load_predictor(pkg, td.info).eval()
    batch = td["test_iid"].batch(np.arange(4))
    s = [predictor.members[m].predict(batch) for m in ("stvg_1", "stvg_2", "stvg_3")]
    expect = 0.5 * torch.sigmoid(s[0]) + 0.5 * torch.sigmoid(s[1]) + torch.sigmoid(s[2])
    assert torch.allclose(predictor.predict(batch), expect)
    again = engine.evaluate(predictor, td["val"], td.task, td.info, batch_size=16)
    assert again == pytest.approx({k[4:]: v for k, v in report.items() if k.startswith("val/")})
    # a leave-one-out without retraining: the kept members combined with their own weights
    sub = training.load_predictor(pkg, td.info, members=["stvg_3", "stvg_1"]).eval()
    assert list(sub.members) == ["stvg_1", "stvg_3"] and sub.combine.weights == {"stvg_1": 0.5, "stvg_3": 1.0}
    assert torch.allclose(sub.predict(batch), 0.5 * torch.sigmoid(s[0]) + torch.sigmoid(s[2]))
    for bad in (["stvg_4"], []):
        with pytest.raises(ValueError, match="allowed: a non-empty subset of stvg_1, stvg_2, stvg_3"):
            training.load_predictor(pkg, td.info, members=bad)


def test_a_component_trains_the_same_alone_as_beside_the_others(yc2_tiny):
    """Each stage keeps its own torch random stream (dropout, the ACL's sampled style items), so a
    component trained inside the full ensemble equals the one an ablation row trains alone (what
    ``orchestration.evaluate members=`` relies on), and the other components do not shift it."""
    td = tasks.load(Dataset.open(yc2_tiny), splits=("train", "val"))
    base = {"embed_dim": 16, "heads": 2, "batch_size": 8, "J": 8, "W": 8, "B_r": 3, "dropout": 0.3}
    r, st = recipes.plan("causal", {}, base, 2, "box_micro")
    backbone = {k: v.clone() for k, v in registry.build("causal", st["backbone"].params, td.info).state_dict().items()}
    states = {}
    for row, params in (("all", base), ("spatial_only", {**base, "acl_temporal": False, "bda": False}),
                        ("temporal_only", {**base, "acl_spatial": False, "bda": False})):
        rr, ss = recipes.plan("causal", {}, params, 2, "box_micro")
        group = training.build_group(rr, ss, td, seed=3, device="cpu", init_states={"backbone": backbone},
                                     eval_batch_size=16)
        torch.rand(7)  # the caller's stream moving between steps does not reach a stage either
        group.step(td)
        torch.rand(5)
        group.step(td)
        states[row] = {n: group.runs[n].model.state_dict() for n in group.runs}
    for row, name in (("spatial_only", "spatial"), ("temporal_only", "temporal")):
        a, b = states["all"][name], states[row][name]
        assert all(torch.equal(a[k], b[k]) for k in a), (row, [k for k in a if not torch.equal(a[k], b[k])][:3])


def test_each_component_stops_on_its_own_flat_curve_while_the_others_train_on(yc2_tiny):
    """converge.patience in an ensemble: every stage runs its own rule on its own selection score, a
    flat stage trains no more (its weights stay), the trial goes on while any stage has epochs left,
    and converge/flat is 1 only when every stage stopped flat."""
    td = tasks.load(Dataset.open(yc2_tiny), splits=("train", "val"))
    params = {"embed_dim": 16, "heads": 2, "batch_size": 8, "components": "stvg_control",
              "acl_spatial": False, "acl_temporal": False, "bda": False}
    r, st = recipes.plan("causal", {}, params, 4, "box_micro", converge=(1, 10.0))  # no gain can count
    group = training.build_group(r, st, td, seed=0, device="cpu", eval_batch_size=16)
    group.runs["stvg_1"].plateau = training.Plateau(0)  # this one never flattens: it spends its 4 epochs
    reports = []
    while not group.done:
        reports.append(group.step(td))
        if group.epoch == 2:
            frozen = {k: v.clone() for k, v in group.runs["stvg_2"].model.state_dict().items()}
    assert [group.runs[n].epoch for n in ("stvg_1", "stvg_2", "stvg_3")] == [4, 2, 2]
    assert all(torch.equal(frozen[k], v) for k, v in group.runs["stvg_2"].model.state_dict().items())
    assert [rep["stage/stvg_2/converge/flat"] for rep in reports[:2]] == [0.0, 1.0]
    assert "stage/stvg_2/train/loss" not in reports[2] and "stage/stvg_1/train/loss" in reports[3]
    assert [rep["converge/flat"] for rep in reports] == [0.0, 0.0, 0.0, 0.0] and not group.flat
    group.runs["stvg_1"].flat = True
    assert group.flat
