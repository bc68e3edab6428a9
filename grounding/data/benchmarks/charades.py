"""Generated Charades-CD benchmark for weakly-supervised temporal moment localisation.

Real I3D clip features of Charades cannot be downloaded here, so this module plants clip features
on top of the real annotations (``charades_cd/`` and ``charades_sta/`` in the annotation folder):
every video of the real Charades-CD splits with its real duration, its real queries and their
real ``(start, end)`` moments, and the real GloVe vocabulary of Charades-STA (1146 words with
their 300-d vectors). The queries are kept as written, so the real language bias (frequent word
pairs such as "open ... door", "turn ... light") is left intact: that is what CCR counteracts.

Splits: ``train``, ``val``, ``test_iid`` and ``test_ood`` are Charades-CD's ``charades_train``,
``charades_val``, ``charades_test_iid`` and ``charades_test_ood`` (the OOD split has shifted moment
positions: longer moments placed later in the video). Rows keep the file order; ``limit`` caps
the number of *videos* per split.

Text. Sentences are tokenised by :func:`grounding.data.moment.tokenize` (lower-case,
Penn-Treebank-like: contractions and punctuation split off) and mapped onto the GloVe vocabulary:
word id ``i`` is row ``i`` of ``glove_vectors_1146x300_float32.npy`` (id 0 = ``<PAD>``, zeros).
Tokens outside the vocabulary (0.17% of all tokens: typos, ``-``) get the id ``1146`` of an extra
entry ``<UNK>`` (zero vector) appended to the ``vocab`` side table; nothing is dropped. The
``vocab`` table holds ``word_id``, ``word``, ``word_vector`` and ``count`` (the Charades-STA corpus
count shipped with the vocabulary; 0 for ``<PAD>``/``<UNK>``).

Moments are stored in seconds, clipped to ``[0, duration]`` (about 15% of the real end times lie
past the video's end). Features: ``L`` clips evenly covering ``[0, duration]``, clip ``i`` centred
at ``t_i = (i + 0.5) * duration / L``.

What a video's features look like (every knob is a field of :class:`CharadesConfig`, default in
brackets):

* ``L`` clips [64] of ``D`` dims [128], stored as ``feature_dtype`` [float16]. The authors pool
  I3D features to 200 clips; 64 keeps CPU training fast (the models pool further, see their
  ``downsample``), and the clip resolution (1/64 of the video) stays well below the mean moment
  length (a quarter of the video).
* Word prototypes: ``proto_w = normalise(normalise(W2 tanh(a W1 glove_w)) + word_noise * xi_w)``
  with fixed random ``W1 [300, proto_hidden]`` [512], ``W2``, gain ``a = 1.5 sqrt(300)`` on the
  unit GloVe vector, and ``word_noise`` [0.5]: related words (``open``/``opens``) get related
  prototypes, and a word stays predictable from its GloVe vector.
* Content words (:func:`grounding.data.moment.is_content`: not a stop word, subject or particle)
  are what a clip can show. Queries of a video that share the same moment are grouped; each
  group plants the union of its content words inside its moment ``[s, e]`` with the temporal
  profile ``sigmoid((t - s)/tau) * sigmoid((e - t)/tau)`` (``tau = edge_softness`` [0.5] clip
  lengths), divided by its maximum so that even a moment shorter than a clip peaks at 1.
  Each (moment, word) has amplitude ``signal * exp(signal_jitter * z)`` [1.0, 0.4], and each
  clip inside shows each word with probability ``p_visible`` [0.8].
* Every content word of any query of the video also appears in *every* clip with weight
  ``context_leak`` [0.25] (the objects of a Charades room are there all along); the moment is
  where the words are strong.
* Background: a per-video scene vector of norm ``scene_strength`` [1.0] plus a slowly drifting
  AR(1) component (coefficient ``drift_rho`` [0.9], norm about ``drift_strength`` [0.5]), and
  isotropic clip noise of norm about ``feature_noise`` [1.0].

The strengths were set once, by reading the planted contrast (content-word projection inside a
moment against outside: about +1.1, against a spread of about 0.2 over the clips outside), and
were not tuned on any method's scores.

Every sample draws from its own generator seeded by ``[seed, split, index]``, so the data does
not depend on ``limit`` or on the order of generation; the prototypes come from
``[seed, 7919]``. ``limit`` [None] caps the videos per split (tests and smoke runs).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path

import numpy as np
import pyarrow as pa

from ... import __version__
from ..annotations import annotations_dir, file_digest, read_text
from .planting import text_prototypes, unit
from ..moment import PAD_ID, UNK_WORD, is_content, tokenize
from ..schema import moment_schema, vocab_schema
from ..shards import DatasetWriter

PRODUCER = "grounding.data.charades"  # recorded in manifests and their digest: kept as before the move
SPLITS = ("train", "val", "test_iid", "test_ood")
SPLIT_FILES = {"train": "charades_train.json", "val": "charades_val.json",
               "test_iid": "charades_test_iid.json", "test_ood": "charades_test_ood.json"}
VOCAB_FILES = ("glove_vocab_w2id_counter.json", "glove_vectors_1146x300_float32.npy")


@dataclasses.dataclass(frozen=True)
class CharadesConfig:
    seed: int = 0
    L: int = 64
    D: int = 128
    feature_dtype: str = "float16"
    proto_hidden: int = 512
    word_noise: float = 0.5
    signal: float = 1.0
    signal_jitter: float = 0.4
    p_visible: float = 0.8
    edge_softness: float = 0.5
    context_leak: float = 0.25
    scene_strength: float = 1.0
    drift_strength: float = 0.5
    drift_rho: float = 0.9
    feature_noise: float = 1.0
    limit: int | None = None

    def __post_init__(self):
        checks = [
            (self.L >= 2, "L must be >= 2"),
            (self.D >= 1, "D must be >= 1"),
            (self.feature_dtype in ("float16", "float32"), "feature_dtype must be float16 or float32"),
            (self.proto_hidden >= 1, "proto_hidden must be >= 1"),
            (0 < self.p_visible <= 1, "p_visible must be in (0, 1]"),
            (self.edge_softness > 0, "edge_softness must be > 0"),
            (0 <= self.drift_rho < 1, "drift_rho must be in [0, 1)"),
            (min(self.word_noise, self.signal, self.signal_jitter, self.context_leak,
                 self.scene_strength, self.drift_strength, self.feature_noise) >= 0,
             "noise levels and strengths must be >= 0"),
            (self.limit is None or self.limit >= 1, "limit must be >= 1 or None"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(f"CharadesConfig: {msg}")


# --------------------------------------------------------------------------- annotations
@dataclasses.dataclass
class CharadesAnnotations:
    words: list[str]  # id -> word, including the appended <UNK>
    vectors: np.ndarray  # [V, 300] float32 (row 0 <PAD> and the last row <UNK> are zeros)
    counts: np.ndarray  # [V] int64 corpus counts
    w2id: dict[str, int]
    splits: dict[str, dict]  # split -> {video_id: {timestamps, sentences, video_duration, ...}}
    digests: dict[str, str]

    @property
    def unk_id(self) -> int:
        return len(self.words) - 1

    @classmethod
    def load(cls, folder: Path | None = None) -> "CharadesAnnotations":
        folder = Path(folder) if folder else annotations_dir()
        sta, cd = folder / "charades_sta", folder / "charades_cd"
        vocab = json.loads(read_text(sta / VOCAB_FILES[0]))
        w2id = {w: int(i) for w, i in vocab["w2id"].items()}
        glove = np.load(sta / VOCAB_FILES[1]).astype(np.float32)
        if sorted(w2id.values()) != list(range(len(glove))):
            raise ValueError(f"{sta}: vocabulary ids do not match the {len(glove)} GloVe rows")
        words = [""] * len(glove)
        for w, i in w2id.items():
            words[i] = w
        if words[PAD_ID] != "<PAD>":
            raise ValueError(f"{sta}: word id {PAD_ID} must be <PAD>, got {words[PAD_ID]!r}")
        words.append(UNK_WORD)
        vectors = np.concatenate([glove, np.zeros((1, glove.shape[1]), np.float32)])
        counts = np.array([int(vocab["counter"].get(w, 0)) if i not in (PAD_ID, len(glove)) else 0
                           for i, w in enumerate(words)], np.int64)
        splits = {sp: json.loads(read_text(cd / f)) for sp, f in SPLIT_FILES.items()}
        digests = {f"charades_sta/{f}": file_digest(sta / f) for f in VOCAB_FILES}
        digests.update({f"charades_cd/{f}": file_digest(cd / f) for f in SPLIT_FILES.values()})
        return cls(words, vectors, counts, w2id, splits, digests)

    def encode(self, sentence: str) -> list[int]:
        return [self.w2id.get(t, self.unk_id) for t in tokenize(sentence, self.w2id)]


# ------------------------------------------------------------------------------- world
def word_prototypes(cfg: CharadesConfig, vectors: np.ndarray) -> np.ndarray:
    """``[V, D]`` unit prototypes from a fixed nonlinear map of the GloVe vectors (+ noise)."""
    rng = np.random.default_rng([cfg.seed, 7919])
    protos = text_prototypes(vectors, cfg.D, cfg.proto_hidden, cfg.word_noise, rng)
    protos[np.linalg.norm(vectors, axis=1) == 0] = 0.0  # <PAD>, <UNK>: nothing to show
    return protos


# ------------------------------------------------------------------------------ samples
def render_video(cfg: CharadesConfig, protos: np.ndarray, content: np.ndarray, duration: float,
                 moments: np.ndarray, word_ids: list[list[int]], rng: np.random.Generator) -> np.ndarray:
    """``[L, D]`` clip features of one video with its queries' ``moments`` ([Q, 2] seconds,
    already clipped) and ``word_ids``."""
    L, D = cfg.L, cfg.D
    t = (np.arange(L) + 0.5) * duration / L
    scene = cfg.scene_strength * unit(rng.standard_normal(D))
    drift = np.empty((L, D))
    z = rng.standard_normal(D)
    innov = rng.standard_normal((L, D))
    for i in range(L):
        z = cfg.drift_rho * z + math.sqrt(1 - cfg.drift_rho ** 2) * innov[i]
        drift[i] = z
    feats = scene + cfg.drift_strength / math.sqrt(D) * drift

    # Queries sharing a moment form one group; the group shows the union of their content words.
    groups: dict[tuple[float, float], set[int]] = {}
    video_words: set[int] = set()
    for (s, e), ids in zip(moments, word_ids):
        cw = {w for w in ids if content[w]}
        groups.setdefault((round(float(s), 3), round(float(e), 3)), set()).update(cw)
        video_words |= cw
    tau = cfg.edge_softness * duration / L
    for (s, e) in sorted(groups):
        ws = sorted(groups[(s, e)])
        if not ws:
            continue
        prof = 1 / (1 + np.exp(-(t - s) / tau)) / (1 + np.exp(-(e - t) / tau))
        prof = prof / max(prof.max(), 1e-12)
        amp = cfg.signal * np.exp(cfg.signal_jitter * rng.standard_normal(len(ws)))
        vis = rng.random((L, len(ws))) < cfg.p_visible
        feats += (prof[:, None] * vis * amp[None, :]) @ protos[ws]
    if video_words and cfg.context_leak:
        feats += cfg.context_leak * protos[sorted(video_words)].sum(0)
    feats += cfg.feature_noise / math.sqrt(D) * rng.standard_normal((L, D))
    return feats


def split_plan(ann: CharadesAnnotations, limit: int | None) -> dict[str, list[str]]:
    """Video ids per output split, in file order."""
    plan = {sp: list(ann.splits[sp]) for sp in SPLITS}
    if limit:
        plan = {k: v[:limit] for k, v in plan.items()}
    return plan


def render_split(cfg: CharadesConfig, ann: CharadesAnnotations, protos: np.ndarray, content: np.ndarray,
                 split: str, videos: list[str], offset: int = 0) -> pa.Table:
    schema = moment_schema(cfg.L, cfg.D, cfg.feature_dtype)
    code = SPLITS.index(split)
    dtype = np.float16 if cfg.feature_dtype == "float16" else np.float32
    feats = np.empty((len(videos), cfg.L * cfg.D), dtype)
    cols = {k: [] for k in ("video_id", "duration", "sample_ids", "sentences", "word_ids", "moments")}
    for j, vid in enumerate(videos):
        rec = ann.splits[split][vid]
        duration = float(rec["video_duration"])
        sentences = [str(s) for s in rec["sentences"]]
        moments = np.clip(np.asarray(rec["timestamps"], np.float64).reshape(-1, 2), 0.0, duration)
        ids = [ann.encode(s) for s in sentences]
        rng = np.random.default_rng([cfg.seed, code, offset + j])
        feats[j] = render_video(cfg, protos, content, duration, moments, ids, rng).reshape(-1)
        cols["video_id"].append(vid)
        cols["duration"].append(duration)
        cols["sample_ids"].append([f"{vid}#{q}" for q in range(len(sentences))])
        cols["sentences"].append(sentences)
        cols["word_ids"].append(ids)
        cols["moments"].append(moments.astype(np.float32).tolist())
    arrays = []
    for field in schema:
        if field.name == "features":
            arrays.append(pa.FixedSizeListArray.from_arrays(
                pa.array(feats.reshape(-1), type=field.type.value_type), field.type.list_size))
        else:
            arrays.append(pa.array(cols[field.name], type=field.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def vocab_table(ann: CharadesAnnotations) -> pa.Table:
    V, E = ann.vectors.shape
    return pa.table(
        {
            "word_id": pa.array(np.arange(V), pa.int32()),
            "word": ann.words,
            "word_vector": pa.FixedSizeListArray.from_arrays(pa.array(ann.vectors.reshape(-1)), E),
            "count": pa.array(ann.counts, pa.int64()),
        },
        schema=vocab_schema(E),
    )


def generate(root: str | os.PathLike, cfg: CharadesConfig = CharadesConfig(), overwrite: bool = False,
             annotations: Path | None = None, chunk: int = 512):
    """Write the benchmark to ``root`` (a local folder) and return its manifest."""
    ann = CharadesAnnotations.load(annotations)
    protos = word_prototypes(cfg, ann.vectors)
    content = np.array([is_content(w) for w in ann.words], bool)
    plan = split_plan(ann, cfg.limit)
    producer = {"name": PRODUCER, "version": __version__, "args": dataclasses.asdict(cfg),
                "annotations": ann.digests}
    extra = {"benchmark": "charades_cd_generated", "vocab_size": len(ann.words), "pad_id": PAD_ID,
             "unk_id": ann.unk_id, "content_words": int(content.sum()),
             "queries": {sp: sum(len(ann.splits[sp][v]["sentences"]) for v in vids)
                         for sp, vids in plan.items()}}
    with DatasetWriter(root, "moment", {"L": cfg.L, "D": cfg.D}, cfg.feature_dtype, producer,
                       overwrite=overwrite, extra=extra) as writer:
        writer.add_table("vocab", vocab_table(ann))
        for split, videos in plan.items():
            for i in range(0, len(videos), chunk):
                writer.write(split, render_split(cfg, ann, protos, content, split, videos[i:i + chunk], i))
    return writer.manifest
