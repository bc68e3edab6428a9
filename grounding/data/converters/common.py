"""Pieces shared by the converters: input checks, tables in the shard schemas, GloVe, vocabularies.

Every converter validates its inputs before it opens a :class:`~grounding.data.shards.DatasetWriter`
and writes through it, so a bad input or a failure half-way leaves nothing at the destination.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import pyarrow as pa

from ... import __version__
from .. import safe_pickle
from ..moment import tokenize
from ..schema import moment_schema, vocab_schema, wsvog_schema
from ..storage import redact

CHUNK_ROWS = 32  # rows handed to the writer at a time (bounds memory for 4096-d region features)


class ConversionError(ValueError):
    """Bad converter input: a missing file, a wrong shape, an unknown label. Names what is wrong."""


# ----------------------------------------------------------------------------- inputs
MAX_MISSING_FRACTION = 0.05  # default of --max-missing-fraction: the share of a split --skip-missing may drop
MIN_VOCAB_COVERAGE = 0.9  # default of --min-vocab-coverage: share of a split's tokens with a GloVe vector


class MissingInputs:
    """Inputs a converter could not find. Without ``skip`` they are collected and reported together
    (:meth:`raise_if_any`); with it the items that need them are left out and counted, per split
    when :meth:`keep` is told the split, and :meth:`raise_if_any` refuses a split that ends up
    empty or loses more than ``max_fraction`` of its items (:func:`check_loss`)."""

    def __init__(self, skip: bool, max_fraction: float = MAX_MISSING_FRACTION, unit: str = "items"):
        self.skip, self.problems, self.skipped = skip, [], 0
        self.max_fraction, self.unit = max_fraction, unit
        self.total: Counter = Counter()
        self.lost: Counter = Counter()
        self.reasons: dict[str, list[str]] = {}

    def keep(self, problems: list[str], split: str | None = None) -> bool:
        """True if an item has everything it needs; otherwise record its problems (or skip it)."""
        if split is not None:
            self.total[split] += 1
        if not problems:
            return True
        if self.skip:
            self.skipped += 1
            if split is not None:
                self.lost[split] += 1
                self.reasons.setdefault(split, []).extend(problems[:1])
        else:
            self.problems.extend(problems)
        return False

    def raise_if_any(self, what: str = "them") -> None:
        if self.problems:
            more = f" (and {len(self.problems) - 5} more)" if len(self.problems) > 5 else ""
            raise ConversionError(f"missing inputs: {'; '.join(self.problems[:5])}{more}; "
                                  f"pass --skip-missing to leave {what} out")
        check_loss({sp: n - self.lost[sp] for sp, n in self.total.items()}, self.total, self.max_fraction,
                   self.reasons, self.unit)


def check_loss(kept: dict[str, int], total: dict[str, int], max_fraction: float = MAX_MISSING_FRACTION,
               reasons: dict[str, list[str]] | None = None, unit: str = "items") -> None:
    """Refuse a conversion in which a split ends up empty, or loses more than ``max_fraction`` of its
    ``unit`` (left out by --skip-missing, or emptied by clipping): one message naming each such split,
    what it lost, an example of why, and the flag that accepts the loss."""
    bad = []
    for sp, n in total.items():
        k = kept.get(sp, 0)
        lost = n - k
        if n and (k == 0 or lost / n > max_fraction):
            why = (reasons or {}).get(sp) or []
            bad.append(f"{sp}: {lost} of {n} {unit} left out ({lost / n:.0%})"
                       + (f", e.g. {why[0]}" if why else ""))
    if bad:
        empty = any(kept.get(sp, 0) == 0 for sp, n in total.items() if n)
        hint = (" (a split cannot end up empty: supply its inputs, or leave the split out)" if empty else
                f"; pass --max-missing-fraction F (now {max_fraction:g}) to accept a larger loss")
        raise ConversionError(f"too much of the data is missing: {'; '.join(bad)}{hint}")


def check_coverage(coverage: dict[str, tuple[int, int]], source: str, min_coverage: float = MIN_VOCAB_COVERAGE,
                   log=print) -> dict[str, float]:
    """``{split: (tokens with a GloVe vector, tokens)}`` -> the per-split share, logged; a split below
    ``min_coverage`` is an error naming the GloVe file (a wrong or truncated file, another tokenizer)."""
    shares = {sp: (found / n if n else 1.0) for sp, (found, n) in coverage.items()}
    for sp, share in shares.items():
        log(f"{sp}: vocabulary coverage {share:.1%} of {coverage[sp][1]} tokens in {source}")
    low = [f"{sp} {share:.1%}" for sp, share in shares.items() if share < min_coverage]
    if low:
        raise ConversionError(f"vocabulary coverage below {min_coverage:.0%} with the GloVe file {source}: "
                              f"{', '.join(low)} of the tokens have a vector; check the file (or pass "
                              f"--min-vocab-coverage F to accept it)")
    return {sp: round(v, 6) for sp, v in shares.items()}


def val_split_advice(manifest) -> str | None:
    """For a converted dataset with a train split but no val split (Charades-STA and HC-STVG v1
    publish train and test only): how to make it trainable, as CPL does it (it validates on the
    test annotations): ``convert again adding --split val=<the test file> --rename-split
    test=test_iid …``. None when nothing is missing or the dataset was not converted from split files."""
    splits = list(manifest.splits)
    if "train" not in splits or "val" in splits:
        return None
    args = (manifest.producer or {}).get("args") or {}
    files, renames = args.get("split_files") or {}, args.get("renames") or {}
    if not files:
        return None
    test = next((sp for sp in files if sp.startswith("test")), None)
    if test is None:
        return None
    flags = f"--split val={files[test]}"
    if renames.get(test, test) == "test":
        flags += " --rename-split test=test_iid"
    return f"convert again adding {flags} (as CPL does: it validates on the test annotations)"


def no_val_hint(manifest) -> str | None:
    """The converter's note on a dataset without a val split (:func:`val_split_advice`)."""
    advice = val_split_advice(manifest)
    return advice and f"no val split (it has {', '.join(manifest.splits)}); a sweep ranks trials on val: {advice}"


