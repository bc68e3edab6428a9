"""Generated benchmarks by name, and "generate on first use, reuse after a manifest check".

Each benchmark has a frozen config dataclass (every field a documented knob), a ``generate(root,
cfg, overwrite=...)`` function and the task family it produces; the generators are the modules of
this package (:mod:`.youcook2`, :mod:`.charades`, :mod:`.vidstg`; :mod:`.planting` is shared by
them), apart from the shard format they write (:mod:`grounding.data.shards`).
"""

from __future__ import annotations

import dataclasses
import importlib
import os
from pathlib import Path
from typing import Any, Callable

from ... import __version__
from .. import locking, storage
from ..manifest import DataError
from ..shards import Dataset


@dataclasses.dataclass(frozen=True)
class Benchmark:
    name: str
    task: str
    module: str  # grounding.data.benchmarks.<module> defines the config class, generate() and PRODUCER
    config_class: str
    # Overrides that make a tiny, fast instance (tests and ``smoke=true`` sweeps).
    smoke: dict = dataclasses.field(default_factory=dict)

    def _module(self):
        return importlib.import_module(f"{__name__}.{self.module}")

    def config_type(self) -> type:
        return getattr(self._module(), self.config_class)

    def generator(self) -> Callable:
        return self._module().generate

    def config(self, **overrides: Any):
        return self.config_type()(**overrides)

    def producer(self) -> str:
        """The producer name the generator records in its manifests (part of the data digest, so it
        stays what it was when the generators lived in ``grounding.data`` itself)."""
        return self._module().PRODUCER


BENCHMARKS: dict[str, Benchmark] = {
    "youcook2": Benchmark("youcook2", "wsvog", "youcook2", "YC2Config",
                          smoke={"limit": 160, "D": 32}),
    "charades": Benchmark("charades", "moment", "charades", "CharadesConfig",
                          smoke={"limit": 48, "L": 32, "D": 32}),
    "vidstg": Benchmark("vidstg", "tube", "vidstg", "VidSTGConfig",
                        smoke={"limit": 80, "T": 16, "N": 8, "Df": 16, "Dr": 16}),
}

# The benchmark a task family's methods train on by default.
DEFAULT_FOR_TASK = {"wsvog": "youcook2", "moment": "charades", "tube": "vidstg"}


def get(name: str) -> Benchmark:
    try:
        return BENCHMARKS[name]
    except KeyError:
        raise KeyError(f"unknown benchmark {name!r}; allowed: {', '.join(BENCHMARKS)}") from None


def ensure(root: str | os.PathLike, name: str, overrides: dict[str, Any] | None = None,
           log: Callable[[str], None] = print) -> Dataset:
    """Open the dataset at ``root``, generating it there first if it does not exist (local roots).

    An existing dataset made by this benchmark's generator is reused only if the manifest records
    the same generator version and arguments; otherwise this raises instead of silently training
    on other data. A dataset made by anything else (a converter of real features) is used as is.
    """
    bench = get(name)
    cfg = bench.config(**(overrides or {}))
    root = str(root)
    fs, path = storage.filesystem(root)
    if not fs.exists(storage.join(path, "manifest.json")):
        if storage.is_remote(root):
            raise DataError(
                f"no dataset at {root}; generate one locally and publish it "
                f"(python -m grounding.data publish LOCAL {root})"
            )
        # one generator per target: the others wait and reuse it; the writer stages in a sibling
        # folder and renames it into place, so only a finished dataset has a manifest
        with locking.exclusive(root, f"generating the {name} benchmark at"):
            if not fs.exists(storage.join(path, "manifest.json")):
                locking.remove_partials(root)
                overwrite = _leftover(Path(root))
                log(f"generating the {name} benchmark at {root} (first use) ...")
                bench.generator()(Path(root), cfg, overwrite=overwrite)
    ds = Dataset.open(root)
    producer = ds.manifest.producer
    if producer.get("name") == bench.producer():
        if producer.get("version") != __version__:
            raise DataError(
                f"{root} holds the {name} benchmark made by generator version {producer.get('version')}, "
                f"this is {__version__}; choose another data.root or remove it"
            )
        want = dataclasses.asdict(cfg)
        have = producer.get("args", {})
        diff = sorted(k for k in set(want) | set(have) if _norm(want.get(k)) != _norm(have.get(k)))
        if diff:
            raise DataError(
                f"{root} holds the {name} benchmark generated with other arguments "
                f"({', '.join(f'{k}={have.get(k)!r} vs {want.get(k)!r}' for k in diff)}); "
                f"choose another data.root or remove it"
            )
    return ds


def _leftover(root: Path) -> bool:
    """Whether ``root`` (no manifest) is what an interrupted write leaves (empty, or only split
    folders of parquet shards): regenerated. Anything else is not ours to remove."""
    if not root.exists():
        return False
    for p in root.iterdir():
        if not p.is_dir() or any(not f.name.endswith(".parquet") for f in p.rglob("*") if f.is_file()):
            raise DataError(f"{root} holds files but no manifest.json ({p.name}); allowed: an empty folder or "
                            f"a dataset; choose another data.root or remove it")
    return True


def _norm(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v
