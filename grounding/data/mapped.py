"""Node-local mapped form of a split: the task arrays as ``.npy`` files every process maps read-only.

The Parquet shards stay the format of record; this is a cache derived from them. For each
``(manifest digest, split)`` the task family's arrays (``WsvogArrays``, ``MomentArrays``,
``TubeArrays``: features in the dataset's dtype, padded annotations) are written once per node
into ``<cache_dir>/mapped/<digest>/<split>/`` — one ``<field>.npy`` per array, ``strings.json``
for the id lists, and ``meta.json`` (format version, digest, split, rows, and per file its bytes,
sha256, shape and dtype). Every process then opens them with ``np.load(mmap_mode="r")``: the
operating system's page cache holds the features once for all trials on the node, pages are
evicted and refilled when the dataset exceeds memory, and a batch gathers its rows by index and
converts them to float32 only then (the classes' ``batch``).

The whole split is mapped once and each DDP rank takes its rows ``rank_range(n, rank, world)`` as
views (queries of moment/tube datasets follow their videos), so one copy serves every world size
and every rank on a node.

Writing: under :func:`grounding.data.locking.exclusive` on the split's folder, into a staging folder
``.<split>.partial-<id>`` that is renamed into place when every file and the meta are complete
(a killed writer leaves only a partial folder, removed by the next writer). The split's shards
are read one at a time (fetched into the shard cache first where remote), so building needs
memory for one shard, not the split.

Opening (also under the lock): the meta must have this format version, digest and split; every
file its size and ``.npy`` header (shape, dtype); the full sha256 of each file is checked once per
node (remembered with a stamp, as :class:`grounding.data.cache.ShardCache` does for local
shards: the writer stamps what it hashed). Anything else — a truncated, foreign or missing
file — is reported on one stderr line and the split is rebuilt.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import sys
import uuid
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa

from . import locking
from .cache import ShardCache, sha256_file
from .manifest import DataError, FileEntry
from .shards import Dataset, rank_range

FORMAT_VERSION = 1
META = "meta.json"
STRINGS = "strings.json"


@dataclasses.dataclass(frozen=True)
class Layout:
    """Which fields of a task's arrays class index what.

    ``dense``: per-row arrays whose trailing shape the dims fix (streamed shard by shard into the
    file); ``rows``: other per-row arrays (padded to the split's widest row, small);
    ``queries``: per-query arrays (moment/tube: one sample per sentence; ``video_index`` points at
    the row); ``row_strings``/``query_strings``: lists of ids; ``pad``: padding value of a
    ragged field (default 0); ``fixed``: constructor arguments that are not stored (given on open).
    """

    dense: tuple[str, ...]
    rows: tuple[str, ...] = ()
    queries: tuple[str, ...] = ()
    row_strings: tuple[str, ...] = ()
    query_strings: tuple[str, ...] = ()
    pad: dict = dataclasses.field(default_factory=dict)

    @property
    def arrays(self) -> tuple[str, ...]:
        return (*self.dense, *self.rows, *self.queries)


def split_dir(cache: ShardCache, digest: str, split: str) -> Path:
    return cache.dir / "mapped" / digest / split


def open_split(ds: Dataset, split: str, cls: type, layout: Layout,
               from_table: Callable[[pa.Table], Any], rank: int = 0, world: int = 1, **fixed) -> Any:
    """This rank's part of ``split`` as ``cls`` over the node's mapped copy (built if missing or
    invalid). ``from_table`` turns a table of the split's rows into a ``cls`` (the Parquet reader);
    ``fixed`` are the constructor arguments that are not stored (e.g. moment content flags)."""
    n = sum(s.rows for s in ds.manifest.split_shards(split))
    if n == 0:  # nothing to map
        return from_table(ds.read_split(split, rank, world))
    folder = split_dir(ds.cache, ds.digest, split)
    try:
        with locking.exclusive(folder, "mapping"):
            try:
                meta = _check(ds, folder, split)
            except (DataError, OSError, ValueError, KeyError, TypeError) as e:
                if folder.exists():
                    print(f"mapped copy {folder} is not valid ({str(e).splitlines()[0]}); rebuilding",
                          file=sys.stderr, flush=True)
                _build(ds, folder, split, layout, from_table)
                meta = _check(ds, folder, split)
    except OSError as e:  # a read-only or full cache: this process decodes the split itself
        print(f"cannot write the mapped copy of {split} under {ds.cache.dir} ({e}); "
              f"reading it into this process's memory", file=sys.stderr, flush=True)
        return from_table(ds.read_split(split, rank, world))
    whole = _open(folder, meta, cls, layout, fixed)
    return part(whole, layout, rank, world)


# ------------------------------------------------------------------------------------ build
def _build(ds: Dataset, folder: Path, split: str, layout: Layout, from_table) -> None:
    folder.parent.mkdir(parents=True, exist_ok=True)
    locking.remove_partials(folder)
    staging = folder.parent / f".{folder.name}.partial-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        files = _write(ds, staging, split, layout, from_table)
        meta = {"format": FORMAT_VERSION, "digest": ds.digest, "split": split,
                "rows": sum(s.rows for s in ds.manifest.split_shards(split)), "files": files}
        (staging / META).write_text(json.dumps(meta, indent=1, sort_keys=True))
        if folder.exists():  # an invalid copy: out of the way first (open maps of it stay valid)
            stale = folder.parent / f".{folder.name}.partial-{uuid.uuid4().hex[:8]}"
            os.replace(folder, stale)
            shutil.rmtree(stale, ignore_errors=True)
        os.replace(staging, folder)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
        pa.default_memory_pool().release_unused()
    for name, f in files.items():  # the writer hashed them: the node need not hash them again
        ds.cache.stamp(folder / name, f["sha256"])


def _write(ds: Dataset, out: Path, split: str, layout: Layout, from_table) -> dict:
    n = sum(s.rows for s in ds.manifest.split_shards(split))
    dense: dict[str, np.memmap] = {}
    small: dict[str, list[np.ndarray]] = {f: [] for f in (*layout.rows, *layout.queries)}
    strings: dict[str, list] = {f: [] for f in (*layout.row_strings, *layout.query_strings)}
    absent: set[str] = set()
    start = 0
    for table in ds.iter_split(split):
        part_ = from_table(table)
        rows = table.num_rows
        del table
        for f in layout.dense:
            a = getattr(part_, f)
            if a is None:
                absent.add(f)
                continue
            if f not in dense:
                dense[f] = np.lib.format.open_memmap(out / f"{f}.npy", mode="w+", dtype=a.dtype,
                                                     shape=(n, *a.shape[1:]))
            dense[f][start:start + rows] = a
        for f in small:
            a = getattr(part_, f)
            if a is None:
                absent.add(f)
                continue
            if f == "video_index":
                a = a + start
            small[f].append(np.asarray(a))
        for f in strings:
            strings[f].extend(getattr(part_, f))
        start += rows
        del part_
    if start != n:
        raise DataError(f"split {split} read {start} rows, the manifest says {n}")
    for f, m in dense.items():
        m.flush()
    dense.clear()
    for f, parts in small.items():
        if f in absent:
            continue
        width = [max(p.shape[d] for p in parts) for d in range(1, parts[0].ndim)]
        pad = layout.pad.get(f, 0)
        padded = [np.pad(p, [(0, 0)] + [(0, w - s) for w, s in zip(width, p.shape[1:])], constant_values=pad)
                  if list(p.shape[1:]) != width else p for p in parts]
        np.save(out / f"{f}.npy", np.concatenate(padded))
    (out / STRINGS).write_text(json.dumps(strings))
    files = {}
    for p in sorted(out.iterdir()):
        entry = {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
        if p.suffix == ".npy":
            shape, dtype = _header(p)
            entry.update(shape=list(shape), dtype=dtype)
        files[p.name] = entry
    return files


# ------------------------------------------------------------------------------------- open
def _header(path: Path) -> tuple[tuple, str]:
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read(f)
        offset = f.tell()
    if fortran:
        raise ValueError(f"{path.name}: Fortran order")
    if offset + int(np.prod(shape)) * dtype.itemsize != path.stat().st_size:
        raise ValueError(f"{path.name}: {path.stat().st_size} bytes do not hold its header's {dtype} {shape}")
    return tuple(shape), dtype.str


def _check(ds: Dataset, folder: Path, split: str) -> dict:
    """The meta of a valid mapped copy; raises on anything else (sizes, headers, sha256 once per node)."""
    meta = json.loads((folder / META).read_text())
    if meta.get("format") != FORMAT_VERSION:
        raise ValueError(f"format {meta.get('format')}, this code writes {FORMAT_VERSION}")
    if meta.get("digest") != ds.digest or meta.get("split") != split:
        raise ValueError(f"of dataset {str(meta.get('digest'))[:12]} split {meta.get('split')}, "
                         f"not {ds.digest[:12]} {split}")
    on_disk = {p.name for p in folder.iterdir()} - {META}
    if on_disk != set(meta["files"]):
        raise ValueError(f"files {sorted(on_disk ^ set(meta['files']))} differ from the meta")
    for name, f in meta["files"].items():
        path = folder / name
        if name.endswith(".npy"):
            shape, dtype = _header(path)
            if list(shape) != f["shape"] or dtype != f["dtype"]:
                raise ValueError(f"{name} holds {dtype} {shape}, the meta says {f['dtype']} {f['shape']}")
        ds.cache.check_local(str(path), FileEntry(path=name, rows=0, bytes=f["bytes"], sha256=f["sha256"]),
                             str(folder))
    return meta


def _open(folder: Path, meta: dict, cls: type, layout: Layout, fixed: dict) -> Any:
    kwargs: dict[str, Any] = dict(fixed)
    for f in layout.arrays:
        name = f"{f}.npy"
        kwargs[f] = np.load(folder / name, mmap_mode="r") if name in meta["files"] else None
    kwargs.update(json.loads((folder / STRINGS).read_text()))
    return cls(**kwargs)


def part(whole: Any, layout: Layout, rank: int, world: int) -> Any:
    """Rows ``rank_range(n, rank, world)`` of a whole split (views of the maps); the queries of
    those rows where the layout has queries (contiguous: ``video_index`` is sorted)."""
    if world == 1:
        return whole
    rowf = (*layout.dense, *layout.rows)
    n = len(getattr(whole, layout.dense[0]))
    lo, hi = rank_range(n, rank, world)
    out: dict[str, Any] = {}
    for f in rowf:
        a = getattr(whole, f)
        out[f] = None if a is None else a[lo:hi]
    for f in layout.row_strings:
        out[f] = getattr(whole, f)[lo:hi]
    if layout.queries:
        vi = np.asarray(whole.video_index)
        qlo, qhi = (int(x) for x in np.searchsorted(vi, [lo, hi]))
        for f in layout.queries:
            a = getattr(whole, f)
            out[f] = None if a is None else a[qlo:qhi]
        out["video_index"] = np.asarray(out["video_index"]) - lo
        for f in layout.query_strings:
            out[f] = getattr(whole, f)[qlo:qhi]
    return dataclasses.replace(whole, **out)


def digest_of(folder: Path) -> str:
    """A short content id of a mapped copy (its meta's sha256), for logs and tests."""
    return hashlib.sha256((folder / META).read_bytes()).hexdigest()[:16]
