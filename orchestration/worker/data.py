"""A trial process's data: this rank's share of the dataset, kept for the next trial the process
runs (Tune reuses actors), checked against the digest the driver opened.

With ``spec.mapped`` (the default) the arrays map the node's one copy of each split
(:mod:`grounding.data.mapped`): reopening them for another trial costs a few file checks, and
what a process holds of them is file-backed page cache shared with every trial on the node."""

from __future__ import annotations

import gc

import pyarrow as pa

from grounding import tasks
from grounding.data.cache import ShardCache
from grounding.data.shards import Dataset

from .spec import TrialSpec

# One process keeps the data it loaded for the next trial it runs (actors are reused).
_DATA: dict[tuple, tasks.TaskData] = {}


def load_data(spec: TrialSpec, rank: int, world: int, splits: tuple | None = None) -> tasks.TaskData:
    """This rank's share of the dataset (``splits``: a subset, e.g. the test splits only)."""
    key = (spec.data_root, spec.data_digest, rank, world, splits, spec.seed, spec.mapped)  # DataInfo holds the seed
    if key not in _DATA:
        release()  # keep one dataset per process: the previous one is gone before the next is read
        cache = ShardCache(spec.cache_dir or None, spec.cache_max_bytes)
        ds = Dataset.open(spec.data_root, cache=cache)
        if ds.digest != spec.data_digest:
            raise RuntimeError(f"dataset at {spec.data_root} changed during the sweep "
                               f"(digest {ds.digest[:12]} != {spec.data_digest[:12]})")
        _DATA[key] = tasks.load(ds, **({"splits": splits} if splits else {}), rank=rank, world=world,
                                seed=spec.seed, mapped=spec.mapped)
        pa.default_memory_pool().release_unused()  # decoding buffers back to the system
    return _DATA[key]


def release() -> None:
    """Drop the kept dataset and return its memory (a reused actor must not grow trial by trial)."""
    _DATA.clear()
    gc.collect()
    pa.default_memory_pool().release_unused()
