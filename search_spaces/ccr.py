"""Search space of ``ccr`` (counterfactual cross-modality reasoning, on top of ``cpl``).

CPL's parameters (same ranges and published values) plus the weights of CCR's three loss terms:
the rectified/aggregated contrastive losses (``cf_weight``), the query-only branch
(``psi_weight``) and the KL term that fits ``mu`` (``kl_weight``).
"""

from . import Float
from .cpl import FIXED as CPL_FIXED
from .cpl import PAPER as CPL_PAPER
from .cpl import VARIANTS as CPL_VARIANTS
from .cpl import space as cpl_space

# CPL's published values (the authors' CCR config keeps them, schedule included; its
# counterfactual margins equal CPL's, and alpha_p/alpha_n, which serve both, stay searched) and
# the unweighted sum of the authors' code for the three CCR terms.
PAPER = {**CPL_PAPER, "cf_weight": 1.0, "psi_weight": 1.0, "kl_weight": 1.0}

# The schedule of CPL's runner (the CCR runner is a copy of it). The paper/code switches
# (score, rank, side_head, rec_norm) are not searched: their defaults are the released code's
# (grounding/models/ccr.py); pin them with model.<name>=.
FIXED: dict = dict(CPL_FIXED)

# The 2 x 2 of the training score and the test ranking (side_head, rec_norm at their defaults),
# plus the configuration this project shipped before the switches existed, for
# `python -m orchestration.compare ... variants=` and bench/moment_benchmark.py.
VARIANTS: dict = {
    "code_main": {"score": "code", "rank": "main"},  # the released code (the defaults)
    "code_rectified": {"score": "code", "rank": "rectified"},
    "paper_main": {"score": "paper", "rank": "main"},
    "paper_rectified": {"score": "paper", "rank": "rectified"},
    "project_v0": {"score": "paper", "rank": "rectified", "side_head": "copy", "rec_norm": "halves"},
    "project_v0_main": {"score": "paper", "rank": "main", "side_head": "copy", "rec_norm": "halves"},
    # CPL's ablations, and each of CCR's three terms switched off (no_cf without the rectified
    # contrastive losses, no_psi without the query-only branch's loss, no_kl without the term that
    # fits the counterfactual logit)
    **CPL_VARIANTS,
    "no_cf": {"cf_weight": 0.0},
    "no_psi": {"psi_weight": 0.0},
    "no_kl": {"kl_weight": 0.0},
}


def space(dims: dict[str, int]) -> dict:
    return {
        **cpl_space(dims),
        "cf_weight": Float(0.25, 4.0, log=True),
        "psi_weight": Float(0.25, 4.0, log=True),
        "kl_weight": Float(0.25, 4.0, log=True),
    }
