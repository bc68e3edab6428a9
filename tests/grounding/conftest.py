"""Shared fixtures of the grounding core tests: tiny generated datasets, built once per session."""

from __future__ import annotations

import os

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(scope="session", autouse=True)
def _private_shard_cache(tmp_path_factory):
    """Keep shard-verification stamps out of ~/.cache (spawned workers inherit the variable)."""
    old = os.environ.get("GROUNDING_CACHE_DIR")
    os.environ["GROUNDING_CACHE_DIR"] = str(tmp_path_factory.mktemp("shard_cache"))
    yield
    if old is None:
        os.environ.pop("GROUNDING_CACHE_DIR", None)
    else:
        os.environ["GROUNDING_CACHE_DIR"] = old


@pytest.fixture(scope="session")
def yc2_tiny(tmp_path_factory):
    """A tiny YouCook2-BB instance: 32 segments per split, D=16 (single process, ~0.3 s)."""
    from grounding.data import youcook2

    root = tmp_path_factory.mktemp("yc2") / "tiny"
    youcook2.generate(root, youcook2.YC2Config(limit=32, D=16), workers=1)
    return root


@pytest.fixture(scope="session")
def benchmark_root(tmp_path_factory):
    """``benchmark_root(name)``: the named benchmark generated once with its smoke overrides."""
    from grounding.data import benchmarks

    made: dict[str, str] = {}
    base = tmp_path_factory.mktemp("benchmarks")

    def get(name: str) -> str:
        if name not in made:
            root = base / name
            benchmarks.ensure(root, name, dict(benchmarks.get(name).smoke), log=lambda *_: None)
            made[name] = str(root)
        return made[name]

    return get
