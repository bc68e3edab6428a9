"""Search space of ``ccr`` (counterfactual cross-modality reasoning, on top of ``cpl``).

CPL's parameters (same ranges and published values) plus the weights of CCR's three loss terms:
the rectified/aggregated contrastive losses (``cf_weight``), the query-only branch
(``psi_weight``) and the KL term that fits ``mu`` (``kl_weight``).
"""

from . import Float
from .cpl import FIXED as CPL_FIXED
from .cpl import PAPER as CPL_PAPER
from .cpl import space as cpl_space

# CPL's published values (the authors' CCR config keeps them; its counterfactual margins equal
# CPL's) and the unweighted sum of the authors' code for the three CCR terms.
PAPER = {**CPL_PAPER, "cf_weight": 1.0, "psi_weight": 1.0, "kl_weight": 1.0}

FIXED: dict = dict(CPL_FIXED)


def space(dims: dict[str, int]) -> dict:
    return {
        **cpl_space(dims),
        "cf_weight": Float(0.25, 4.0, log=True),
        "psi_weight": Float(0.25, 4.0, log=True),
        "kl_weight": Float(0.25, 4.0, log=True),
    }