def need_file(path: str | os.PathLike | None, what: str) -> Path:
    if path is None:
        raise ConversionError(f"{what} is required")
    p = Path(path)
    if not p.is_file():
        raise ConversionError(f"{what} {p} does not exist (or is not a file)")
    return p


def need_dir(path: str | os.PathLike | None, what: str) -> Path:
    if path is None:
        raise ConversionError(f"{what} is required")
    p = Path(path)
    if not p.is_dir():
        raise ConversionError(f"{what} {p} does not exist (or is not a folder)")
    return p


def load_json(path: str | os.PathLike, what: str = "annotation file") -> Any:
    p = need_file(path, what)
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise ConversionError(f"{what} {p} is not valid JSON ({e.msg} at line {e.lineno})") from None


def digest16(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()[:16]


def producer(module: str, args: dict, sources: dict[str, str | os.PathLike]) -> dict:
    """The manifest's producer: name, version, arguments (no credentials), source digests."""
    clean = redact({k: (str(v) if isinstance(v, os.PathLike) else v) for k, v in args.items()})
    return {"name": module, "version": __version__, "args": _jsonable(clean),
            "sources": {k: digest16(v) for k, v in sources.items()}}


def _jsonable(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    return str(v)


def parse_size(text: str) -> tuple[int, int]:
    """``"720x405"`` -> ``(720, 405)``."""
    m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", str(text))
    if not m:
        raise ConversionError(f"frame size {text!r} is not WIDTHxHEIGHT (e.g. 720x405)")
    return int(m.group(1)), int(m.group(2))


def rename(split: str, renames: dict[str, str] | None) -> str:
    return (renames or {}).get(split, split)


def chunks(items: list, n: int = CHUNK_ROWS) -> Iterator[list]:
    for i in range(0, len(items), n):
        yield items[i:i + n]


# ----------------------------------------------------------------------- frame choice
def centre_indices(n_frames: int, T: int) -> np.ndarray:
    """``T`` frame indices out of ``n_frames``: the centre frame of ``T`` equal bins
    (``floor((t + 0.5) * n_frames / T)``); frames repeat when ``n_frames < T``."""
    if n_frames < 1:
        raise ValueError("a segment needs at least one frame")
    idx = np.floor((np.arange(T) + 0.5) * n_frames / T).astype(np.int64)
    return np.minimum(idx, n_frames - 1)


def pool_clips(frames: np.ndarray, L: int) -> np.ndarray:
    """``[F, D]`` frame features -> ``[L, D]`` clip features as CPL's ``_sample_frame_features``:
    clip ``j`` is the mean of frames ``round(j*F/L) .. round((j+1)*F/L) - 1`` (the single frame
    ``round(j*F/L)`` when that range is empty, i.e. frames repeat when ``F < L``)."""
    frames = np.asarray(frames, dtype=np.float32)
    F = len(frames)
    if F < 1:
        raise ValueError("a video needs at least one feature frame")
    keep = np.round(np.arange(L + 1) / L * F).astype(np.int64)
    keep[keep >= F] = F - 1
    out = np.empty((L, frames.shape[1]), np.float32)
    for j in range(L):
        s, e = keep[j], keep[j + 1]
        out[j] = frames[s] if s >= e else frames[s:e].mean(axis=0)
    return out


# --------------------------------------------------------------------------- tables
def _fixed(flat: np.ndarray, field: pa.Field) -> pa.Array:
    t = field.type
    return pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1), type=t.value_type), t.list_size)


