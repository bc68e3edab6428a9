"""Session-wide fixtures shared by every test package: the S3 server, the data (each generated
benchmark at its smoke size once per session, tiny instances) and a trial spec factory."""

from __future__ import annotations

import os

import pytest
import torch

torch.set_num_threads(1)

_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",  # no instance-metadata lookups for credentials
}


@pytest.fixture(scope="session")
def s3_server():
    """A moto S3 server on 127.0.0.1 (a free port) for the whole session; yields its endpoint URL.

    While it runs, ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` are ``"testing"`` and
    ``AWS_ENDPOINT_URL_S3`` points at the server, so s3fs, ``grounding.data.storage`` and
    subprocesses started with ``os.environ`` reach it with no other configuration
    (``AWS_PROFILE``/``AWS_SESSION_TOKEN`` are unset). The environment is restored afterwards.
    Create a bucket with ``s3fs.S3FileSystem(endpoint_url=url).mkdir(name)`` (no region option:
    moto rejects the LocationConstraint it would send).
    """
    server_mod = pytest.importorskip("moto.server", reason="moto[server] is needed for the S3 tests")
    keys = [*_ENV, "AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_SESSION_TOKEN"]
    saved = {k: os.environ.get(k) for k in keys}
    os.environ.update(_ENV)
    os.environ.pop("AWS_PROFILE", None)
    os.environ.pop("AWS_SESSION_TOKEN", None)
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    os.environ["AWS_ENDPOINT_URL_S3"] = url
    try:
        yield url
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


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
def benchmark_root(tmp_path_factory):
    """``benchmark_root(name)``: the named benchmark generated once per session with its smoke
    overrides (``youcook2``, ``charades``, ``vidstg``, …); every smoke fixture below is one of these."""
    from grounding.data import benchmarks

    made: dict[str, str] = {}
    base = tmp_path_factory.mktemp("benchmarks")

    def get(name: str) -> str:
        if name not in made:
            root = base / f"{name}-smoke"
            benchmarks.ensure(root, name, dict(benchmarks.get(name).smoke), log=lambda *_: None)
            made[name] = str(root)
        return made[name]

    return get


@pytest.fixture(scope="session")
def smoke_root(benchmark_root) -> str:
    """The youcook2 benchmark at its smoke size (the WSVOG default)."""
    return benchmark_root("youcook2")


@pytest.fixture(scope="session")
def smoke_roots(benchmark_root) -> dict[str, str]:
    """Every task family's default benchmark at its smoke size, by task family."""
    from grounding.data import benchmarks

    return {task: benchmark_root(name) for task, name in benchmarks.DEFAULT_FOR_TASK.items()}


@pytest.fixture(scope="session")
def slow_root(tmp_path_factory) -> str:
    """A larger benchmark whose epochs last long enough to interrupt a trial in the middle."""
    from grounding.data import benchmarks

    root = tmp_path_factory.mktemp("data") / "youcook2-800"
    benchmarks.ensure(root, "youcook2", {"limit": 800, "D": 64}, log=lambda m: None)
    return str(root)


@pytest.fixture(scope="session")
def yc2_tiny(tmp_path_factory):
    """A tiny YouCook2-BB instance: 32 segments per split, D=16 (single process, ~0.3 s)."""
    from grounding.data.benchmarks import youcook2

    root = tmp_path_factory.mktemp("yc2") / "tiny"
    youcook2.generate(root, youcook2.YC2Config(limit=32, D=16), workers=1)
    return root


@pytest.fixture(scope="session")
def make_spec():
    """``make_spec(**fields)``: an :class:`orchestration.worker.spec.TrialSpec` for one CPU worker,
    the given fields set (``method``, ``fixed``, ``data_root``, …), the rest at small defaults."""
    from orchestration.worker.spec import TrialSpec

    base = dict(sweep="test", method="stvg", task="wsvog", data_root="", data_digest="", cache_dir="",
                cache_max_bytes=2**30, epochs=2, seed=0, fixed={}, metric="box_micro", workers=1, use_trainer=False,
                cpus_per_worker=1.0, gpus_per_worker=0.0, threads=1, amp=False, placement="PACK",
                eval_batch_size=16, storage_path="", checkpoints_keep=2, failures=0)
    return lambda **fields: TrialSpec(**{**base, **fields})
