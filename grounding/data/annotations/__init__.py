"""The real annotation files the generated benchmarks, the text features and the converters' tests
read, shipped with the package (``SOURCES.md`` beside this file gives their provenance and licences).

JSON and pickle files are stored gzip-compressed (``name.json.gz``); ``SHA256SUMS`` holds the sha256
of each *original* file. Readers go through :func:`read_bytes` / :func:`read_text` /
:func:`file_digest`, which accept either form, so a lab's own uncompressed copies (``$GROUNDING_ANNOTATIONS``)
and the packaged compressed ones give the same bytes and the same digests (the manifests'
``producer.annotations``).
"""

from __future__ import annotations

import gzip
import hashlib
import os
from pathlib import Path

PACKAGED = Path(__file__).resolve().parent
REPO_ROOT = PACKAGED.parents[2]  # the checkout (meaningful for an editable install: git provenance)


def annotations_dir() -> Path:
    """``$GROUNDING_ANNOTATIONS`` if set (a lab's own copies, same layout), else the packaged folder."""
    env = os.environ.get("GROUNDING_ANNOTATIONS")
    if not env:
        return PACKAGED
    path = Path(env)
    if not path.is_dir():
        raise FileNotFoundError(
            f"GROUNDING_ANNOTATIONS={env}: not a folder; point it at a folder laid out like "
            f"{PACKAGED} (youcook2_bb/, charades_sta/, charades_cd/, vidstg/) or unset it to use the packaged files"
        )
    return path


def resolve(path: str | os.PathLike) -> Path:
    """``path`` itself if it exists, else its ``.gz`` sibling; FileNotFoundError naming both."""
    path = Path(path)
    if path.exists():
        return path
    gz = path.with_name(path.name + ".gz")
    if gz.exists():
        return gz
    raise FileNotFoundError(f"annotation file {path} not found (nor {gz.name})")


def read_bytes(path: str | os.PathLike) -> bytes:
    """The original bytes of an annotation file, stored plain or as ``<name>.gz``."""
    p = resolve(path)
    data = p.read_bytes()
    return gzip.decompress(data) if p != Path(path) else data


def read_text(path: str | os.PathLike) -> str:
    return read_bytes(path).decode("utf-8")


def sha256(path: str | os.PathLike) -> str:
    """Full sha256 of the original (decompressed) file."""
    return hashlib.sha256(read_bytes(path)).hexdigest()


def file_digest(path: str | os.PathLike) -> str:
    """First 16 hex digits of :func:`sha256` (what manifests record under ``producer.annotations``)."""
    return sha256(path)[:16]


def packaged_sums() -> dict[str, str]:
    """``relative path -> sha256`` of the originals, from ``SHA256SUMS``."""
    out = {}
    for line in (PACKAGED / "SHA256SUMS").read_text().splitlines():
        if line.strip():
            digest, rel = line.split(maxsplit=1)
            out[rel.strip()] = digest
    return out


def materialize(dest: str | os.PathLike, folder: str | os.PathLike | None = None) -> Path:
    """Write plain (decompressed) copies of every annotation file of ``folder`` (default
    :func:`annotations_dir`) under ``dest``, in the same layout, for tools that take file paths
    (the converters). Returns ``dest``."""
    src, dest = Path(folder or annotations_dir()), Path(dest)
    for p in sorted(src.rglob("*")):
        if not p.is_file() or p.suffix == ".py" or p.name in ("SHA256SUMS", "SOURCES.md") or "__pycache__" in p.parts:
            continue
        rel = p.relative_to(src)
        if p.suffix == ".gz":
            rel = rel.with_name(rel.name[:-3])
        out = dest / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(read_bytes(src / rel))
    return dest
