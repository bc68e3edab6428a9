"""Training recipes: resolution, keys, per-stage best-validation selection, ensembles, packages."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from grounding import engine, recipes, tasks, training
from grounding.data.shards import Dataset
from grounding.models import registry
from grounding.models.recipe import Recipe, Stage, sigmoid_ensemble

SMALL = {"embed_dim": 32, "heads": 4}


@pytest.fixture(scope="module")
def td(yc2_tiny):
    return tasks.load(Dataset.open(yc2_tiny), splits=("train", "val", "test_iid"))


def _plain_run(td, params, optim, epochs, seed):
    """What a one-stage method did before recipes: the engine's loop, evaluated every epoch."""
    engine.seed_everything(seed)
    model = registry.build("stvg", params, td.info)
    opt = engine.make_optimizer(model, optim)
    out = []
    for e in range(epochs):
        logs = engine.train_one_epoch(model, opt, td["train"], optim, epoch=e, seed=seed)
        logs.pop("samples_per_s")
        out.append((logs, engine.evaluate(model, td["val"], td.task, td.info, batch_size=16)))
    return out


def test_trivial_recipe_trains_as_before_and_keeps_its_best_epoch(td):
    optim = engine.OptimConfig(lr=3e-3, batch_size=8)
    plain = _plain_run(td, SMALL, optim, epochs=4, seed=5)
    recipe, stages = recipes.plan("stvg", {"lr": 3e-3}, {**SMALL, "batch_size": 8}, 4, "box_micro")
    assert recipe.trivial and recipe.outputs == ("stvg",) and recipe.prerequisites() == []
    group = training.build_group(recipe, stages, td, seed=5, device="cpu", eval_batch_size=16)
    reports = [group.step(td) for _ in range(4)]
    best, best_epoch = -1.0, 0
    for epoch, ((logs, val), rep) in enumerate(zip(plain, reports), start=1):
        assert rep["train/loss"] == pytest.approx(logs["loss"], rel=1e-6)  # same training, step by step
        assert rep["epoch_val/box_micro"] == pytest.approx(val["box_micro"], rel=1e-6)
        if val["box_micro"] > best:
            best, best_epoch = val["box_micro"], epoch
        assert rep["val/box_micro"] == pytest.approx(best, rel=1e-6)  # the delivered (selected) model
        assert rep["selected_epoch"] == best_epoch
    # the package holds the selected epoch's weights: they score exactly the selected val metrics
    pkg = group.package("stvg", SMALL, td.digest)
    predictor = training.load_predictor(pkg, td.info)
    again = engine.evaluate(predictor, td["val"], td.task, td.info, batch_size=16)
    assert again == pytest.approx({k[4:]: v for k, v in reports[-1].items() if k.startswith("val/")})
    assert pkg["stages"]["stvg"]["epoch"] == best_epoch


def _three_stage(weights=(0.5, 1.0)):
    return Recipe(
        stages=(Stage("base", "stvg", optim={"lr": 3e-3}, epochs=2, takes=()),
                Stage("tuned", "stvg", init="base", model={"dropout": 0.0}),
                Stage("fresh", "stvg")),
        output=("tuned", "fresh"),
        combine=sigmoid_ensemble({"tuned": weights[0], "fresh": weights[1]}))


def test_resolution_overrides_takes_and_unknown_keys():
    r = _three_stage()
    st = recipes.resolve(r, "stvg", {"lr": 1e-4, "eta": 0.5}, {**SMALL, "batch_size": 8}, 3, "box_micro")
    assert st["base"].optim.lr == 3e-3 and "eta" not in st["base"].params  # takes=(): no searched value
    assert st["base"].epochs == 2 and st["tuned"].epochs == 3
    assert st["tuned"].params["dropout"] == 0.0 and st["tuned"].params["eta"] == 0.5 and st["tuned"].optim.lr == 1e-4
    assert st["fresh"].select == ("box_micro",) and st["base"].optim.batch_size == 8  # fixed values reach every stage
    assert r.prerequisites() == ["base"] and r.chain("tuned") == ["tuned", "base"]
    assert recipes.is_shared(r, "base", {"lr", "eta"}) and not recipes.is_shared(r, "tuned", set())
    with pytest.raises(KeyError, match="belong to neither"):
        recipes.resolve(r, "stvg", {"J": 3}, {}, 3, "box_micro")
    with pytest.raises(ValueError, match="not an earlier stage"):
        Recipe(stages=(Stage("a", "stvg", init="b"), Stage("b", "stvg")))
    with pytest.raises(ValueError, match="combine"):
        Recipe(stages=(Stage("a", "stvg"), Stage("b", "stvg")), output=("a", "b"))


