"""One code path for local folders and object stores (``s3://…`` and any other fsspec URL).

Credentials and endpoints come from the usual AWS variables (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_PROFILE``, ``AWS_ENDPOINT_URL_S3`` /
``AWS_ENDPOINT_URL``) or from explicit ``storage_options``. Nothing here logs or stores them;
:func:`redact` strips them from anything that is about to be recorded.
"""

from __future__ import annotations

import json
import os
from typing import Any

import fsspec
from fsspec.core import url_to_fs

SECRET_KEYS = {"key", "secret", "token", "aws_access_key_id", "aws_secret_access_key",
               "aws_session_token", "password", "client_kwargs", "profile"}


def is_remote(url: str) -> bool:
    return "://" in str(url) and not str(url).startswith("file://")


def _s3_defaults() -> dict[str, Any]:
    opts: dict[str, Any] = {}
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        opts["endpoint_url"] = endpoint
    return opts


def filesystem(url: str, storage_options: dict | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """Return ``(fs, path)`` for a local path or URL; S3 picks up the standard AWS variables."""
    url = str(url)
    opts = dict(storage_options or {})
    if url.startswith(("s3://", "s3a://")):
        opts = {**_s3_defaults(), **opts}
    fs, path = url_to_fs(url, **opts)
    return fs, path


def join(root: str, *parts: str) -> str:
    root = str(root).rstrip("/")
    return "/".join([root, *[p.strip("/") for p in parts if p]])


def read_json(url: str, missing: Any = None) -> Any:
    """The JSON document at ``url`` (a local path or an fsspec URL), or ``missing`` where there is
    no file."""
    fs, path = filesystem(url)
    if not fs.exists(path):
        return missing
    with fs.open(path, "rb") as f:
        return json.loads(f.read().decode())


def redact(options: dict | None) -> dict:
    """Drop credential-bearing keys from storage options before logging them."""
    return {k: v for k, v in (options or {}).items() if k.lower() not in SECRET_KEYS}
