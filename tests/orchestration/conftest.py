"""Fixtures of the orchestration tests (the data fixtures are in tests/conftest.py)."""

from __future__ import annotations

from importlib import import_module
import pytest

from _sweeps import names as _names


@pytest.fixture
def sweep(tmp_path, tmp_path_factory, monkeypatch, capsys):
    """``python -m orchestration.<module> ARGS`` (``module="sweep"``, ``"compare"`` or ``"evaluate"``)
    in this process from an empty folder: seconds per case, where a subprocess pays Python's and
    the framework imports' start. Returns ``(exit code, stderr lines, stdout)``. ``ray.init`` is a
    tripwire and nothing may be written in the working folder."""
    import ray

    for k in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "GROUNDING_DATA_ROOT", "GROUNDING_STORAGE_PATH"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("GROUNDING_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    started = []

    def tripwire(*a, **k):
        started.append(1)
        raise AssertionError("ray.init was called")

    monkeypatch.setattr(ray, "init", tripwire)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)

    def run(*args: str, module: str = "sweep"):
        capsys.readouterr()
        with pytest.raises(SystemExit) as e:
            import_module(f"orchestration.{module}").main(list(args))
        out = capsys.readouterr()
        assert not started, "Ray was started"
        assert _names(cwd) == [], f"written in the working folder: {_names(cwd)}"
        return e.value.code, out.err.strip().splitlines(), out.out

    return run


@pytest.fixture(scope="module")
def ray_address():
    """One local Ray cluster the module's sweeps join (``ray.address=``), as sweeps on a lab's
    cluster do: each sweep then skips starting and stopping a Ray of its own (seconds each). The
    sweep that starts its own local Ray runs in the default suite (test_stages.py)."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
    cluster.wait_for_nodes()
    try:
        yield cluster.address
    finally:
        cluster.shutdown()