def test_stage_keys_follow_data_seed_and_the_init_chain():
    r = _three_stage()
    a = recipes.resolve(r, "stvg", {}, SMALL, 3, "box_micro")
    b = recipes.resolve(r, "stvg", {"lr": 5e-4}, SMALL, 3, "box_micro")  # a searched value: not the base's
    c = recipes.resolve(r, "stvg", {}, {**SMALL, "embed_dim": 64}, 3, "box_micro")
    key = lambda st, name="base", d="d" * 64, seed=0: recipes.stage_key(r, st, name, d, seed)  # noqa: E731
    assert key(a) == key(b)  # the shared stage does not see the trial's sample
    assert len({key(a), key(c), key(a, d="e" * 64), key(a, seed=1)}) == 4
    assert key(a, "tuned") != key(b, "tuned")


def test_ensemble_selects_per_stage_and_reports_the_delivered_combination(td):
    r = _three_stage()
    st = recipes.resolve(r, "stvg", {}, {**SMALL, "batch_size": 8}, 3, "box_micro")
    base = training.train_stage(st["base"], td, seed=1, device="cpu", eval_batch_size=16)
    assert len(base["history"]) == 2 and base["epoch"] in (1, 2)
    group = training.build_group(r, st, td, seed=1, device="cpu", init_states={"base": base["model"]},
                                eval_batch_size=16)
    tuned = group.runs["tuned"].model.state_dict()
    for k, v in base["model"].items():  # the fine-tune starts from the base's selected weights
        assert torch.equal(tuned[k], v), k
    assert not group.runs["fresh"].init_loaded
    reports = [group.step(td) for _ in range(3)]
    for name in ("tuned", "fresh"):
        curve = [rep[f"stage/{name}/val/box_micro"] for rep in reports]
        assert reports[-1][f"stage/{name}/selected_epoch"] == 1 + int(np.argmax(curve))  # earliest best
    # val/ is the ensemble of each stage's selected epoch, recomputed from its saved weights
    pkg = group.package("stvg", SMALL, td.digest)
    assert pkg["combine"] == {"kind": "sigmoid_ensemble", "weights": {"tuned": 0.5, "fresh": 1.0}}
    predictor = training.load_predictor(pkg, td.info)
    again = engine.evaluate(predictor, td["val"], td.task, td.info, batch_size=16)
    assert again == pytest.approx({k[4:]: v for k, v in reports[-1].items() if k.startswith("val/")})
    # the combination really is 0.5 sigmoid(S_tuned) + 1.0 sigmoid(S_fresh)
    batch = td["test_iid"].batch(np.arange(4))
    s_t, s_f = (predictor.members[n].predict(batch) for n in ("tuned", "fresh"))
    assert torch.allclose(predictor.predict(batch), 0.5 * torch.sigmoid(s_t) + torch.sigmoid(s_f))


def test_group_checkpoint_round_trip_continues_identically(td):
    r = _three_stage()
    st = recipes.resolve(r, "stvg", {}, {**SMALL, "batch_size": 8}, 3, "box_micro")

    def fresh():
        return training.build_group(r, st, td, seed=2, device="cpu", eval_batch_size=16)

    g = fresh()
    g.step(td)
    state, rng = copy.deepcopy(g.state_dict()), torch.get_rng_state()  # as saved to a checkpoint
    straight = [g.step(td) for _ in range(2)]
    h = fresh()
    h.load_state_dict(state)
    torch.set_rng_state(rng)
    resumed = [h.step(td) for _ in range(2)]
    for a, b in zip(straight, resumed):
        a = {k: v for k, v in a.items() if not k.startswith(("time/", "stage/tuned/train/samples", "stage/fresh/train/samples"))}
        b = {k: v for k, v in b.items() if k in a}
        assert a == pytest.approx(b)


