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


@pytest.fixture(scope="session")
def slow_root(tmp_path_factory) -> str:
    """A larger benchmark whose epochs last long enough to interrupt a trial in the middle."""
    from grounding.data import benchmarks

    root = tmp_path_factory.mktemp("data") / "youcook2-800"
    benchmarks.ensure(root, "youcook2", {"limit": 800, "D": 64}, log=lambda m: None)
    return str(root)


@pytest.fixture(scope="session")
def smoke_roots(tmp_path_factory, smoke_root) -> dict[str, str]:
    """Every generated benchmark at its smoke size, by task family."""
    from grounding.data import benchmarks

    roots = {"wsvog": smoke_root}
    for task, name in benchmarks.DEFAULT_FOR_TASK.items():
        if task not in roots:
            root = tmp_path_factory.mktemp("data") / f"{name}-smoke"
            benchmarks.ensure(root, name, benchmarks.get(name).smoke, log=lambda m: None)
            roots[task] = str(root)
    return roots
