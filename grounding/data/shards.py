"""Write and read datasets of Parquet shards with a manifest, locally or in an object store.

Writing always happens into a local staging folder that is renamed into place only when every
shard and the manifest are complete, so a failed run leaves nothing half-written. Reading checks
every shard it touches against the manifest (presence, size, sha256, Parquet footer) before any
row is returned; remote shards are fetched once per node into a checksum-addressed cache.
"""

from __future__ import annotations

import os
import shutil
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from . import storage
from .cache import ShardCache, sha256_file
from .manifest import MANIFEST_NAME, DataError, FileEntry, Manifest
from .schema import schema_for

# Columns holding dense tensors: stored uncompressed (features do not compress) and without
# dictionary encoding or statistics, so they decode at memory speed.
DENSE_COLUMNS = ("features", "proposals", "tube", "tube_valid", "word_vector", "frame_features",
                 "region_features")


def _write_options(schema: pa.Schema) -> dict:
    names = schema.names
    return dict(
        compression={n: ("none" if n in DENSE_COLUMNS else "zstd") for n in names},
        use_dictionary=[n for n in names if n not in DENSE_COLUMNS],
        write_statistics=[n for n in names if n not in DENSE_COLUMNS],
    )


def _row_bytes(schema: pa.Schema) -> int:
    total = 64
    for f in schema:
        t = f.type
        if pa.types.is_fixed_size_list(t):
            total += t.list_size * max(1, t.value_type.bit_width // 8)
        else:
            total += 16
    return total


class DatasetWriter:
    """Write one dataset: ``with DatasetWriter(root, …) as w: w.write(split, table) …``.

    Shards hold ``rows_per_shard`` rows (default: about ``target_shard_mb`` MB) in row groups of
    ``row_group_rows`` rows (default: about 16 MB). ``root`` must be a local folder; publish a
    finished dataset to an object store with :func:`publish`.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        task: str,
        dims: dict[str, int],
        feature_dtype: str,
        producer: dict,
        rows_per_shard: int | None = None,
        row_group_rows: int | None = None,
        target_shard_mb: float = 128.0,
        overwrite: bool = False,
        extra: dict | None = None,
    ):
        if storage.is_remote(str(root)):
            raise ValueError(
                f"DatasetWriter writes local folders; got {root}. Write locally, then publish"
            )
        self.root = Path(root)
        self.schema = schema_for(task, dims, feature_dtype)
        self.task, self.dims, self.feature_dtype = task, dict(dims), feature_dtype
        self.producer, self.extra = producer, dict(extra or {})
        row = _row_bytes(self.schema)
        self.rows_per_shard = rows_per_shard or max(1, int(target_shard_mb * 2**20 // row))
        self.row_group_rows = row_group_rows or max(1, min(self.rows_per_shard, int(16 * 2**20 // row)))
        self.overwrite = overwrite
        self._buffers: dict[str, list[pa.Table]] = {}
        self._buffered: dict[str, int] = {}
        self._counts: dict[str, int] = {}
        self._shards: list[FileEntry] = []
        self._tables: dict[str, FileEntry] = {}
        self._staging: Path | None = None
        self.text: dict | None = None  # the manifest's text block (schema v2 text columns)

    # --------------------------------------------------------------- context
    def __enter__(self) -> "DatasetWriter":
        if self.root.exists() and not self.overwrite:
            raise FileExistsError(f"{self.root} exists; pass overwrite=True to replace it")
        self.root.parent.mkdir(parents=True, exist_ok=True)
        self._staging = self.root.parent / f".{self.root.name}.partial-{uuid.uuid4().hex[:8]}"
        self._staging.mkdir()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            shutil.rmtree(self._staging, ignore_errors=True)
            return
        self._finish()

    # ----------------------------------------------------------------- write
    def write(self, split: str, table: pa.Table) -> None:
        table = table.select(self.schema.names).cast(self.schema)
        self._buffers.setdefault(split, []).append(table)
        self._buffered[split] = self._buffered.get(split, 0) + table.num_rows
        while self._buffered[split] >= self.rows_per_shard:
            self._flush(split, self.rows_per_shard)

    def add_table(self, name: str, table: pa.Table) -> None:
        path = f"{name}.parquet"
        full = self._staging / path
        pq.write_table(table, full, **_write_options(table.schema))
        self._tables[name] = FileEntry(path=path, rows=table.num_rows, bytes=full.stat().st_size,
                                       sha256=sha256_file(full))

    def _flush(self, split: str, rows: int) -> None:
        table = pa.concat_tables(self._buffers[split])
        head, rest = table.slice(0, rows), table.slice(rows)
        self._buffers[split] = [rest] if rest.num_rows else []
        self._buffered[split] = rest.num_rows
        index = self._counts.get(split, 0)
        self._counts[split] = index + 1
        path = f"{split}/part-{index:05d}.parquet"
        full = self._staging / path
        full.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(head, full, row_group_size=self.row_group_rows, **_write_options(self.schema))
        groups = [self.row_group_rows] * (head.num_rows // self.row_group_rows)
        if head.num_rows % self.row_group_rows:
            groups.append(head.num_rows % self.row_group_rows)
        self._shards.append(FileEntry(path=path, rows=head.num_rows, bytes=full.stat().st_size,
                                      sha256=sha256_file(full), split=split, row_groups=groups))

    def _finish(self) -> None:
        for split, n in list(self._buffered.items()):
            if n:
                self._flush(split, n)
        manifest = Manifest(task=self.task, dims=self.dims, feature_dtype=self.feature_dtype,
                            shards=self._shards, tables=self._tables, producer=self.producer,
                            extra=self.extra, text=self.text)
        (self._staging / MANIFEST_NAME).write_text(manifest.dumps())
        if self.root.exists():
            shutil.rmtree(self.root)
        os.replace(self._staging, self.root)
        self.manifest = manifest


def rank_range(n: int, rank: int, world: int) -> tuple[int, int]:
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} outside world size {world}")
    return rank * n // world, (rank + 1) * n // world


class Dataset:
    """A dataset root (local folder or URL) opened through its manifest."""

    #: shards fetched, verified and decoded concurrently by :meth:`read_split`
    fetch_workers = 4

    def __init__(self, root: str, manifest: Manifest, cache: ShardCache | None,
                 storage_options: dict | None = None):
        self.root = str(root)
        self.manifest = manifest
        self.remote = storage.is_remote(self.root)
        self.fs, self.path = storage.filesystem(self.root, storage_options)
        self.cache = cache or ShardCache()

    @classmethod
    def open(cls, root: str | os.PathLike, cache: ShardCache | None = None,
             storage_options: dict | None = None) -> "Dataset":
        root = str(root)
        fs, path = storage.filesystem(root, storage_options)
        where = storage.join(root, MANIFEST_NAME)
        try:
            with fs.open(storage.join(path, MANIFEST_NAME), "rb") as f:
                text = f.read().decode()
        except FileNotFoundError:
            raise DataError(f"no dataset at {root}: {MANIFEST_NAME} is missing") from None
        return cls(root, Manifest.loads(text, where=where), cache, storage_options)

    @property
    def digest(self) -> str:
        return self.manifest.digest()

    # --------------------------------------------------------------- access
    def local_file(self, entry: FileEntry) -> str:
        """A verified local path for one shard or table (fetched into the cache if remote)."""
        if self.remote:
            return self.cache.fetch(self.fs, storage.join(self.path, entry.path), entry, self.root)
        full = os.path.join(self.path, entry.path)
        self.cache.check_local(full, entry, self.root)
        return full

    def entries(self, splits: Iterable[str] | None = None) -> list[FileEntry]:
        """The side tables and the shards (of ``splits``, or all) the manifest lists."""
        wanted = set(splits) if splits is not None else None
        return [e for e in [*self.manifest.tables.values(), *self.manifest.shards]
                if wanted is None or e.split is None or e.split in wanted]

    def _check_schema(self, entry: FileEntry, got: pa.Schema) -> None:
        want = schema_for(self.manifest.task, self.manifest.dims, self.manifest.feature_dtype)
        if not got.equals(want):
            diff = sorted(set(map(str, want)) ^ set(map(str, got)))
            m = self.manifest
            raise DataError(
                f"shard {self.root.rstrip('/')}/{entry.path} has another schema than the manifest's "
                f"{m.task} {m.dims} {m.feature_dtype} (schema v{m.schema_version}): differs in {'; '.join(diff[:4])}"
            )

    def check(self, entry: FileEntry) -> str:
        """Everything :meth:`local_file` checks (presence, bytes, sha256) plus the Parquet footer:
        row count, row groups and, for shards, the schema. Returns the verified local path."""
        path = self.local_file(entry)
        name = f"{self.root.rstrip('/')}/{entry.path}"
        meta = pq.read_metadata(path)
        if meta.num_rows != entry.rows:
            raise DataError(f"shard {name} holds {meta.num_rows} rows, the manifest says {entry.rows}")
        if entry.split is not None:
            groups = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
            if entry.row_groups and groups != entry.row_groups:
                raise DataError(f"shard {name} has row groups {groups}, the manifest says {entry.row_groups}")
            self._check_schema(entry, meta.schema.to_arrow_schema())
        return path

    def verify(self, splits: Iterable[str] | None = None) -> None:
        """:meth:`check` every side table and shard (of ``splits``); raise on the first problem."""
        for entry in self.entries(splits):
            self.check(entry)

    def read_table(self, name: str) -> pa.Table:
        try:
            entry = self.manifest.tables[name]
        except KeyError:
            raise DataError(f"{self.root}: no table {name!r}; has {', '.join(self.manifest.tables)}") from None
        return pq.read_table(self.local_file(entry))

    def read_split(self, split: str, rank: int = 0, world: int = 1,
                   columns: list[str] | None = None) -> pa.Table:
        """Rows ``[rank*n/world, (rank+1)*n/world)`` of a split, reading only the row groups
        that overlap them. Every shard touched is verified (size, sha256, schema) before its rows
        are decoded, and nothing is returned unless all of them are."""
        shards = self.manifest.split_shards(split)
        n = sum(s.rows for s in shards)
        lo, hi = rank_range(n, rank, world)
        plan = []
        start = 0
        for entry in shards:
            end = start + entry.rows
            if end > lo and start < hi:
                plan.append((entry, max(lo, start) - start, min(hi, end) - start))
            start = end
        schema = schema_for(self.manifest.task, self.manifest.dims, self.manifest.feature_dtype)
        if not plan:
            cols = columns or schema.names
            return schema.empty_table().select(cols)
        return pa.concat_tables(self._read_parts(plan, columns))

    def iter_split(self, split: str) -> Iterator[pa.Table]:
        """The split's rows shard by shard, each shard verified as :meth:`read_split` does; up to
        ``fetch_workers`` shards ahead are fetched (remote) or hashed (local) meanwhile. Holds
        one decoded shard at a time (what the mapped form's writer streams)."""
        shards = self.manifest.split_shards(split)
        if not shards:
            return
        pool = ThreadPoolExecutor(max(1, min(self.fetch_workers, len(shards))))
        try:
            ready = [pool.submit(self.local_file, e) for e in shards]
            for entry, fut in zip(shards, ready):
                fut.result()
                yield self._read_part(entry, 0, entry.rows, None)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _read_parts(self, plan: list[tuple[FileEntry, int, int]], columns: list[str] | None) -> list[pa.Table]:
        """Each shard's rows ``[a, b)``, ``fetch_workers`` shards at a time: fetching and hashing one
        shard overlaps with decoding another. Raises the first failing shard's error (in plan
        order) and returns nothing then."""
        if len(plan) == 1 or self.fetch_workers <= 1:
            return [self._read_part(e, a, b, columns) for e, a, b in plan]
        pool = ThreadPoolExecutor(min(self.fetch_workers, len(plan)))
        try:
            futures = [pool.submit(self._read_part, e, a, b, columns) for e, a, b in plan]
            return [f.result() for f in futures]
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _open_verified(self, entry: FileEntry, tries: int = 3) -> pa.OSFile:
        """The verified shard, open. An open file survives a later cache eviction; a fetch in
        another thread or worker can still unlink it between its check and the open, so a shard
        found missing then is fetched and checked again."""
        for attempt in range(tries):
            try:
                return pa.OSFile(self.local_file(entry))
            except FileNotFoundError:
                if attempt == tries - 1:
                    raise

    def _read_part(self, entry: FileEntry, a: int, b: int, columns: list[str] | None) -> pa.Table:
        """Rows ``[a, b)`` of one verified shard (fetched into the cache first if remote)."""
        with self._open_verified(entry) as src:
            if a == 0 and b == entry.rows:  # the whole shard: pyarrow decodes its row groups in parallel
                t = pq.read_table(src, columns=columns)
                self._check_schema(entry, pq.read_schema(src) if columns else t.schema)
                return t
            pf = pq.ParquetFile(src)
            self._check_schema(entry, pf.schema_arrow)
            groups, g0, offset = [], 0, None
            for gi, g in enumerate(entry.row_groups or [entry.rows]):
                if g0 + g > a and g0 < b:
                    groups.append(gi)
                    offset = g0 if offset is None else offset
                g0 += g
            # One chunk per row group (read_row_groups would first merge them into one buffer):
            # the caller's single concatenation of the split is then the only copy.
            t = pa.concat_tables([pf.read_row_group(gi, columns=columns) for gi in groups])
            return t.slice(a - offset, b - a)


def publish(src: str | os.PathLike, dest: str, storage_options: dict | None = None) -> Manifest:
    """Copy a local dataset to ``dest`` (any fsspec URL), manifest last, verifying the source."""
    src_ds = Dataset.open(str(src))
    src_ds.verify()
    fs, path = storage.filesystem(dest, storage_options)
    if fs.exists(storage.join(path, MANIFEST_NAME)):
        raise FileExistsError(f"{dest} already holds a dataset ({MANIFEST_NAME} exists)")
    fs.makedirs(path, exist_ok=True)
    for entry in [*src_ds.manifest.tables.values(), *src_ds.manifest.shards]:
        fs.put_file(os.path.join(str(src), entry.path), storage.join(path, entry.path))
    fs.put_file(os.path.join(str(src), MANIFEST_NAME), storage.join(path, MANIFEST_NAME))
    return src_ds.manifest


def describe(ds: Dataset) -> str:
    m = ds.manifest
    lines = [
        f"dataset   {ds.root}",
        f"task      {m.task}  dims {m.dims}  features {m.feature_dtype}  schema v{m.schema_version}",
        f"producer  {m.producer.get('name', '?')} {m.producer.get('version', '')}",
        f"digest    {m.digest()[:16]}",
        f"{'split':<10} {'rows':>8} {'shards':>7} {'MB':>10}",
    ]
    for sp in m.splits:
        shards = m.split_shards(sp)
        mb = sum(s.bytes for s in shards) / 2**20
        lines.append(f"{sp:<10} {sum(s.rows for s in shards):>8} {len(shards):>7} {mb:>10.1f}")
    for name, t in m.tables.items():
        lines.append(f"table {name:<10} rows {t.rows}  {t.bytes / 2**10:.1f} KB")
    return "\n".join(lines)
