"""Fixtures of the orchestration tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def smoke_root(tmp_path_factory) -> str:
    """The youcook2 benchmark at its smoke size, generated once for all sweep tests."""
    from grounding.data import benchmarks

    root = tmp_path_factory.mktemp("data") / "youcook2-smoke"
    benchmarks.ensure(root, "youcook2", benchmarks.get("youcook2").smoke, log=lambda m: None)
    return str(root)
