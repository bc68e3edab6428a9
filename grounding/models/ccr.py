"""``ccr``: Counterfactual Cross-modality Reasoning (Lv et al., ACM MM 2023), on top of :mod:`cpl`.

CPL scores a proposal by how well the masked query is reconstructed from it, but the unmasked
words alone already predict many masked ones (the language bias: "opens the" -> "door"). CCR
models reconstruction as the aggregation of a cross-modal and a query-only effect and removes the
query-only part. Everything of :mod:`cpl` (proposals, masks, negatives, its losses on the main
branch, the vote) is reused; this module adds, per scored proposal ``P`` (the positives; for
the losses, CPL's selected positive ``k*``, its two hard negatives and the reference):

* main branch ``phi_P = pi(chi(S_P, q~))``: CPL's word logits ``[W, V]`` (``chi`` the
  Gaussian-masked cross-modal decoder, ``pi`` its word classifier);
* side branch ``psi = pi_q(q~)``: word logits from the masked query tokens alone (the same
  shifted, masked, position-encoded tokens the decoder reads); it does not depend on ``P``;
* aggregation ``rho(x, y) = x * sigmoid(y)``; aggregated prediction ``q_P = rho(phi_P, psi)``;
* counterfactual prediction ``q_c = rho(mu, psi)`` with a learnable scalar ``mu`` (the
  cross-modal knowledge replaced by a constant, so only the query effect remains);
* rectified prediction ``softmax(q_P - q_c)``.

Losses, with ``ell(P) = CE(q_P - q_c) + CE(q_P)`` (rectified and aggregated reconstruction) and
``k*`` the positive CPL selects (lowest main-branch loss):

* ``L_cpl`` (CPL's ``L_rec + ivc_weight L_ivc + div_weight L_div`` on ``phi``);
* ``L_cf = (ell(P_k*) + ell(P_ref)) / 2 + ivc_weight ([ell(P_k*) - ell(P_ref) + alpha_p]_+ +
  sum_n [ell(P_k*) - ell(P_n,k*) + alpha_n]_+)``: the contrastive losses on ``ell``;
* ``L_psi = CE(psi)``;
* ``L_kl = KL(softmax(q*) || softmax(q_c))`` with ``q* = q_P_k*``, with ``q*`` and ``psi`` detached
  so that this term updates ``mu`` alone;
* ``L = L_cpl + cf_weight L_cf + psi_weight L_psi + kl_weight L_kl``.

Inference ranks CPL's proposals by the rectified reconstruction loss ``CE(q_P - q_c)``, then votes.

Published values: those of CPL (the authors' Charades config is CPL's, with 8 attention heads and
``cf_margin_1/2`` equal to CPL's margins, so ``alpha_p``/``alpha_n`` serve both); the three loss
weights are 1 (the authors sum the terms unweighted).

Choices where the paper is silent (exposed where they are numbers):

* ``mu`` only learns through ``L_kl``: ``q_c`` enters the rectified CE with ``mu`` detached (as
  in counterfactual VQA, where the constant is fitted by the KL term alone). ``mu`` starts at 0.
* One side head ``pi_q`` for all proposal kinds, initialised as a copy of ``pi``. The authors'
  code keeps four copies (positive, reference, two negatives) fed the same input, each followed
  by a ``V x V`` linear layer before its CE; the extra layer is left out (too slow on CPU at
  ``V = 1147``) and ``CE(psi)`` is taken on ``psi`` itself.
* ``ell`` sums the rectified and the aggregated CE (the authors' code sums the aggregated CE, the
  side-branch CE and the KL into its per-proposal score and uses the rectified logits only at
  test time; here ``CE(psi)`` and the KL do not depend on the proposal, so they are kept out of
  the hinges, where they would cancel or move ``mu``).
* The reference's ``ell`` uses the same ``q_c`` as every proposal (``psi`` depends only on the
  query).
* Sizes as in :mod:`cpl` (CPU defaults; 4 heads rather than the authors' 8).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from .base import DataInfo, check_config
from .cpl import CPL, CPLConfig
from .registry import register


@dataclasses.dataclass
class CCRConfig(CPLConfig):
    cf_weight: float = 1.0  # weight of the rectified/aggregated contrastive losses
    psi_weight: float = 1.0  # weight of CE(psi)
    kl_weight: float = 1.0  # weight of KL(softmax(q*) || softmax(q_c))

    def __post_init__(self):
        super().__post_init__()
        check_config(self, {"cf_weight": (0, None), "psi_weight": (0, None), "kl_weight": (0, None)})


def aggregate(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``rho(x, y) = x * sigmoid(y)``."""
    return x * torch.sigmoid(y)


