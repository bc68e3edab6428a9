"""Helpers of the data-layer tests (test_s3, test_integrity, test_cache, test_data_cli, the converters)."""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def new_bucket(endpoint: str) -> str:
    """A fresh bucket on the moto server (isolates tests from each other)."""
    import s3fs

    name = f"t-{uuid.uuid4().hex[:12]}"
    s3fs.S3FileSystem(endpoint_url=endpoint).mkdir(name)
    return name


def s3fs_for(endpoint: str):
    import s3fs

    fs = s3fs.S3FileSystem(endpoint_url=endpoint)
    fs.invalidate_cache()
    return fs


def reshard(src, dest, rows_per_shard: int, row_group_rows: int, splits=None):
    """Copy a local dataset into more, smaller shards (several shards and row groups per split)."""
    from grounding.data.shards import Dataset, DatasetWriter

    ds = Dataset.open(str(src))
    m = ds.manifest
    with DatasetWriter(dest, m.task, m.dims, m.feature_dtype, m.producer, rows_per_shard=rows_per_shard,
                       row_group_rows=row_group_rows, overwrite=True, extra=m.extra) as w:
        for name in m.tables:
            w.add_table(name, ds.read_table(name))
        for sp in splits or m.splits:
            w.write(sp, ds.read_split(sp))
    return Dataset.open(str(dest))


def cli(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """``python -m grounding.data ARGS`` in this process (``grounding.data.cli.main``, stdout and
    stderr captured, ``env`` set for the call and restored): what the command prints and returns,
    without a Python start per call. :func:`cli_process` runs the real entry point."""
    import contextlib
    import io

    from grounding.data.cli import main

    saved = {k: os.environ.get(k) for k in (env or {})}
    out, err = io.StringIO(), io.StringIO()
    os.environ.update(env or {})
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(list(args))
            except SystemExit as e:  # argparse: usage errors (2) and --help (0)
                code = e.code if isinstance(e.code, int) else 1
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return subprocess.CompletedProcess(["grounding.data", *args], code, out.getvalue(), err.getvalue())


def cli_process(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``python -m grounding.data ARGS`` in a subprocess (environment: ours + ``env``)."""
    full = dict(os.environ)
    full.update(env or {})
    full["PYTHONPATH"] = str(REPO) + os.pathsep + full.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-m", "grounding.data", *args], capture_output=True, text=True,
                          env=full, cwd=str(REPO), timeout=timeout)


@functools.lru_cache(maxsize=None)
def plain_annotations() -> Path:
    """Plain copies of the packaged annotation files (the converters take file paths, as a lab's
    released files are), written once per test process and removed at exit."""
    from grounding.data import annotations

    dest = Path(tempfile.mkdtemp(prefix="grounding-annotations-"))
    atexit.register(shutil.rmtree, dest, ignore_errors=True)
    return annotations.materialize(dest)
