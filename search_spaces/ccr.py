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

# CPL's published values (the authors' CCR config keeps them; its counterfactual margins equal
# CPL's) and the unweighted sum of the authors' code for the three CCR terms.
PAPER = {**CPL_PAPER, "cf_weight": 1.0, "psi_weight": 1.0, "kl_weight": 1.0}

FIXED: dict = dict(CPL_FIXED)

# CPL's ablations, and each of CCR's three terms switched off (``no_cf`` without the rectified
# contrastive losses, ``no_psi`` without the query-only branch's loss, ``no_kl`` without the term
# that fits the counterfactual logit).
VARIANTS = {
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
