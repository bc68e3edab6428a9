"""Search space of ``causal`` (WSVOG via causal intervention).

Memory-bank and content-set parameters exist only where their ACL branch is switched on
(``model.acl_spatial=false`` on the command line removes J and B_r, and so on).
"""

from . import Choice, Float, Int

# The paper's values (J, W, B_r, B_f, eta, alpha); acl_scale as in the authors' code;
# lr/weight_decay/dropout/batch_size are this project's defaults.
PAPER = {"J": 100, "W": 1000, "B_r": 10, "B_f": 1, "eta": 0.2, "alpha": 0.9, "acl_scale": 0.3,
         "lr": 1e-3, "weight_decay": 1e-6, "dropout": 0.1, "batch_size": 32}


# Held fixed by the sweep unless pinned on the command line (model.embed_dim=512 model.heads=8
# restores the paper's 512-d embedding): 128-d keeps the default sweep within 15 minutes on a
# 2-core CPU.
FIXED = {"embed_dim": 128, "heads": 4}

# Ablations for ``python -m orchestration.compare methods=causal variants=...``: each removes one
# component of the method (the paper's Table 3 rows) or freezes the memory banks.
VARIANTS = {
    "no_acl_spatial": {"acl_spatial": False},
    "no_acl_temporal": {"acl_temporal": False},
    "no_bda": {"bda": False},
    "frozen_banks": {"alpha": 1.0},
}


def space(dims: dict[str, int]) -> dict:
    N, T = dims["N"], dims["T"]
    return {
        "J": Int(10, 1000, log=True, when={"acl_spatial": True}),
        "B_r": Int(1, max(1, N // 2), when={"acl_spatial": True}),
        "W": Int(100, 4000, log=True, when={"acl_temporal": True}),
        "B_f": Int(1, max(1, T // 2), when={"acl_temporal": True}),
        "alpha": Float(0.5, 0.99),
        "acl_scale": Float(0.05, 1.0, log=True),
        "eta": Float(0.05, 1.0, log=True),
        "lr": Float(1e-5, 3e-3, log=True),
        "weight_decay": Float(1e-8, 1e-3, log=True),
        "dropout": Float(0.0, 0.5),
        "batch_size": Choice((16, 32, 64)),
    }