def kl_to_counterfactual(q_star: torch.Tensor, mu: torch.Tensor, psi: torch.Tensor,
                         wmask: torch.Tensor) -> torch.Tensor:
    """``KL(softmax(q*) || softmax(rho(mu, psi)))`` averaged over the valid words; ``q*`` and
    ``psi`` are detached, so only ``mu`` receives a gradient."""
    p_log = F.log_softmax(q_star.detach(), dim=-1)
    q_log = F.log_softmax(aggregate(mu, psi.detach()), dim=-1)
    kl = (p_log.exp() * (p_log - q_log)).sum(-1)  # [B, W]
    m = wmask.float()
    return ((kl * m).sum(1) / m.sum(1).clamp(min=1)).mean()


@register("ccr")
class CCR(CPL):
    task = "moment"
    Config = CCRConfig

    def __init__(self, cfg: CCRConfig, info: DataInfo):
        super().__init__(cfg, info)
        self.psi_head = nn.Linear(cfg.hidden_dim, self.fc_comp.out_features)  # pi_q
        self.psi_head.load_state_dict(self.fc_comp.state_dict())
        self.mu = nn.Parameter(torch.zeros(()))

    def counterfactual(self, psi: torch.Tensor) -> torch.Tensor:
        """``q_c = rho(mu, psi)`` with ``mu`` detached (it learns through the KL term only)."""
        return aggregate(self.mu.detach(), psi)

    def ell(self, phi: torch.Tensor, psi: torch.Tensor, q_c: torch.Tensor, ids, wmask) -> torch.Tensor:
        """``CE(q_P - q_c) + CE(q_P)`` per sequence; ``phi [N, W, V]`` with ``psi``/``q_c``
        broadcastable to it."""
        q = aggregate(phi, psi)
        return self.nll(q - q_c, ids, wmask) + self.nll(q, ids, wmask)

    def forward(self, batch):
        cfg = self.cfg
        out = self.score_all(batch)
        loss, logs = self.cpl_loss(out)
        ids, wmask, q = out["ids"], out["wmask"], out["rest_query"]
        B, K = out["center"].shape
        best = out["best"]
        ar = torch.arange(B, device=best.device)
        psi = self.psi_head(out["words_in"])  # [B, W, V]
        q_c = self.counterfactual(psi)
        phi_best = out["logits_pos"].view(B, K, *out["logits_pos"].shape[1:])[ar, best]  # [B, W, V]
        ell_pos = self.ell(phi_best, psi, q_c, ids, wmask)
        ell_neg1, ell_neg2, ell_ref = self.ell(out["logits_rest"], psi[q], q_c[q], ids[q], wmask[q]).view(3, B)
        rec_cf, ivc_cf = self.contrastive(ell_pos, ell_neg1, ell_neg2, ell_ref)
        l_cf = rec_cf + cfg.ivc_weight * ivc_cf
        l_psi = self.nll(psi, ids, wmask).mean()
        l_kl = kl_to_counterfactual(aggregate(phi_best, psi), self.mu, psi, wmask)
        loss = loss + cfg.cf_weight * l_cf + cfg.psi_weight * l_psi + cfg.kl_weight * l_kl
        logs.update(loss_cf_rec=float(rec_cf.detach()), loss_cf_ivc=float(ivc_cf.detach()),
                    loss_psi=float(l_psi.detach()), loss_kl=float(l_kl.detach()), mu=float(self.mu.detach()))
        if self.training:
            self.step += 1
        return loss, logs

    def rank_scores(self, logits, words_in, ids, wmask) -> torch.Tensor:
        """The rectified reconstruction loss ``CE(q_P - q_c)``."""
        psi = self.psi_head(words_in)
        return self.nll(aggregate(logits, psi) - self.counterfactual(psi), ids, wmask)