def np_dtype(feature_dtype: str):
    return np.float16 if feature_dtype == "float16" else np.float32


def wsvog_table(rows: list[dict], T: int, N: int, D: int, feature_dtype: str) -> pa.Table:
    """Rows with ``features [T,N,D]``, ``proposals [T,N,4]``, ``gt_boxes [I,T,4]``,
    ``gt_valid [I,T]``, ``gt_class``/``query_classes`` lists and the string/size columns."""
    schema = wsvog_schema(T, N, D, feature_dtype)
    ft = np_dtype(feature_dtype)
    cols: dict[str, Any] = {
        "segment_id": pa.array([r["segment_id"] for r in rows], pa.string()),
        "video_id": pa.array([r["video_id"] for r in rows], pa.string()),
        "recipe": pa.array([r.get("recipe", "") for r in rows], pa.string()),
        "sentence": pa.array([r["sentence"] for r in rows], pa.string()),
        "query_classes": pa.array([list(map(int, r["query_classes"])) for r in rows], pa.list_(pa.int16())),
        "features": _fixed(np.stack([np.asarray(r["features"], ft) for r in rows]), schema.field("features")),
        "proposals": _fixed(np.stack([np.asarray(r["proposals"], np.float32) for r in rows]),
                            schema.field("proposals")),
        "gt_class": pa.array([list(map(int, r["gt_class"])) for r in rows], pa.list_(pa.int16())),
        "gt_boxes": pa.array([np.asarray(r["gt_boxes"], np.float32).reshape(-1) for r in rows],
                             pa.list_(pa.float32())),
        "gt_valid": pa.array([np.asarray(r["gt_valid"], bool).reshape(-1) for r in rows], pa.list_(pa.bool_())),
        "frame_width": pa.array([r["frame_width"] for r in rows], pa.int16()),
        "frame_height": pa.array([r["frame_height"] for r in rows], pa.int16()),
    }
    return pa.Table.from_arrays([cols[n] for n in schema.names], schema=schema)


def moment_table(rows: list[dict], L: int, D: int, feature_dtype: str) -> pa.Table:
    schema = moment_schema(L, D, feature_dtype)
    ft = np_dtype(feature_dtype)
    cols = {
        "video_id": pa.array([r["video_id"] for r in rows], pa.string()),
        "duration": pa.array([r["duration"] for r in rows], pa.float32()),
        "features": _fixed(np.stack([np.asarray(r["features"], ft) for r in rows]), schema.field("features")),
        "sample_ids": pa.array([r["sample_ids"] for r in rows], pa.list_(pa.string())),
        "sentences": pa.array([r["sentences"] for r in rows], pa.list_(pa.string())),
        "word_ids": pa.array([r["word_ids"] for r in rows], pa.list_(pa.list_(pa.int32()))),
        "moments": pa.array([[list(map(float, m)) for m in r["moments"]] for r in rows],
                            schema.field("moments").type),
    }
    return pa.Table.from_arrays([cols[n] for n in schema.names], schema=schema)


