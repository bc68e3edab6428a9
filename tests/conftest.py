"""Session-wide fixtures shared by every test package (keep this file to the S3 server only)."""

from __future__ import annotations

import os

import pytest

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
