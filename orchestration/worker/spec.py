"""What travels from the driver to a trial: one frozen :class:`TrialSpec`, built once per sweep or
comparison on the driver (:func:`orchestration.driver.trial_spec`) from the parsed command line
and the opened dataset. A comparison's cells are the same spec with their own method, seed and
hyperparameters (:meth:`TrialSpec.cell`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any


@dataclasses.dataclass(frozen=True)
class TrialSpec:
    sweep: str  # the sweep's (or comparison's) name: Ray Train run names, stage manifests
    method: str
    task: str
    data_root: str
    data_digest: str  # the manifest digest the driver opened; a trial refuses other data
    cache_dir: str  # node-local shard cache ("" = the default)
    cache_max_bytes: int
    epochs: int
    seed: int
    fixed: Mapping[str, Any]  # hyperparameters every trial shares (FIXED, pins; a cell: all of them)
    metric: str  # validation metric selected and reported, without the "val/" prefix
    workers: int
    use_trainer: bool  # a Ray Train TorchTrainer per trial (workers > 1 or trainer=always)
    cpus_per_worker: float
    gpus_per_worker: float
    threads: int  # torch threads per worker
    amp: bool  # automatic mixed precision when training on CUDA
    placement: str  # PACK or SPREAD (the Train workers' placement group)
    eval_batch_size: int
    storage_path: str  # Ray's storage: checkpoints and Train runs
    checkpoints_keep: int
    failures: int  # retries of a failed trial or worker from its last checkpoint
    mapped: bool = True  # map the node's mapped copy of each split (grounding.data.mapped); False: decode
    converge_patience: int = 0  # each stage stops once its val curve is flat (grounding.training.Plateau); 0: all epochs
    converge_min_delta: float = 0.005
    shared: Mapping[str, dict] = dataclasses.field(default_factory=dict)  # stage name -> shared stage reference

    @property
    def converge(self) -> tuple[int, float]:
        """(patience, min_delta) of every stage's convergence rule (grounding.training.Plateau)."""
        return self.converge_patience, self.converge_min_delta

    def cell(self, method: str, seed: int, params: Mapping[str, Any], shared: Mapping[str, dict]) -> TrialSpec:
        """A comparison cell: this spec under the cell's method, seed and full configuration."""
        return dataclasses.replace(self, method=method, seed=seed, fixed=dict(params), shared=dict(shared))