# ---------------------------------------------------------------------------- GloVe
class Glove:
    """Word vectors by word. Loaded from one of:

    * ``txt``: the Stanford GloVe text format (``word v1 … vd`` per line; only the ``words``
      asked for are kept, so a 5 GB file streams through);
    * ``pkl``: CPL's ``glove.pkl`` (``{"w2id", "id2vec", "counter"}``), through the restricted
      unpickler (numpy arrays and ``collections.Counter`` only);
    * ``npy`` + ``vocab``: a ``[V, d]`` float array and a JSON ``{"w2id": {word: row}}`` (or a plain
      ``{word: row}``), e.g. ``charades_sta/glove_vectors_1146x300_float32.npy`` with
      ``glove_vocab_w2id_counter.json``.
    """

    def __init__(self, vectors: dict[str, np.ndarray], dim: int, source: str,
                 rows: list[str] | None = None, counter: dict | None = None):
        self.vectors, self.dim, self.source = vectors, dim, source
        self.rows = rows  # words in id order when the file numbers them (pkl, npy + w2id)
        self.counter = counter

    def get(self, word: str) -> np.ndarray | None:
        return self.vectors.get(word)

    @classmethod
    def load(cls, txt=None, pkl=None, npy=None, vocab=None, words: Iterable[str] | None = None) -> "Glove":
        given = [n for n, v in (("--glove-txt", txt), ("--glove-pkl", pkl), ("--glove-npy", npy)) if v]
        if len(given) != 1:
            raise ConversionError(
                "word vectors: give exactly one of --glove-txt FILE, --glove-pkl FILE (CPL glove.pkl) "
                f"or --glove-npy FILE --glove-vocab FILE; got {', '.join(given) or 'none'}"
            )
        if txt:
            return cls._from_txt(need_file(txt, "--glove-txt"), set(words) if words is not None else None)
        if pkl:
            p = need_file(pkl, "--glove-pkl")
            d = safe_pickle.load(p, allow_numpy=True, allow_counter=True)
            if not isinstance(d, dict) or "w2id" not in d or "id2vec" not in d:
                raise ConversionError(f"--glove-pkl {p}: expected a dict with w2id and id2vec (CPL layout)")
            vecs = {w: np.asarray(d["id2vec"][i], np.float32) for w, i in d["w2id"].items()}
            return cls(vecs, len(next(iter(vecs.values()))), f"pkl:{p.name}", _rows(d["w2id"], p),
                       dict(d["counter"]) if isinstance(d.get("counter"), dict) else None)
        p = need_file(npy, "--glove-npy")
        arr = np.load(p, allow_pickle=False)
        if arr.ndim != 2:
            raise ConversionError(f"--glove-npy {p}: expected a [V, d] array, got shape {arr.shape}")
        voc = load_json(need_file(vocab, "--glove-vocab (with --glove-npy)"), "--glove-vocab")
        w2id = voc.get("w2id", voc) if isinstance(voc, dict) else None
        if not isinstance(w2id, dict):
            raise ConversionError(f"--glove-vocab {vocab}: expected {{'w2id': {{word: row}}}} or {{word: row}}")
        bad = [w for w, i in w2id.items() if not (isinstance(i, int) and 0 <= i < len(arr))]
        if bad:
            raise ConversionError(f"--glove-vocab {vocab}: rows of {bad[:3]} are outside the {len(arr)} vectors")
        counter = voc.get("counter") if isinstance(voc.get("counter"), dict) else None
        return cls({w: arr[i].astype(np.float32) for w, i in w2id.items()}, arr.shape[1], f"npy:{p.name}",
                   _rows(w2id, p), counter)

    @classmethod
    def _from_txt(cls, path: Path, words: set[str] | None) -> "Glove":
        vecs: dict[str, np.ndarray] = {}
        dim = None
        with open(path, encoding="utf-8", errors="replace") as f:
            for n, line in enumerate(f, 1):
                parts = line.rstrip().split(" ")
                if len(parts) < 3:
                    continue
                if dim is None:
                    dim = len(parts) - 1
                word = " ".join(parts[: len(parts) - dim])  # a few GloVe 840B tokens hold spaces
                if words is not None and word not in words:
                    continue
                try:
                    vecs[word] = np.asarray(parts[len(parts) - dim:], np.float32)
                except ValueError:
                    raise ConversionError(f"--glove-txt {path}: line {n} is not 'word v1 ... v{dim}'") from None
        if dim is None:
            raise ConversionError(f"--glove-txt {path}: no vectors found")
        return cls(vecs, dim, f"txt:{path.name}")


def _rows(w2id: dict, where) -> list[str] | None:
    """Words in id order if the ids are exactly 0..V-1, else None."""
    rows: list = [None] * len(w2id)
    for w, i in w2id.items():
        if not (isinstance(i, int) and 0 <= i < len(rows)) or rows[i] is not None:
            return None
        rows[i] = w
    return rows


def add_glove_arguments(p) -> None:
    p.add_argument("--glove-txt", metavar="FILE", help="GloVe text file (word v1 ... vd)")
    p.add_argument("--glove-pkl", metavar="FILE", help="CPL glove.pkl (w2id, id2vec; read with the restricted unpickler)")
    p.add_argument("--glove-npy", metavar="FILE", help="[V, d] float vectors (with --glove-vocab)")
    p.add_argument("--glove-vocab", metavar="FILE", help="JSON {'w2id': {word: row}} giving the rows of --glove-npy")


