"""Search space of ``cpl`` (Gaussian-based contrastive proposal learning, moment localisation).

``div_lambda`` is the paper's lambda (``lambda`` is a Python keyword); ``alpha_p``/``alpha_n`` are
the margins against the reference (whole video) and the hard negatives (the paper's beta_1,
beta_2; ``margin_1``/``margin_2`` in the authors' code).
"""

from . import Float, Int

# The authors' Charades-STA values (paper and released config): lambda 0.146, margins 0.1/0.15,
# 8 proposals, sigma 9, a third of the words masked, Adam at 4e-4 with batch 32; the released
# runner's fairseq schedule: 400 warm-up updates, gradient-norm clip 10.
PAPER = {"div_lambda": 0.146, "alpha_p": 0.1, "alpha_n": 0.15, "num_props": 8, "sigma": 9.0,
         "mask_ratio": 1 / 3, "lr": 4e-4, "warmup_steps": 400, "grad_clip": 10.0}

# The config defaults are already CPU-sized (hidden_dim 32, 2 layers per stack, see
# grounding/models/cpl.py); model.hidden_dim=256 model.layers=3 restores the paper's size.
# The schedule is the authors' (fairseq inverse_sqrt: linear warm-up from 1e-7, then lr *
# sqrt(warmup / step)); optim.schedule=constant optim.grad_clip=0 is the constant-lr Adam of before.
FIXED: dict = {"schedule": "warmup_rsqrt", "warmup_init_lr": 1e-7, "weight_decay": 0.0}

# Named configurations for `python -m orchestration.compare ... variants=`: overrides of the
# method's config / optimiser on top of the defaults and FIXED.
VARIANTS: dict = {
    "authors": {},  # the released runner's schedule (FIXED) at the published values
    "constant_lr": {"schedule": "constant", "grad_clip": 0.0},  # the project's earlier protocol
    # ablations: top-1 proposal instead of the vote, no diversity penalty, no intra-video contrast
    # (reconstruction alone)
    "no_vote": {"vote": False},
    "no_div": {"div_weight": 0.0},
    "no_ivc": {"ivc_weight": 0.0},
}


def space(dims: dict[str, int]) -> dict:
    return {
        "div_lambda": Float(0.05, 0.5),
        "alpha_p": Float(0.0, 0.5),
        "alpha_n": Float(0.0, 0.5),
        "num_props": Int(4, 16),
        "sigma": Float(3.0, 15.0),
        "mask_ratio": Float(0.15, 0.5),
        "lr": Float(1e-4, 2e-3, log=True),
        "warmup_steps": Int(50, 2000, log=True),
        "grad_clip": Float(1.0, 100.0, log=True),
    }
