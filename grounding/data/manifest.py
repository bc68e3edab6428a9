"""``manifest.json``: what a dataset holds and how to check it.

A manifest lists every shard with its split, rows, bytes, row groups and sha256, the side tables
(class or word vocabularies), the task family with its dims, the feature dtype, the schema
version, and the producer with the arguments that made it. Its own digest (:meth:`digest`)
identifies the dataset in MLflow.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

from .schema import READABLE_VERSIONS, SCHEMA_VERSION, TASK_DIMS, TASKS

MANIFEST_NAME = "manifest.json"


class DataError(RuntimeError):
    """A dataset is missing, corrupt or of another schema version. The message names the file."""


@dataclasses.dataclass
class FileEntry:
    path: str  # relative to the dataset root
    rows: int
    bytes: int
    sha256: str
    split: str | None = None  # None for side tables
    row_groups: list[int] = dataclasses.field(default_factory=list)

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        if self.split is None:
            d.pop("split")
            d.pop("row_groups")
        return d


@dataclasses.dataclass
class Manifest:
    task: str
    dims: dict[str, int]
    feature_dtype: str
    shards: list[FileEntry]
    tables: dict[str, FileEntry]
    producer: dict[str, Any]
    schema_version: int = SCHEMA_VERSION
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)
    # contextual text features (schema v2, grounding/data/text_features.py): encoder name, package,
    # version, weights digest, dim, matching counts; None when the shards carry none
    text: dict[str, Any] | None = None

    # ------------------------------------------------------------------ views
    @property
    def splits(self) -> list[str]:
        seen: list[str] = []
        for s in self.shards:
            if s.split not in seen:
                seen.append(s.split)
        return seen

    def split_shards(self, split: str) -> list[FileEntry]:
        shards = [s for s in self.shards if s.split == split]
        if not shards:
            raise DataError(
                f"split {split!r} is not in this dataset; it has: {', '.join(self.splits) or 'none'}"
            )
        return shards

    def split_rows(self, split: str) -> int:
        return sum(s.rows for s in self.split_shards(split))

    # ------------------------------------------------------------- round trip
    def to_json(self) -> dict:
        return {
            "schema_version": self.schema_version,
            "task": self.task,
            "dims": dict(self.dims),
            "feature_dtype": self.feature_dtype,
            "splits": {
                sp: {"rows": self.split_rows(sp), "shards": [s.path for s in self.split_shards(sp)]}
                for sp in self.splits
            },
            "shards": [s.to_json() for s in self.shards],
            "tables": {k: v.to_json() for k, v in self.tables.items()},
            "producer": self.producer,
            "extra": self.extra,
            **({"text": self.text} if self.text else {}),
        }

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2, sort_keys=True)

    def digest(self) -> str:
        return hashlib.sha256(self.dumps().encode()).hexdigest()

    @classmethod
    def loads(cls, text: str, where: str = "manifest.json") -> "Manifest":
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{where}: not valid JSON ({e.msg} at line {e.lineno})") from None
        version = d.get("schema_version")
        if version not in READABLE_VERSIONS:
            raise DataError(
                f"{where}: schema version {version!r} differs from the supported versions "
                f"{', '.join(map(str, READABLE_VERSIONS))}; regenerate or convert the dataset with this release"
            )
        try:
            task = d["task"]
            if task not in TASKS:
                raise DataError(f"{where}: unknown task {task!r}; allowed: {', '.join(TASKS)}")
            dims = {k: int(v) for k, v in d["dims"].items()}
            missing = [k for k in TASK_DIMS[task] if k not in dims]
            if missing:
                raise DataError(f"{where}: dims lack {', '.join(missing)} for task {task}")
            shards = [FileEntry(**s) for s in d["shards"]]
            tables = {k: FileEntry(**v) for k, v in d.get("tables", {}).items()}
            return cls(
                task=task,
                dims=dims,
                feature_dtype=d["feature_dtype"],
                shards=shards,
                tables=tables,
                producer=d.get("producer", {}),
                schema_version=version,
                extra=d.get("extra", {}),
                text=d.get("text") or None,
            )
        except (KeyError, TypeError) as e:
            raise DataError(f"{where}: malformed manifest ({type(e).__name__}: {e})") from None
