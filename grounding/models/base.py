"""What every grounding method provides, and what it is given about the data."""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, ClassVar

import numpy as np
import torch
import torch.distributed as dist
from torch import nn


@dataclasses.dataclass
class DataInfo:
    """What a model may know about its dataset when it is built.

    ``train_features`` is this process's training features (for memory-bank initialisation), in
    the dataset's dtype and usually a read-only map of the node's copy: gather the rows needed,
    never convert the whole array;
    ``class_vectors``/``class_priors`` describe the object vocabulary (WSVOG/STVG),
    ``word_vectors`` the word vocabulary (moment).
    """

    task: str
    dims: dict[str, int]
    class_vectors: np.ndarray | None = None  # [K, word_dim]
    class_priors: np.ndarray | None = None  # [K], sums to 1 over training counts
    word_vectors: np.ndarray | None = None  # [V, word_dim]
    train_features: np.ndarray | None = None
    seed: int = 0  # seeds anything a model draws at build time (e.g. memory-bank entries)
    text: dict | None = None  # the manifest's text-feature block (encoder, digest, dim), if any
    # the dataset's name: a converter's ``source`` (``charades_sta``, ``anet_captions``, ...) or a
    # generator's ``benchmark`` (``charades_cd_generated``) from the manifest's extra; None if unknown
    dataset: str | None = None


@dataclasses.dataclass
class ModelConfig:
    """Base of every method's hyperparameters; subclasses add fields with the paper's defaults."""

    def replace(self, **kw) -> "ModelConfig":
        return dataclasses.replace(self, **kw)


class GroundingModel(nn.Module):
    """A method: ``forward(batch) -> (loss, logs)`` for training, ``predict(batch)`` for eval.

    ``task`` names the task family whose batches it reads and whose metric scores it:
    ``wsvog`` predictions are proposal scores ``[B, Kq, T, N]``.

    Optional hooks the engine (:func:`grounding.engine.train_one_epoch`) calls when a model has them:

    * ``loss_terms(batch) -> {term: loss}``: the separate terms of the training loss for one batch,
      each as it enters the total (weight included), computed without side effects (no memory-bank
      update, no diagnostic counted, the model's own random generators left as they were). With
      it, the engine's once-per-epoch gradient probe logs ``grad/<term>/<group>``, the gradient norm
      each term sends into each of :meth:`grad_groups`' parameter groups
      (:func:`grounding.engine.grad_probe`).
    * ``epoch_start(epoch)``, ``epoch_end_logs() -> {name: float}``: see the engine.
    """

    task: ClassVar[str]
    Config: ClassVar[type[ModelConfig]]
    # config fields read only by ``predict`` (never in training): a trained model may be evaluated
    # under another value (``orchestration.evaluate model.<name>=``, :func:`grounding.training.load_predictor`)
    prediction_options: ClassVar[tuple[str, ...]] = ()

    def __init__(self, cfg: ModelConfig, info: DataInfo):
        super().__init__()
        self.cfg = cfg
        self.info = info

    @classmethod
    def check_data(cls, manifest: Any, root: str, params: dict) -> None:
        """Raise a one-line ``DataError`` if the dataset lacks what this configuration needs
        (checked before a sweep starts). Most methods need nothing beyond their task family."""

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError

    @torch.no_grad()
    def predict(self, batch: dict[str, torch.Tensor]) -> Any:
        raise NotImplementedError

    def grad_groups(self) -> dict[str, list[nn.Parameter]]:
        """Named groups of the trainable parameters, for the gradient probe (``loss_terms``): by
        default one per top-level submodule that has any, and ``other`` for the model's own."""
        groups = {}
        for name, child in self.named_children():
            params = [p for p in child.parameters() if p.requires_grad]
            if params:
                groups[name] = params
        own = [p for p in self._parameters.values() if p is not None and p.requires_grad]
        if own:
            groups["other"] = own
        return groups

    def validation_variants(self) -> dict[str, dict[str, Any]]:
        """Diagnostic validation passes run every epoch beside the real one: ``{name: config
        overrides}``; the trained model predicts under each (:meth:`variant`) and the scores are
        logged as ``epoch_val/<name>/<metric>`` (:class:`grounding.training.Group`). They never
        select a checkpoint. Most methods have none."""
        return {}

    @contextlib.contextmanager
    def variant(self, overrides: dict[str, Any]):
        """This model with ``cfg`` replaced by ``cfg.replace(**overrides)`` inside the block (the
        parameters are the trained ones; the method must read those options at prediction time)."""
        cfg = self.cfg
        self.cfg = cfg.replace(**overrides)
        try:
            yield self
        finally:
            self.cfg = cfg


def trainable(*modules: nn.Module | None) -> list[nn.Parameter]:
    """The trainable parameters of ``modules`` (None entries skipped), for ``grad_groups``."""
    return [p for m in modules if m is not None for p in m.parameters() if p.requires_grad]


def collective_device() -> torch.device:
    """Where a collective's tensors must live for the initialised process group: the current CUDA
    device under NCCL (which has no CPU path), the CPU otherwise (gloo)."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def reduce_over_ranks(t: torch.Tensor, op=None) -> torch.Tensor:
    """``t`` all-reduced over the ranks of an initialised process group (``op``: SUM by default), on
    ``t``'s own device whatever the backend needs (:func:`collective_device`); ``t`` itself on one
    process (reduced in place when it already sits on that device, as ``dist.all_reduce`` does). A
    collective: every rank must call it with a tensor of the same shape. Every reduction
    of per-rank statistics (losses, counts, steps, diagnostics) goes through here."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return t
    buf = t.to(collective_device())
    dist.all_reduce(buf, op=op if op is not None else dist.ReduceOp.SUM)
    return buf.to(t.device)


def sum_over_ranks(values: list[float]) -> list[float]:
    """``values`` summed element-wise over the ranks of an initialised process group (a collective:
    every rank must call it with a list of the same length); unchanged on one process. Models use it
    in ``epoch_end_logs`` so that every rank reports the same per-epoch diagnostics."""
    return reduce_over_ranks(torch.tensor(values, dtype=torch.float64)).tolist()


def check_config(cfg: Any, rules: dict[str, tuple]) -> None:
    """Validate numeric hyperparameters: ``rules[name] = (low, high)`` inclusive, None = open."""
    for name, (lo, hi) in rules.items():
        v = getattr(cfg, name)
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            rng = f"[{lo if lo is not None else '-inf'}, {hi if hi is not None else 'inf'}]"
            raise ValueError(f"{name}={v!r} is out of range; allowed: {rng}")


def check_choice(cfg: Any, rules: dict[str, tuple[str, ...]]) -> None:
    """Validate string options: ``rules[name] = (allowed, ...)``."""
    for name, allowed in rules.items():
        v = getattr(cfg, name)
        if v not in allowed:
            raise ValueError(f"{name}={v!r} is not an option; allowed: {', '.join(allowed)}")