def test_init_from_another_architecture_is_refused(td):
    small = registry.build("stvg", SMALL, td.info).state_dict()
    other = registry.build("stvg", {"embed_dim": 16, "heads": 4}, td.info)
    with pytest.raises(ValueError, match="does not fit"):
        training.load_matching(other, small)


def test_causal_staged_recipe_is_the_authors_procedure():
    from grounding.models import causal

    r, st = recipes.plan("causal", {"lr": 2e-4, "J": 50, "w_deconf": 0.7}, {"embed_dim": 32, "heads": 4}, 3,
                         "box_micro")
    assert [s.name for s in r.stages] == ["backbone", "spatial", "temporal", "deconf"]
    assert r.outputs == ("spatial", "temporal", "deconf") and r.prerequisites() == ["backbone"]
    assert {n: st[n].init for n in st} == {"backbone": None, "spatial": "backbone", "temporal": "backbone",
                                           "deconf": None}
    switches = {n: (st[n].params["acl_spatial"], st[n].params["acl_temporal"], st[n].params["bda"]) for n in st}
    assert switches == {"backbone": (False, False, False), "spatial": (True, False, False),
                        "temporal": (False, True, False), "deconf": (False, False, True)}
    # the backbone sees no searched value: the code's optimiser, the config's defaults
    assert recipes.is_shared(r, "backbone", {"lr", "J", "w_deconf"})
    assert st["backbone"].optim.lr == causal.BACKBONE_OPTIM["lr"] and st["backbone"].optim.grad_clip == 10.0
    assert st["spatial"].optim.lr == 2e-4 and st["spatial"].params["J"] == 50
    assert all(st[n].select == ("box_macro", "box_micro", "query_macro", "query_micro") for n in st)
    # the combination is sum_c w_c sigmoid(S_c) with the trial's weights
    scores = {n: torch.randn(2, 3, 5, 4) for n in r.outputs}
    want = 0.5 * torch.sigmoid(scores["spatial"]) + 0.5 * torch.sigmoid(scores["temporal"]) \
        + 0.7 * torch.sigmoid(scores["deconf"])
    assert torch.allclose(r.combine(scores), want)
    # ablation rows: fewer members; every term off is the backbone alone; joint is one model
    assert recipes.plan("causal", {}, {"acl_spatial": False}, 3, "box_micro")[0].outputs == ("temporal", "deconf")
    assert recipes.plan("causal", {}, {"acl_spatial": False, "acl_temporal": False}, 3, "box_micro")[0] \
        .prerequisites() == []
    alone, _ = recipes.plan("causal", {}, {"acl_spatial": False, "acl_temporal": False, "bda": False}, 3, "box_micro")
    assert alone.outputs == ("backbone",) and alone.combine is None
    joint, _ = recipes.plan("causal", {}, {"protocol": "joint"}, 3, "box_micro")
    assert joint.trivial and joint.outputs == ("causal",)


def test_the_plateau_rule_counts_epochs_without_a_real_gain_and_a_slow_climb_is_not_flat():
    from grounding.training import Plateau
    rule = Plateau(patience=2, min_delta=0.01)
    assert [rule.update(v) for v in (0.30, 0.305, 0.309)] == [False, False, True]
    climb = Plateau(patience=2, min_delta=0.01)  # +0.006 per epoch: every second epoch beats the reference
    assert not any(climb.update(0.30 + 0.006 * k) for k in range(10))
    assert not any(Plateau(patience=0).update(0.5) for _ in range(5))


def test_a_convergence_rule_enters_a_stage_key_only_when_set():
    from grounding import recipes
    recipe, plain = recipes.plan("causal", {}, {}, 3, "box_micro")
    _, same = recipes.plan("causal", {}, {}, 3, "box_micro", converge=(0, 0.5))
    _, ruled = recipes.plan("causal", {}, {}, 3, "box_micro", converge=(2, 0.005))
    key = lambda st: recipes.stage_key(recipe, st, "backbone", "d", 0)  # noqa: E731
    assert key(plain) == key(same) != key(ruled)
    assert ruled["backbone"].converge == (2, 0.005)
