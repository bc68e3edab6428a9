"""Moment-localisation rows as numpy arrays, and batches of torch tensors for the models.

A moment dataset stores one row per video (its ``L`` clip features once) with all of the video's
queries (see :func:`grounding.data.schema.moment_schema`). :class:`MomentArrays` keeps the
features per video and expands the queries into samples that point at their video, so a batch of
queries gathers its videos' features without the split ever holding a copy per query.

Also here, shared by the generator and the loaders: the tokeniser that maps sentences onto the
GloVe vocabulary, and the stop-word list that separates content words (nouns, verbs, adjectives,
adverbs: what a clip can show) from function words.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pyarrow as pa
import torch

from .wsvog import fixed_list_to_numpy

PAD_ID = 0  # row 0 of the GloVe table is ``<PAD>`` (zeros)
UNK_WORD = "<UNK>"

# Function words: never planted into clips, and masked with the lower weight by the
# reconstruction methods. Subjects present throughout a Charades video ("person", pronouns) and
# verb particles ("up", "down", "off") are listed too: they carry no moment-specific content.
STOPWORDS = frozenset("""
a an the this that these those some any another other each every all both such
i me my mine myself you your yours yourself he him his himself she her hers herself it its itself
we us our ours they them their theirs themselves someone somebody something one ones
person persons people
is are was were be been being am do does did doing done has have having had
can could will would shall should may might must 's 're 'm 'll 've 'd n't not no
and or but so as than because if when where while then also again still just very too
in on at to from of with into onto off out up down over under by for about through around
across near behind towards toward after before along against between inside outside upon
within without onto there here
""".split())

_CONTRACTIONS = (
    (re.compile(r"n't\b"), " n't"),
    (re.compile(r"'(s|re|m|ll|ve|d)\b"), r" '\1"),
)
_TOKEN = re.compile(r"n't|'[a-z]+|[a-z0-9]+(?:[-/][a-z0-9]+)*|[^\sa-z0-9]")
_PIECES = re.compile(r"[a-z0-9]+|[-/]")


def tokenize(sentence: str, vocab: dict[str, int] | None = None) -> list[str]:
    """Lower-cased tokens in the style of the GloVe vocabulary (Penn-Treebank-like).

    Contractions are split (``doesn't`` -> ``does n't``, ``person's`` -> ``person 's``),
    punctuation marks are tokens of their own, and a hyphenated or slashed word
    (``walk-in``, ``he/she``) stays whole when ``vocab`` knows it and is split into its parts
    and separators otherwise.
    """
    s = sentence.lower().strip()
    for pattern, repl in _CONTRACTIONS:
        s = pattern.sub(repl, s)
    out: list[str] = []
    for tok in _TOKEN.findall(s):
        if vocab is not None and ("-" in tok or "/" in tok) and tok not in vocab:
            out.extend(_PIECES.findall(tok))
        else:
            out.append(tok)
    return out


def is_content(word: str) -> bool:
    """A content word: alphabetic (hyphens allowed) and not a stop word."""
    return bool(re.fullmatch(r"[a-z]+(?:-[a-z]+)*", word)) and word not in STOPWORDS


def content_flags(words: list[str]) -> np.ndarray:
    """``[V]`` bool: which vocabulary entries are content words."""
    return np.array([is_content(w) for w in words], dtype=bool)


def _ragged_2d(col: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Flatten a ``list<list<int>>`` column: per-query word lists padded to ``[Q, W]`` with PAD,
    and the number of queries per row."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    per_row = np.diff(col.offsets.to_numpy())
    inner = col.flatten()  # list<int32>, one entry per query
    lengths = np.diff(inner.offsets.to_numpy())
    values = inner.flatten().to_numpy(zero_copy_only=False).astype(np.int64)
    q, w = len(lengths), int(lengths.max(initial=0))
    out = np.full((q, max(w, 1)), PAD_ID, np.int64)
    row = np.repeat(np.arange(q), lengths)
    starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
    out[row, np.arange(len(values)) - starts] = values
    return out, per_row


@dataclasses.dataclass
class MomentArrays:
    """One split (or one rank's part of it) of a moment dataset, one sample per query."""

    features: np.ndarray  # [videos, L, D] float16/float32, each video once
    video_index: np.ndarray  # [Q] int64: the video (row of ``features``) of each query
    words: np.ndarray  # [Q, W] int64 word ids, PAD_ID after the sentence
    lengths: np.ndarray  # [Q] int64 number of words
    moments: np.ndarray  # [Q, 2] float32 (start, end) / duration, clipped to [0, 1]
    duration: np.ndarray  # [Q] float32 seconds
    sample_ids: list[str]
    video_ids: list[str]  # [videos]
    content: np.ndarray | None = None  # [V] bool content-word flags (masking weights); optional

    @classmethod
    def from_table(cls, table: pa.Table, L: int, D: int, content: np.ndarray | None = None) -> "MomentArrays":
        """Expand per-video rows into per-query samples (features are not duplicated)."""
        if table.num_rows:
            feats = fixed_list_to_numpy(table["features"], (L, D))
            words, per_row = _ragged_2d(table["word_ids"])
        else:
            feats = np.zeros((0, L, D), np.float32)
            words, per_row = np.zeros((0, 1), np.int64), np.zeros(0, np.int64)
        video_index = np.repeat(np.arange(table.num_rows), per_row).astype(np.int64)
        duration = table["duration"].to_numpy().astype(np.float32)
        mcol = table["moments"].combine_chunks() if table.num_rows else None
        raw = (mcol.flatten().flatten().to_numpy(zero_copy_only=False).reshape(-1, 2).astype(np.float32)
               if mcol is not None else np.zeros((0, 2), np.float32))
        qdur = duration[video_index]
        moments = np.clip(raw / np.maximum(qdur[:, None], 1e-6), 0.0, 1.0).astype(np.float32)
        sample_ids = [s for row in table["sample_ids"].to_pylist() for s in row]
        return cls(
            features=feats,
            video_index=video_index,
            words=words,
            lengths=(words != PAD_ID).sum(1).astype(np.int64),
            moments=moments,
            duration=qdur.astype(np.float32),
            sample_ids=sample_ids,
            video_ids=table["video_id"].to_pylist(),
            content=None if content is None else np.asarray(content, bool),
        )

    def __len__(self) -> int:
        return len(self.video_index)

    @property
    def num_videos(self) -> int:
        return len(self.features)

    def batch(self, idx: np.ndarray, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        """Tensors for queries ``idx``; word columns trimmed to the batch's longest sentence.

        ``features [B, L, D]`` float32, ``words [B, W]`` int64 (PAD_ID = 0 after the sentence),
        ``word_mask [B, W]`` bool, ``mask_weight [B, W]`` float32 (2 for content words, 1 for
        the others, 0 on padding; all 1 when no content flags are known), ``moments [B, 2]``
        (start, end) normalised by ``duration [B]`` (seconds), ``video [B]`` row index of the
        video within this split part.
        """
        idx = np.asarray(idx, dtype=np.int64)
        n = self.lengths[idx]
        w = max(1, int(n.max(initial=1)))
        words = self.words[idx, :w]
        mask = np.arange(w)[None, :] < n[:, None]
        if self.content is not None:
            weight = np.where(self.content[words], 2.0, 1.0)
        else:
            weight = np.ones(words.shape)
        weight = (weight * mask).astype(np.float32)
        dev = torch.device(device)
        vids = self.video_index[idx]
        return {
            "features": torch.from_numpy(self.features[vids]).to(dev, torch.float32),
            "words": torch.from_numpy(words).to(dev),
            "word_mask": torch.from_numpy(mask).to(dev),
            "mask_weight": torch.from_numpy(weight).to(dev),
            "moments": torch.from_numpy(self.moments[idx]).to(dev),
            "duration": torch.from_numpy(self.duration[idx]).to(dev),
            "video": torch.from_numpy(vids).to(dev),
        }