def fallback_vector(word: str, dim: int, seed: int = 0) -> np.ndarray:
    """A fixed random vector for a word GloVe lacks, uniform in [-1, 1) as GVD does; seeded by
    the word so the same word always gets the same vector."""
    h = int.from_bytes(hashlib.sha256(f"{seed}:{word}".encode()).digest()[:8], "little")
    return (2 * np.random.default_rng(h).random(dim) - 1).astype(np.float32)


def phrase_vector(glove: Glove, phrase: str, seed: int = 0) -> tuple[np.ndarray, bool]:
    """Mean vector of a (possibly multi-word) class name; ``found`` is False if any word lacked one."""
    vecs, found = [], True
    for w in re.split(r"[\s,_/]+", phrase.strip().lower()):
        if not w:
            continue
        v = glove.get(w)
        if v is None:
            found = False
            v = fallback_vector(w, glove.dim, seed)
        vecs.append(v)
    if not vecs:
        return fallback_vector(phrase, glove.dim, seed), False
    return np.mean(vecs, axis=0).astype(np.float32), found


# --------------------------------------------------------------------------- vocab
PAD, UNK = "<PAD>", "<UNK>"


class Vocab:
    """Word ids of a moment dataset, in the convention of the generated Charades benchmark
    (:mod:`grounding.data.benchmarks.charades`): id 0 = ``<PAD>`` (zero vector), the last id = ``<UNK>``
    (zero vector, every token outside the vocabulary), tokens from
    :func:`grounding.data.moment.tokenize`.

    * :meth:`from_glove` (``--vocab glove``, the default when the GloVe source carries its own
      word ids: CPL's ``glove.pkl`` or ``.npy`` + ``w2id`` JSON): word id = GloVe row, exactly as
      those files number them; counts from the file's ``counter`` when it has one, else from the
      vocabulary sentences.
    * :meth:`from_sentences` (``--vocab sentences``, the default for ``--glove-txt``): the words
      of the vocabulary sentences seen at least ``min_count`` times, by descending count (ties
      alphabetical) at ids 1..n; vectors from GloVe, zeros for words GloVe lacks (counted).
    """

    def __init__(self, words: list[str], vectors: np.ndarray, counts: list[int], mode: str, missing: int = 0):
        self.words = [*words, UNK]
        self.vectors = np.concatenate([vectors.astype(np.float32), np.zeros((1, vectors.shape[1]), np.float32)])
        self.counts = [*counts, 0]
        self.ids = {w: i for i, w in enumerate(self.words)}
        self.dim, self.mode, self.missing = vectors.shape[1], mode, missing

    @property
    def unk_id(self) -> int:
        return len(self.words) - 1

    @classmethod
    def from_glove(cls, glove: "Glove", counts: Counter) -> "Vocab":
        if glove.rows is None:
            raise ConversionError(f"--vocab glove needs word ids from the GloVe file ({glove.source} has none); "
                                  f"use --glove-pkl or --glove-npy/--glove-vocab, or --vocab sentences")
        if glove.rows[0] != PAD:
            raise ConversionError(f"--vocab glove: row 0 of {glove.source} is {glove.rows[0]!r}, expected {PAD!r}; "
                                  f"use --vocab sentences")
        vecs = np.stack([glove.vectors[w] for w in glove.rows])
        src = glove.counter if glove.counter is not None else counts
        cnt = [0 if i == 0 else int(src.get(w, 0)) for i, w in enumerate(glove.rows)]
        return cls(list(glove.rows), vecs, cnt, "glove")

    @classmethod
    def from_sentences(cls, counts: Counter, glove: "Glove", min_count: int = 1) -> "Vocab":
        words = sorted((w for w, c in counts.items() if c >= min_count and w not in (PAD, UNK)),
                       key=lambda w: (-counts[w], w))
        vecs = np.zeros((len(words) + 1, glove.dim), np.float32)
        missing = 0
        for i, w in enumerate(words, start=1):
            v = glove.get(w)
            if v is None:
                missing += 1
            else:
                vecs[i] = v
        return cls([PAD, *words], vecs, [0, *[counts[w] for w in words]], "sentences", missing)

    def encode(self, sentence: str) -> list[int]:
        return [self.ids.get(t, self.unk_id) for t in tokenize(sentence, self.ids)]

    def table(self) -> pa.Table:
        schema = vocab_schema(self.dim)
        return pa.Table.from_arrays(
            [pa.array(np.arange(len(self.words)), pa.int32()), pa.array(self.words, pa.string()),
             _fixed(self.vectors, schema.field("word_vector")), pa.array(self.counts, pa.int64())],
            schema=schema)

