"""The annotation files ship inside the package: every original is there (compressed or not) with the
digest SOURCES.md and SHA256SUMS record, readers get the released bytes, and a lab's own folder
(``GROUNDING_ANNOTATIONS``) overrides the packaged one."""

from __future__ import annotations

import gzip
import hashlib
import json

import pytest

from grounding.data import annotations
from grounding.data.benchmarks import charades, youcook2
from grounding.data.cli import main as data_cli


def test_default_folder_is_the_packaged_one(monkeypatch):
    monkeypatch.delenv("GROUNDING_ANNOTATIONS", raising=False)
    assert annotations.annotations_dir() == annotations.PACKAGED
    assert annotations.PACKAGED.parent.name == "data" and annotations.PACKAGED.parent.parent.name == "grounding"


def test_every_packaged_file_matches_its_recorded_original_digest():
    sums = annotations.packaged_sums()
    assert len(sums) >= 20
    sources = (annotations.PACKAGED / "SOURCES.md").read_text()
    for rel, digest in sums.items():
        assert hashlib.sha256(annotations.read_bytes(annotations.PACKAGED / rel)).hexdigest() == digest, rel
        stored = annotations.resolve(annotations.PACKAGED / rel)
        assert stored.name in (rel.rsplit("/", 1)[-1], rel.rsplit("/", 1)[-1] + ".gz")
        if rel.endswith((".json", ".pkl")):  # stored compressed, deterministically (mtime 0)
            assert stored.suffix == ".gz" and gzip.decompress(stored.read_bytes())[:1] in (b"{", b"[", b"\x80", b"(")
            assert stored.read_bytes()[4:8] == b"\0\0\0\0"
        assert f"`{stored.relative_to(annotations.PACKAGED)}`" in sources and digest[:16] in sources, rel
    # nothing packaged that is not recorded
    stored = {p.relative_to(annotations.PACKAGED).as_posix().removesuffix(".gz")
              for p in annotations.PACKAGED.rglob("*") if p.is_file() and p.suffix != ".py"
              and "__pycache__" not in p.parts and p.name not in ("SHA256SUMS", "SOURCES.md")}
    assert stored == set(sums)


def test_plain_and_compressed_folders_read_and_digest_the_same(tmp_path, monkeypatch):
    plain = annotations.materialize(tmp_path / "plain")
    rel = "charades_cd/charades_val.json"
    assert (plain / rel).is_file() and not (plain / (rel + ".gz")).exists()
    assert annotations.read_text(plain / rel) == annotations.read_text(annotations.PACKAGED / rel)
    assert annotations.file_digest(plain / rel) == annotations.file_digest(annotations.PACKAGED / rel)
    # the generators' loaders give the same annotations and digests from either folder
    a, b = youcook2.YC2Annotations.load(plain / "youcook2_bb" / "causal_repo"), youcook2.YC2Annotations.load()
    assert a.digests == b.digests and a.sentences == b.sentences and a.names == b.names
    assert b.digests["train_dict.json"] == "50f9f991d7d8fcdb"  # the released file's, as in the manifests
    monkeypatch.setenv("GROUNDING_ANNOTATIONS", str(plain))
    assert annotations.annotations_dir() == plain
    assert charades.CharadesAnnotations.load().digests == charades.CharadesAnnotations.load(annotations.PACKAGED).digests


def test_a_missing_override_folder_is_named(monkeypatch, tmp_path):
    monkeypatch.setenv("GROUNDING_ANNOTATIONS", str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="GROUNDING_ANNOTATIONS=.*nope: not a folder"):
        annotations.annotations_dir()
    with pytest.raises(FileNotFoundError, match="not found"):
        annotations.read_text(tmp_path / "absent.json")


def test_the_data_cli_writes_plain_copies(tmp_path, capsys):
    assert data_cli(["annotations", str(tmp_path / "ann")]) == 0
    out = capsys.readouterr().out
    assert f"wrote {len(annotations.packaged_sums())} annotation files" in out
    got = {p.relative_to(tmp_path / "ann").as_posix() for p in (tmp_path / "ann").rglob("*") if p.is_file()}
    assert got == set(annotations.packaged_sums())
    assert json.loads((tmp_path / "ann" / "vidstg" / "val_annotations.json").read_text())[0]["vid"]
    assert data_cli(["annotations", str(tmp_path / "ann")]) == 2  # not into a non-empty folder
    assert "not empty" in capsys.readouterr().err
