"""``causal``'s two named points (the paper's and the authors' code's) come first, in that order."""

from __future__ import annotations

import search_spaces
from grounding.engine import OPTIM_KEYS, OptimConfig
from grounding.models import registry
from grounding.models.causal import CausalConfig

DIMS = {"T": 5, "N": 20}


def _defaults():
    cfg = registry.get("causal").Config()
    return {**{f: getattr(cfg, f) for f in registry.config_fields("causal")},
            **{k: getattr(OptimConfig(), k) for k in OPTIM_KEYS}}


def test_paper_then_code_point():
    mod = search_spaces.load("causal")
    fixed = dict(mod.FIXED)
    space, points = search_spaces.resolve("causal", DIMS, fixed, _defaults())
    assert set(space) == {"J", "W", "B_r", "B_f", "alpha", "acl_scale", "eta", "lr", "w_spatial", "w_temporal",
                          "w_deconf", "intervention"}
    # both intervention semantics are searched; both named points keep the code's (the default)
    assert set(space["intervention"].values) == {"code", "paper"}
    assert [p["intervention"] for p in points] == ["code", "code"]
    assert CausalConfig().intervention == "code"
    # B_r reaches below the ~6 object proposals of a generated frame, drawn log-uniformly
    assert space["B_r"].low == 1 and space["B_r"].high == DIMS["N"] // 2 and space["B_r"].log
    assert len(points) == 2
    paper, code = points
    assert paper["lr"] == 1e-4 and code["lr"] == 8e-4
    assert {k: v for k, v in paper.items() if k != "lr"} == {k: v for k, v in code.items() if k != "lr"}
    assert tuple(paper[k] for k in ("J", "W", "B_r", "B_f", "alpha", "eta")) == (100, 1000, 10, 1, 0.9, 0.2)
    assert (paper["w_spatial"], paper["w_temporal"], paper["w_deconf"]) == (0.5, 0.5, 1.0)
    for point in points:
        assert all(space[k].contains(v) for k, v in point.items())
    # the code's optimiser settings are valid OptimConfig values, and FIXED carries them for both points
    code_optim = {k: v for k, v in mod.POINTS["code"].items() if k in OPTIM_KEYS}
    OptimConfig(**code_optim)
    assert code_optim["schedule"] == "step" and code_optim["step_epochs"] == 40 and code_optim["grad_clip"] == 10.0
    assert {k: fixed[k] for k in ("weight_decay", "batch_size", "schedule", "step_epochs", "step_gamma",
                                  "grad_clip")} == {k: code_optim[k] for k in ("weight_decay", "batch_size",
                                                                                 "schedule", "step_epochs",
                                                                                 "step_gamma", "grad_clip")}


def test_pinning_lr_merges_the_points_and_joint_drops_the_ensemble_weights():
    space, points = search_spaces.resolve("causal", DIMS, {"lr": 3e-4}, _defaults())
    assert len(points) == 1 and "lr" not in points[0]  # the two points differ only in lr
    space, points = search_spaces.resolve("causal", DIMS, {"protocol": "joint"}, _defaults())
    assert all(not any(k.startswith("w_") for k in p) for p in points)
    space, points = search_spaces.resolve("causal", DIMS, {"acl_spatial": False}, _defaults())
    assert all("J" not in p and "w_spatial" not in p and p["W"] == 1000 for p in points)
