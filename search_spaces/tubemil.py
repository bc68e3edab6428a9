"""Search space of ``tubemil`` (the tube family's MIL baseline; this project's own design, so
``PAPER`` is the documented default point of ``TubeMILConfig`` plus the optimiser's)."""

from . import Choice, Float

PAPER = {"lr": 1e-3, "weight_decay": 1e-6, "batch_size": 32, "dropout": 0.1, "tau": 0.1, "lambda_time": 1.0,
         "seg_threshold": 0.5}

# Held fixed by the sweep unless pinned on the command line (model.embed_dim=256 on a GPU).
FIXED = {"embed_dim": 128}


def space(dims: dict[str, int]) -> dict:
    return {
        "lr": Float(1e-4, 3e-3, log=True),
        "weight_decay": Float(1e-8, 1e-3, log=True),
        "batch_size": Choice((16, 32, 64)),
        "dropout": Float(0.0, 0.5),
        "tau": Float(0.03, 0.5, log=True),
        "lambda_time": Float(0.1, 3.0, log=True),
        "seg_threshold": Float(-0.5, 1.5),
    }
