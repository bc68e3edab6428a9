"""Where the real annotation files live (``../shared/data`` beside the checkout by default)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def annotations_dir() -> Path:
    """``$GROUNDING_ANNOTATIONS`` if set, else ``<checkout>/../shared/data``."""
    env = os.environ.get("GROUNDING_ANNOTATIONS")
    path = Path(env) if env else REPO_ROOT.parent / "shared" / "data"
    if not path.is_dir():
        raise FileNotFoundError(
            f"annotation folder {path} not found; set GROUNDING_ANNOTATIONS to the folder that "
            f"holds youcook2_bb/ and charades_cd/ (see ../shared/data/SOURCES.md)"
        )
    return path


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]
