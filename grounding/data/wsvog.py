"""WSVOG rows as padded numpy arrays, and batches of torch tensors for the models."""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow as pa
import torch


def fixed_list_to_numpy(col: pa.ChunkedArray | pa.Array, shape: tuple[int, ...]) -> np.ndarray:
    """A fixed-size list column as one ``[rows, *shape]`` array (zero-copy where possible)."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    values = col.flatten().to_numpy(zero_copy_only=False)
    return values.reshape((len(col), *shape))


def ragged_to_padded(col: pa.ChunkedArray | pa.Array, inner: int = 1, pad=-1, dtype=None) -> np.ndarray:
    """A list column whose rows hold ``k*inner`` values as ``[rows, k_max, inner]`` (or
    ``[rows, k_max]`` when ``inner == 1``), padded with ``pad``."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    offsets = col.offsets.to_numpy()
    offsets = offsets - offsets[0]
    values = col.flatten().to_numpy(zero_copy_only=False)
    if dtype is not None:
        values = values.astype(dtype)
    lengths = (offsets[1:] - offsets[:-1]) // inner
    n, kmax = len(lengths), int(lengths.max(initial=0))
    out = np.full((n, max(kmax, 1), inner), pad, dtype=values.dtype)
    row = np.repeat(np.arange(n), lengths)
    pos = np.arange(lengths.sum()) - np.repeat(offsets[:-1] // inner, lengths)
    out[row, pos] = values.reshape(-1, inner)
    return out[..., 0] if inner == 1 else out


@dataclasses.dataclass
class WsvogArrays:
    """One split (or one rank's part of it) of a WSVOG dataset."""

    features: np.ndarray  # [n, T, N, D] float16/float32
    proposals: np.ndarray  # [n, T, N, 4] float32 (x1, y1, x2, y2)
    queries: np.ndarray  # [n, Kq] int64, -1 = padding
    gt_class: np.ndarray  # [n, I] int64, -1 = padding
    gt_boxes: np.ndarray  # [n, I, T, 4] float32
    gt_valid: np.ndarray  # [n, I, T] bool
    segment_ids: list[str]
    # schema v2 text columns (None where the dataset has none; grounding/data/text_features.py)
    text_query: np.ndarray | None = None  # [n, Kq, D_text] float16
    text_sentence: np.ndarray | None = None  # [n, D_text] float16
    word_ids: np.ndarray | None = None  # [n, L] int64, -1 = padding
    word_pos: np.ndarray | None = None  # [n, Kq] int64, -1 = not found / padding

    @classmethod
    def from_table(cls, table: pa.Table, T: int, N: int, D: int) -> "WsvogArrays":
        gt_class = ragged_to_padded(table["gt_class"], pad=-1, dtype=np.int64)
        n, I = gt_class.shape
        boxes = ragged_to_padded(table["gt_boxes"], inner=T * 4, pad=0.0).reshape(n, -1, T, 4)
        valid = ragged_to_padded(table["gt_valid"], inner=T, pad=False).astype(bool).reshape(n, -1, T)
        if boxes.shape[1] != I:  # all-empty split
            boxes, valid = np.zeros((n, I, T, 4), np.float32), np.zeros((n, I, T), bool)
        return cls(
            features=fixed_list_to_numpy(table["features"], (T, N, D)),
            proposals=fixed_list_to_numpy(table["proposals"], (T, N, 4)).astype(np.float32, copy=False),
            queries=ragged_to_padded(table["query_classes"], pad=-1, dtype=np.int64),
            gt_class=gt_class,
            gt_boxes=boxes.astype(np.float32, copy=False),
            gt_valid=valid,
            segment_ids=table["segment_id"].to_pylist(),
            **_text_arrays(table),
        )

    def __len__(self) -> int:
        return len(self.features)

    @property
    def dims(self) -> tuple[int, int, int]:
        _, T, N, D = self.features.shape
        return T, N, D

    def batch(self, idx: np.ndarray, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        """Tensors for rows ``idx``; list columns trimmed to the batch's own maximum length."""
        idx = np.asarray(idx)
        q = self.queries[idx]
        kq = max(1, int((q >= 0).sum(1).max(initial=1)))
        g = self.gt_class[idx]
        ki = max(1, int((g >= 0).sum(1).max(initial=1)))
        dev = torch.device(device)
        text = {}
        if self.text_query is not None:
            text["text_query"] = torch.from_numpy(self.text_query[idx][:, :kq]).to(dev, torch.float32)
            text["text_sentence"] = torch.from_numpy(self.text_sentence[idx]).to(dev, torch.float32)
        if self.word_ids is not None:
            w = self.word_ids[idx]
            kw = max(1, int((w >= 0).sum(1).max(initial=1)))
            text["word_ids"] = torch.from_numpy(w[:, :kw]).to(dev)
            text["word_pos"] = torch.from_numpy(self.word_pos[idx][:, :kq]).to(dev)
        return {
            **text,
            "features": torch.from_numpy(self.features[idx]).to(dev, torch.float32),
            "proposals": torch.from_numpy(self.proposals[idx]).to(dev),
            "queries": torch.from_numpy(q[:, :kq]).to(dev),
            "gt_class": torch.from_numpy(g[:, :ki]).to(dev),
            "gt_boxes": torch.from_numpy(self.gt_boxes[idx][:, :ki]).to(dev),
            "gt_valid": torch.from_numpy(self.gt_valid[idx][:, :ki]).to(dev),
        }


def _text_arrays(table: pa.Table) -> dict:
    if "text_query" not in table.column_names:
        return {}
    D = table.schema.field("text_sentence").type.list_size
    n = table.num_rows
    kq = ragged_to_padded(table["query_classes"], pad=-1).reshape(n, -1).shape[1]
    tq = ragged_to_padded(table["text_query"], inner=D, pad=0.0) if n else np.zeros((0, 1, D), np.float16)
    if tq.shape[1] < kq:  # rows without queries leave the width short
        tq = np.concatenate([tq, np.zeros((n, kq - tq.shape[1], D), tq.dtype)], 1)
    pos = ragged_to_padded(table["query_word_pos"], pad=-1, dtype=np.int64).reshape(n, -1)
    if pos.shape[1] < kq:
        pos = np.concatenate([pos, np.full((n, kq - pos.shape[1]), -1, np.int64)], 1)
    return {
        "text_query": tq.reshape(n, -1, D),
        "text_sentence": fixed_list_to_numpy(table["text_sentence"], (D,)),
        "word_ids": ragged_to_padded(table["word_ids"], pad=-1, dtype=np.int64).reshape(n, -1),
        "word_pos": pos,
    }
