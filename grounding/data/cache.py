"""Per-node shard cache and integrity checks.

Remote shards are stored under ``<cache_dir>/objects/<sha256>.parquet``: content-addressed, so
every trial and worker on a node shares one copy, and a file only gets its final name after its
size and sha256 matched the manifest (a failed or corrupt download leaves nothing behind). The
per-object download locks live in ``<cache_dir>/locks``.
Local shards are hashed once per (path, size, mtime); the result is remembered under
``<cache_dir>/stamps`` so later processes skip the hash.

``cache_dir`` defaults to ``$GROUNDING_CACHE_DIR`` or ``~/.cache/grounding``; the size bound to
``$GROUNDING_CACHE_MAX_GB`` or 50 GB (least recently used objects are evicted first).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import uuid
from pathlib import Path

from .manifest import DataError, FileEntry

CHUNK = 8 * 2**20
FETCH_BLOCK = 128 * 2**20


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def default_cache_dir() -> Path:
    env = os.environ.get("GROUNDING_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "grounding"


def default_max_bytes() -> int:
    return int(float(os.environ.get("GROUNDING_CACHE_MAX_GB", "50")) * 2**30)


class ShardCache:
    def __init__(self, cache_dir: str | os.PathLike | None = None, max_bytes: int | None = None):
        self.dir = Path(cache_dir) if cache_dir else default_cache_dir()
        self.max_bytes = int(max_bytes) if max_bytes is not None else default_max_bytes()
        self._verified: set[tuple] = set()

    @property
    def objects(self) -> Path:
        return self.dir / "objects"

    # ------------------------------------------------------------ local files
    def check_local(self, path: str, entry: FileEntry, root: str) -> None:
        """Raise :class:`DataError` unless ``path`` is the file the manifest describes."""
        name = f"{root.rstrip('/')}/{entry.path}"
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise DataError(f"shard {name} is missing (listed in the manifest)") from None
        if st.st_size != entry.bytes:
            raise DataError(
                f"shard {name} has {st.st_size} bytes, the manifest says {entry.bytes} "
                f"(truncated or replaced)"
            )
        key = (os.path.abspath(path), st.st_size, st.st_mtime_ns, entry.sha256)
        if key in self._verified:
            return
        stamp = self._stamp_path(key)
        if not stamp.exists():
            digest = sha256_file(path)
            if digest != entry.sha256:
                raise DataError(
                    f"shard {name} fails its checksum: sha256 {digest[:16]}…, "
                    f"the manifest says {entry.sha256[:16]}…"
                )
            self._write_stamp(stamp, entry.sha256)
        self._verified.add(key)

    def _stamp_path(self, key: tuple) -> Path:
        return self.dir / "stamps" / hashlib.sha256(repr(key).encode()).hexdigest()

    def _write_stamp(self, stamp: Path, sha256: str) -> None:
        try:
            stamp.parent.mkdir(parents=True, exist_ok=True)
            stamp.write_text(sha256)
        except OSError:
            pass  # a read-only cache only costs a re-hash next time

    def stamp(self, path: str | os.PathLike, sha256: str) -> None:
        """Remember that ``path`` (as it is now: size, mtime) has this sha256 — for a file this
        process just wrote and hashed, so that :meth:`check_local` skips the hash."""
        st = os.stat(path)
        key = (os.path.abspath(path), st.st_size, st.st_mtime_ns, sha256)
        self._write_stamp(self._stamp_path(key), sha256)
        self._verified.add(key)

    # ----------------------------------------------------------- remote files
    def fetch(self, fs, remote_path: str, entry: FileEntry, root: str) -> str:
        """Return a local verified copy of a remote shard, downloading it at most once per node."""
        self.objects.mkdir(parents=True, exist_ok=True)
        target = self.objects / f"{entry.sha256}.parquet"
        name = f"{root.rstrip('/')}/{entry.path}"
        if self._ready(target, entry):
            return str(target)
        locks = self.dir / "locks"  # beside objects/, so a failed read leaves nothing in objects/
        locks.mkdir(parents=True, exist_ok=True)
        with open(locks / f"{entry.sha256}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one download per node; others wait for it
            try:
                if self._ready(target, entry):
                    return str(target)
                tmp = self.objects / f".{entry.sha256}.{uuid.uuid4().hex[:8]}.tmp"
                try:
                    h, size = hashlib.sha256(), 0
                    try:
                        # one ranged GET per shard up to 128 MB (s3fs reads ahead 50 MB by default)
                        src = fs.open(remote_path, "rb", block_size=max(CHUNK, min(entry.bytes, FETCH_BLOCK)))
                    except FileNotFoundError:
                        raise DataError(f"shard {name} is missing (listed in the manifest)") from None
                    with src, open(tmp, "wb") as out:
                        while chunk := src.read(CHUNK):
                            h.update(chunk)
                            size += len(chunk)
                            out.write(chunk)
                    if size != entry.bytes:
                        raise DataError(
                            f"shard {name} has {size} bytes, the manifest says {entry.bytes} "
                            f"(truncated or replaced)"
                        )
                    if h.hexdigest() != entry.sha256:
                        raise DataError(
                            f"shard {name} fails its checksum: sha256 {h.hexdigest()[:16]}…, "
                            f"the manifest says {entry.sha256[:16]}…"
                        )
                    os.replace(tmp, target)
                finally:
                    if tmp.exists():
                        tmp.unlink()
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
        self._evict(keep=target)
        return str(target)

    def _ready(self, target: Path, entry: FileEntry) -> bool:
        try:
            if target.stat().st_size == entry.bytes:
                os.utime(target)  # mark as recently used
                return True
        except FileNotFoundError:
            pass
        return False

    def _evict(self, keep: Path) -> None:
        files = []
        for p in self.objects.glob("*.parquet"):
            try:
                st = p.stat()
            except FileNotFoundError:
                continue
            files.append((st.st_mtime, st.st_size, p))
        total = sum(s for _, s, _ in files)
        for _, size, p in sorted(files):
            if total <= self.max_bytes:
                break
            if p == keep:
                continue
            try:
                p.unlink()
                total -= size
            except FileNotFoundError:
                pass

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.objects.glob("*.parquet")) if self.objects.exists() else 0

