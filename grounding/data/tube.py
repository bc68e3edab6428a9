"""Tube-grounding rows (task ``tube``) as numpy arrays, and batches of torch tensors for the models.

A tube dataset stores one row per video (see :func:`grounding.data.schema.tube_schema`): its
frame features, region features, proposal boxes and linked tubes once, and all of its sentences
with their ground truth. :class:`TubeArrays` keeps the video tensors per video and expands the
sentences into samples that point at their video (``video_index``); ``batch(idx)`` gathers the
videos of the sampled sentences, so a split never holds a copy of the features per sentence.

Also here, shared by the generator (:mod:`grounding.data.benchmarks.vidstg`) and the VidSTG/HC-STVG
converters:

* :func:`tube_tokens`: the tokeniser of the family (``grounding.data.moment.tokenize``, lower-case,
  punctuation dropped, as WINNER's word-level encoder needs);
* :func:`subject_position` and :func:`relation_positions`: the grounded word and the
  subject/object words of a relation, found by a noun-lexicon heuristic (this project's heuristic: declarative =
  the first lexicon noun before the first verb, else the first lexicon noun, else token 0;
  interrogative = the wh-word, token 0);
* :func:`noun_phrases`, :func:`bind_attributes` and :func:`bow_resolvable`: the sentence's noun
  phrases, the attribute words (:data:`ATTRIBUTE_WORDS`) bound to the target's and to the other
  argument's phrase, and the per-sentence flag of the bag-of-words / structure subsets (issue 23);
* :func:`entity_ids`: the sentence's entity phrases (VCMA §3.2 "noun phrases that indicate the
  entities"), one id per token (-1 outside every phrase): each maximal run of lexicon nouns (the
  annotation's object words: category words and person nouns) with the modifiers right before it
  (at most :data:`MAX_MODIFIERS` words, stopping at a function word, a lexicon noun or a verb-like
  word; colour and :data:`ATTRIBUTE_WORDS` always count) and the attribute words of an "in" /
  "with" phrase right after it ("a man in black": man, black), the wh-word of a question, and any
  grounded/relation position no phrase covers, as a one-word phrase; at most ``E`` phrases (the ones holding the grounded word
  or a relation argument are kept first, then the earliest). :func:`fallback_entity_ids` is the rule
  for shards written without the ``entity_ids`` column: the distinct words at ``subject_pos``,
  ``rel_subj`` and ``rel_obj``, each a one-word phrase (token 0 when none is known);
* :func:`link_tubes`: VCMA Eq. 4 tube linking (``s_link = cos(v_t,i, v_t+1,j) + alpha IoU``,
  ``alpha`` = 0.5), greedy Viterbi: the best path over the remaining proposals, removed, M times;
* :func:`tube_table`: per-video row dicts -> a Parquet table of the schema.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pyarrow as pa
import torch

from .moment import tokenize
from .schema import tube_schema
from .wsvog import fixed_list_to_numpy

PAD_ID = 0
UNK_ID = 1
DECLARATIVE, INTERROGATIVE = 0, 1
FORMS = ("declarative", "interrogative")

# Person nouns (VidSTG captions call the categories adult/child/baby "man", "woman", "boy", ...).
PERSON_NOUNS = frozenset("""
man men woman women boy boys girl girls lady ladies guy guys person people kid kids child children
baby babies adult adults player players gentleman toddler mother father mom dad grandma grandpa
""".split())
WH_WORDS = frozenset({"who", "what", "whom", "whose", "which"})
_VERBISH = re.compile(r"^(is|are|was|were|be|being|been|has|have|had|does|do|did|can|could|will|"
                      r"would|should|may|might|must|.*ing|.*es|.*ed)$")
# Words that end a noun phrase's modifiers (determiners, pronouns, prepositions, conjunctions, ...):
# "the", "another adult", "in front of the car", "and".
FUNCTION_WORDS = frozenset("""
a an the this that these those another other others some any each every all both no its his her their my
our your it he she they him them there here and or but nor so then than to of in on at by for from with
without into onto off over under above below behind beside besides besidethe near next front towards toward
away inside outside around between among along across through up down out while when where who what whom
whose which how why not as
""".split())
COLOURS = frozenset("""
black white brown yellow red blue green gray grey silver orange purple beige pink golden gold tan cyan
khaki dark light
""".split())
MAX_MODIFIERS = 3
E_MAX = 8  # entity phrases per sentence (VCMA spec: N <= 8)


def tube_tokens(sentence: str) -> list[str]:
    """Lower-cased tokens without punctuation (``tokenize`` then drop non-word tokens)."""
    return [t for t in tokenize(sentence) if re.search(r"[a-z0-9]", t)]


def category_words(category: str) -> list[str]:
    """Words of a VidOR category name: ``ball/sports_ball`` -> ``[ball, sports, ball]``."""
    return [w for w in re.split(r"[/_()\s]+", category.lower()) if w]


def noun_lexicon(categories: list[str]) -> frozenset[str]:
    """Category words (and their plural ``-s``) plus person nouns."""
    words = set(PERSON_NOUNS)
    for c in categories:
        for w in category_words(c):
            words.update({w, w + "s", w + "es"})
    return frozenset(words)


def subject_position(tokens: list[str], form: int, lexicon: frozenset[str]) -> int:
    """Index of the grounded word (this project's heuristic), -1 for an empty sentence."""
    if not tokens:
        return -1
    if form == INTERROGATIVE:
        return next((i for i, t in enumerate(tokens) if t in WH_WORDS), 0)
    for i, t in enumerate(tokens):
        if t in lexicon:
            return i
        if i > 0 and _VERBISH.match(t):
            break
    return next((i for i, t in enumerate(tokens) if t in lexicon), 0)


# Appearance words of VidSTG's sentences that the generated benchmark plants as attributes
# (colours, and patterns of clothing; grounding.data.benchmarks.vidstg, "Structure").
ATTRIBUTE_WORDS = ("black", "white", "red", "blue", "green", "yellow", "gray", "grey", "pink", "brown", "orange",
                   "purple", "silver", "golden", "beige", "cyan", "khaki", "tan", "colorful", "striped", "plaid")


def _noun_runs(tokens: list[str], lexicon: frozenset[str]) -> list[tuple[int, int]]:
    """Half-open spans of the maximal runs of consecutive lexicon nouns, in order."""
    spans, i = [], 0
    while i < len(tokens):
        if tokens[i] in lexicon:
            j = i
            while j < len(tokens) and tokens[j] in lexicon:
                j += 1
            spans.append((i, j))
            i = j
        else:
            i += 1
    return spans


def noun_phrases(tokens: list[str], subj_pos: int, lexicon: frozenset[str]) -> list[tuple[int, int]]:
    """Half-open token spans of the sentence's noun phrases (this project's heuristic): maximal runs
    of consecutive lexicon nouns ("adult man", "girl child"), plus the grounded word at ``subj_pos``
    as a phrase of its own where it is not a lexicon noun (the wh-word of a question)."""
    spans = _noun_runs(tokens, lexicon)
    if 0 <= subj_pos < len(tokens) and not any(a <= subj_pos < b for a, b in spans):
        spans = sorted(spans + [(subj_pos, subj_pos + 1)])
    return spans


def bind_attributes(tokens: list[str], subj_pos: int, lexicon: frozenset[str],
                    words: tuple[str, ...] = ATTRIBUTE_WORDS) -> tuple[list[str], list[str]]:
    """(attribute words bound to the grounded phrase, to the other argument's phrase).

    The grounded phrase is the noun phrase (:func:`noun_phrases`) holding ``subj_pos`` (the
    sentence's target: its subject, or the wh-word of a question); the other argument's phrase is
    the first noun phrase after it. Each attribute word binds to the nearer of the two (token
    distance to the phrase's nearest token), the earlier (grounded) one on a tie, and to the
    grounded phrase where there is no other: "the child in red clothes and black pants is
    watching the ball" binds red and black to the child; "what does the brown dog bite" binds brown
    to the dog (the other argument of a question about the object)."""
    spans = noun_phrases(tokens, subj_pos, lexicon)
    own = next((s for s in spans if s[0] <= subj_pos < s[1]), None)
    if own is None:
        return [], []
    other = next((s for s in spans if s[0] >= own[1]), None)
    dist = lambda i, s: 0 if s[0] <= i < s[1] else min(abs(i - s[0]), abs(i - (s[1] - 1)))  # noqa: E731
    mine, theirs = [], []
    for i, t in enumerate(tokens):
        if t in words:
            (mine if other is None or dist(i, own) <= dist(i, other) else theirs).append(t)
    return mine, theirs


def bow_resolvable(target: int, objects_class, objects_role, objects_attrs: list, seen_in_gt, sentence_attrs: set,
                   role_known: bool = False, use_pattern: bool = True, use_attrs: bool = True) -> bool:
    """Whether a bag of the sentence's words resolves its ``target`` among the video's objects
    (issue 23's subset flag; the module docstring of :mod:`grounding.data.benchmarks.vidstg`).

    The bag is credited with what it can know without the sentence's structure: the target's
    category (a head noun, or ``who``/``what``), every attribute word of the sentence
    (``sentence_attrs``) without the noun it belongs to, the relation's predicate without its
    roles, and, where ``role_known`` (declaratives: a sentence without a wh-word describes the
    relation's subject in VidSTG, a convention a bag of words learns), the target's role. It scores
    each object of the target's category that is visible in a ground-truth frame (``seen_in_gt``):
    1 if the object carries the relation's pattern (``objects_role``: True agent, False patient,
    None none; in the target's role where ``role_known``, either role otherwise; counted where
    ``use_pattern``), plus the number of its attribute words (``objects_attrs``, sets) in the
    sentence (counted where ``use_attrs``). Resolvable iff the target scores strictly above every
    other such object; otherwise (a tie, or an object the bag prefers) only the structure, which
    noun plays which role and which attribute belongs to which noun, tells the target apart."""
    def score(o):
        role = objects_role[o]
        pattern = role is not None and (not role_known or role == objects_role[target])
        return (int(pattern) if use_pattern else 0) + \
            (len(set(objects_attrs[o]) & sentence_attrs) if use_attrs else 0)
    mine = score(target)
    return all(mine > score(o) for o in range(len(objects_class))
               if o != target and objects_class[o] == objects_class[target] and seen_in_gt[o])


def relation_positions(tokens: list[str], form: int, subj_pos: int, target_is_subject: bool,
                       lexicon: frozenset[str]) -> tuple[int, int]:
    """(subject, object) token indices of the sentence's main relation (-1 when not found).

    The grounded word is the relation's subject, unless a question asks about the object
    (``target_is_subject`` False): then the wh-word is the object and the subject is the first
    lexicon noun after it. The other argument is the first lexicon noun after the grounded word's
    run of lexicon nouns ("an adult man ... next to a ball": ball, not man).
    """
    run = max(subj_pos, 0)
    while run + 1 < len(tokens) and tokens[run] in lexicon and tokens[run + 1] in lexicon:
        run += 1
    after = [i for i, t in enumerate(tokens) if t in lexicon and i > run]
    other = after[0] if after else -1
    if form == INTERROGATIVE and not target_is_subject:
        return other, subj_pos
    return subj_pos, other


def entity_ids(tokens: list[str], form: int, lexicon: frozenset[str], required: tuple[int, ...] = (),
               E: int = E_MAX) -> list[int]:
    """Entity phrase id (0..E-1, in order of appearance) of every token, -1 outside all phrases.

    The rule is the module docstring's; ``required`` are token positions (the grounded word, the
    relations' subject and object; -1 ignored) that must lie in a phrase.
    """
    n = len(tokens)
    attrs = COLOURS | frozenset(ATTRIBUTE_WORDS)
    found: list[tuple[int, list[int]]] = []  # (token where the left-to-right scan meets it, phrase)
    if form == INTERROGATIVE:
        found += [(i, [i]) for i, t in enumerate(tokens) if t in WH_WORDS and t not in lexicon]
    for i, end in _noun_runs(tokens, lexicon):
        j = end - 1
        start = i
        while (start > 0 and i - start < MAX_MODIFIERS and tokens[start - 1] not in lexicon
               and tokens[start - 1] not in FUNCTION_WORDS and re.search(r"[a-z]", tokens[start - 1])
               and (tokens[start - 1] in attrs or not _VERBISH.match(tokens[start - 1]))):
            start -= 1
        words = list(range(start, j + 1))
        # attribute words of a following "in" / "with" phrase: "a man in black and white"
        k = j + 1
        if k < n and tokens[k] in ("in", "with"):
            k += 1
            while k < n and k - j <= 1 + MAX_MODIFIERS and (tokens[k] in attrs or tokens[k] == "and"):
                if tokens[k] in attrs:
                    words.append(k)
                k += 1
        found.append((i, words))
    phrases = [ph for _, ph in sorted(found, key=lambda f: f[0])]
    for r in required:
        if 0 <= r < n and not any(r in ph for ph in phrases):
            phrases.append([r])
    phrases.sort(key=lambda ph: ph[0])
    if len(phrases) > E:
        need = [any(r in ph for r in required) for ph in phrases]
        keep = sorted(range(len(phrases)), key=lambda k: (not need[k], k))[:E]
        phrases = [phrases[k] for k in sorted(keep)]
    out = [-1] * n
    for k, ph in enumerate(phrases):
        for t in ph:
            out[t] = k
    return out


def fallback_entity_ids(n_tokens: np.ndarray, subject_pos: np.ndarray, rel_subj: np.ndarray, rel_obj: np.ndarray,
                        L: int) -> np.ndarray:
    """``[Q, L]`` entity ids for shards without the ``entity_ids`` column (module docstring):
    the distinct known positions among ``subject_pos``, ``rel_subj``, ``rel_obj`` inside the
    sentence, each a one-word phrase in order of appearance; token 0 when none is known."""
    Q = len(n_tokens)
    out = np.full((Q, L), -1, np.int64)
    pos = np.concatenate([np.asarray(subject_pos).reshape(Q, -1), np.asarray(rel_subj).reshape(Q, -1),
                          np.asarray(rel_obj).reshape(Q, -1)], 1)
    for q in range(Q):
        n = int(min(n_tokens[q], L))
        known = sorted({int(p) for p in pos[q] if 0 <= p < n}) or ([0] if n else [])
        out[q, known] = np.arange(len(known))
    return out


# ------------------------------------------------------------------------------ geometry
def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Broadcast IoU of boxes ``a[..., 4]`` and ``b[..., 4]`` (x1, y1, x2, y2), no +1."""
    x1 = np.maximum(a[..., 0], b[..., 0])
    y1 = np.maximum(a[..., 1], b[..., 1])
    x2 = np.minimum(a[..., 2], b[..., 2])
    y2 = np.minimum(a[..., 3], b[..., 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = lambda z: np.clip(z[..., 2] - z[..., 0], 0, None) * np.clip(z[..., 3] - z[..., 1], 0, None)  # noqa: E731
    union = area(a) + area(b) - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def link_tubes(feats: np.ndarray, boxes: np.ndarray, frame_valid: np.ndarray | None = None,
               alpha: float = 0.5, M: int | None = None) -> np.ndarray:
    """VCMA Eq. 4 linking: ``[M, T]`` proposal index per frame.

    ``s_link(i -> j) = cos(v[t, i], v[t+1, j]) + alpha * IoU(b[t, i], b[t+1, j])``; tube k is the
    highest-scoring path (dynamic programming over frames, ties to the lower index) through the
    proposals not used by tubes 0..k-1, so the M = N tubes cover every (frame, proposal) once.
    Invalid (padded) frames are skipped by the links and carry index ``k`` in tube ``k`` (masked
    by ``frame_valid`` downstream).
    """
    T, N, _ = feats.shape
    M = N if M is None else M
    valid = np.ones(T, bool) if frame_valid is None else np.asarray(frame_valid, bool)
    frames = np.flatnonzero(valid)
    out = np.tile(np.arange(M, dtype=np.int64)[:, None], (1, T))
    if len(frames) == 0:
        return out
    v = feats[frames].astype(np.float64)
    v = v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-8)
    b = boxes[frames].astype(np.float64)
    Tv = len(frames)
    links = np.einsum("tid,tjd->tij", v[:-1], v[1:]) + alpha * box_iou(b[:-1, :, None], b[1:, None])
    used = np.zeros((Tv, N), bool)
    cols = np.arange(N)
    for k in range(min(M, N)):
        score = np.where(used[0], -np.inf, 0.0)
        back = np.zeros((Tv, N), np.int64)
        for t in range(1, Tv):
            cand = score[:, None] + links[t - 1]  # [from, to]
            back[t] = cand.argmax(0)
            score = cand[back[t], cols]
            score[used[t]] = -np.inf
        j = int(np.argmax(score))
        path = np.empty(Tv, np.int64)
        for t in range(Tv - 1, -1, -1):
            path[t] = j
            used[t, j] = True
            j = back[t, j]
        out[k, frames] = path
    return out


# -------------------------------------------------------------------------------- tables
def _fixed(values: np.ndarray, type_: pa.DataType) -> pa.Array:
    return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1), type=type_.value_type), type_.list_size)


def _per_sentence(rows: list[dict], key: str, field: pa.Field, dtype) -> pa.Array:
    """A list<fixed_size_list> column from per-row ``[S, ...]`` arrays."""
    inner = field.type.value_type
    counts = [len(r[key]) for r in rows]
    flat = np.concatenate([np.asarray(r[key], dtype).reshape(len(r[key]), -1) for r in rows]) if rows else \
        np.zeros((0, inner.list_size), dtype)
    values = _fixed(flat.reshape(-1), inner)
    offsets = pa.array(np.concatenate([[0], np.cumsum(counts)]).astype(np.int32))
    return pa.ListArray.from_arrays(offsets, values)


def tube_table(rows: list[dict], dims: dict, feature_dtype: str) -> pa.Table:
    """Per-video row dicts -> a table of :func:`tube_schema`. Each dict holds the video columns
    (``frame_features [T, Df]``, ``region_features [T, N, Dr]``, ``proposals [T, N, 4]``,
    ``tubes [M, T]``, ...) and per-sentence lists/arrays with one entry per sentence."""
    d = {k: int(dims[k]) for k in ("T", "N", "Df", "Dr", "L", "R", "P", "M")}
    flag = bool(dims.get("bow_resolvable"))  # the optional per-sentence subset flag (schema.tube_schema)
    schema = tube_schema(**d, feature_dtype=feature_dtype, bow_resolvable=flag,
                         E=int(dims["E"]) if dims.get("E") else None)
    ft = np.float16 if feature_dtype == "float16" else np.float32
    stack = lambda k, dt: np.stack([np.asarray(r[k], dt) for r in rows])  # noqa: E731
    cols = {
        "video_id": pa.array([r["video_id"] for r in rows], pa.string()),
        "source_video": pa.array([r["source_video"] for r in rows], pa.string()),
        "frame_width": pa.array([r["frame_width"] for r in rows], pa.int16()),
        "frame_height": pa.array([r["frame_height"] for r in rows], pa.int16()),
        "frame_ids": _fixed(stack("frame_ids", np.int32), schema.field("frame_ids").type),
        "frame_valid": _fixed(stack("frame_valid", bool), schema.field("frame_valid").type),
        "frame_features": _fixed(stack("frame_features", ft), schema.field("frame_features").type),
        "region_features": _fixed(stack("region_features", ft), schema.field("region_features").type),
        "proposals": _fixed(stack("proposals", np.float32), schema.field("proposals").type),
        "tubes": _fixed(stack("tubes", np.int16), schema.field("tubes").type),
        "sample_ids": pa.array([list(r["sample_ids"]) for r in rows], pa.list_(pa.string())),
        "sentences": pa.array([list(r["sentences"]) for r in rows], pa.list_(pa.string())),
        "word_ids": pa.array([[list(map(int, w[: d["L"]])) for w in r["word_ids"]] for r in rows],
                             pa.list_(pa.list_(pa.int32()))),
        "sentence_form": pa.array([list(map(int, r["sentence_form"])) for r in rows], pa.list_(pa.int8())),
        "subject_pos": pa.array([list(map(int, r["subject_pos"])) for r in rows], pa.list_(pa.int16())),
        "subject_class": pa.array([list(map(int, r["subject_class"])) for r in rows], pa.list_(pa.int16())),
    }
    for key, dt in (("rel_subj", np.int16), ("rel_obj", np.int16), ("rel_pred", np.int32), ("rel_valid", bool),
                    ("gt_segment", np.int32), ("gt_fids", np.int32), ("gt_boxes", np.float32),
                    ("gt_box_valid", bool)):
        cols[key] = _per_sentence(rows, key, schema.field(key), dt)
    if flag:
        cols["bow_resolvable"] = pa.array([list(map(bool, r["bow_resolvable"])) for r in rows], pa.list_(pa.bool_()))
    if "entity_ids" in schema.names:
        cols["entity_ids"] = pa.array([[list(map(int, e[: d["L"]])) for e in r["entity_ids"]] for r in rows],
                                      pa.list_(pa.list_(pa.int8())))
    return pa.Table.from_arrays([cols[n] for n in schema.names], schema=schema)


def _list_fixed(col, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """A list<fixed_size_list> column as ``[sentences, *shape]`` plus the count per row."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    per_row = np.diff(col.offsets.to_numpy())
    inner = col.flatten()
    return inner.flatten().to_numpy(zero_copy_only=False).reshape((len(inner), *shape)), per_row


def _list_flat(col) -> np.ndarray:
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    return col.flatten().to_numpy(zero_copy_only=False)


# -------------------------------------------------------------------------------- arrays
@dataclasses.dataclass
class TubeArrays:
    """One split (or one rank's part of it) of a tube dataset, one sample per sentence."""

    frame_feats: np.ndarray  # [V, T, Df] float16/float32
    region_feats: np.ndarray  # [V, T, N, Dr]
    boxes: np.ndarray  # [V, T, N, 4] float32, normalised to [0, 1]
    frame_valid: np.ndarray  # [V, T] bool
    frame_ids: np.ndarray  # [V, T] int64 (-1 padding)
    tubes: np.ndarray  # [V, M, T] int64
    video_index: np.ndarray  # [Q] int64
    tokens: np.ndarray  # [Q, L] int64
    sentence_form: np.ndarray  # [Q]
    subject_pos: np.ndarray  # [Q]
    subject_class: np.ndarray  # [Q]
    rel_subj: np.ndarray  # [Q, R]
    rel_obj: np.ndarray  # [Q, R]
    rel_pred: np.ndarray  # [Q, R, P]
    rel_valid: np.ndarray  # [Q, R] bool
    gt_segment: np.ndarray  # [Q, 2] half-open, sampled grid
    gt_fids: np.ndarray  # [Q, 2] half-open, original frame ids
    gt_boxes: np.ndarray  # [Q, T, 4] normalised
    gt_box_valid: np.ndarray  # [Q, T] bool
    sample_ids: list[str]
    video_ids: list[str]
    # [Q] bool: a bag of the sentence's words resolves its target (tube.bow_resolvable); None where
    # the dataset does not say (no such column: no bag-of-words / structure subsets)
    bow_resolvable: np.ndarray | None = None
    entity_ids: np.ndarray | None = None  # [Q, L] entity phrase per token, -1 none (None: fallback rule)

    @classmethod
    def from_table(cls, table: pa.Table, dims: dict) -> "TubeArrays":
        T, N, Df, Dr, L, R, P, M = (int(dims[k]) for k in ("T", "N", "Df", "Dr", "L", "R", "P", "M"))
        V = table.num_rows
        if V == 0:
            z = lambda *s, dt=np.int64: np.zeros(s, dt)  # noqa: E731
            return cls(z(0, T, Df, dt=np.float32), z(0, T, N, Dr, dt=np.float32), z(0, T, N, 4, dt=np.float32),
                       z(0, T, dt=bool), z(0, T), z(0, M, T), z(0), z(0, L), z(0), z(0), z(0), z(0, R), z(0, R),
                       z(0, R, P), z(0, R, dt=bool), z(0, 2), z(0, 2), z(0, T, 4, dt=np.float32), z(0, T, dt=bool),
                       [], [], z(0, dt=bool) if "bow_resolvable" in table.column_names else None,
                       z(0, L))
        size = np.stack([table["frame_width"].to_numpy(), table["frame_height"].to_numpy()], 1).astype(np.float32)
        scale = np.concatenate([size, size], 1)  # [V, 4] (w, h, w, h)
        boxes = fixed_list_to_numpy(table["proposals"], (T, N, 4)).astype(np.float32) / scale[:, None, None, :]
        gt_boxes, per_row = _list_fixed(table["gt_boxes"], (T, 4))
        video_index = np.repeat(np.arange(V), per_row).astype(np.int64)
        words = table["word_ids"].combine_chunks() if isinstance(table["word_ids"], pa.ChunkedArray) else table["word_ids"]
        inner = words.flatten()
        lengths = np.minimum(np.diff(inner.offsets.to_numpy()), L)
        starts = inner.offsets.to_numpy()[:-1] - inner.offsets.to_numpy()[0]
        values = inner.flatten().to_numpy(zero_copy_only=False).astype(np.int64)
        tokens = np.zeros((len(lengths), L), np.int64)
        for q, (s, n) in enumerate(zip(starts, lengths)):
            tokens[q, :n] = values[s:s + n]
        rel_pred = _list_fixed(table["rel_pred"], (R, P))[0].astype(np.int64)
        subject_pos = _list_flat(table["subject_pos"]).astype(np.int64)
        rel_subj = _list_fixed(table["rel_subj"], (R,))[0].astype(np.int64)
        rel_obj = _list_fixed(table["rel_obj"], (R,))[0].astype(np.int64)
        if "entity_ids" in table.column_names:
            ent = np.full((len(lengths), L), -1, np.int64)
            col = table["entity_ids"].combine_chunks() if isinstance(table["entity_ids"], pa.ChunkedArray) \
                else table["entity_ids"]
            einner = col.flatten()
            eoff = einner.offsets.to_numpy()
            evals = einner.flatten().to_numpy(zero_copy_only=False).astype(np.int64)
            for q in range(len(lengths)):
                n = min(int(eoff[q + 1] - eoff[q]), L)
                ent[q, :n] = evals[eoff[q] - eoff[0]: eoff[q] - eoff[0] + n]
        else:
            ent = fallback_entity_ids(lengths, subject_pos, rel_subj, rel_obj, L)
        return cls(
            frame_feats=fixed_list_to_numpy(table["frame_features"], (T, Df)),
            region_feats=fixed_list_to_numpy(table["region_features"], (T, N, Dr)),
            boxes=np.clip(boxes, 0.0, 1.0),
            frame_valid=fixed_list_to_numpy(table["frame_valid"], (T,)).astype(bool),
            frame_ids=fixed_list_to_numpy(table["frame_ids"], (T,)).astype(np.int64),
            tubes=fixed_list_to_numpy(table["tubes"], (M, T)).astype(np.int64),
            video_index=video_index,
            tokens=tokens,
            sentence_form=_list_flat(table["sentence_form"]).astype(np.int64),
            subject_pos=subject_pos,
            subject_class=_list_flat(table["subject_class"]).astype(np.int64),
            rel_subj=rel_subj,
            rel_obj=rel_obj,
            rel_pred=rel_pred,
            rel_valid=_list_fixed(table["rel_valid"], (R,))[0].astype(bool),
            gt_segment=_list_fixed(table["gt_segment"], (2,))[0].astype(np.int64),
            gt_fids=_list_fixed(table["gt_fids"], (2,))[0].astype(np.int64),
            gt_boxes=np.clip(gt_boxes.astype(np.float32) / scale[video_index][:, None, :], 0.0, 1.0),
            gt_box_valid=_list_fixed(table["gt_box_valid"], (T,))[0].astype(bool),
            sample_ids=[s for row in table["sample_ids"].to_pylist() for s in row],
            video_ids=table["video_id"].to_pylist(),
            bow_resolvable=(_list_flat(table["bow_resolvable"]).astype(bool)
                            if "bow_resolvable" in table.column_names else None),
            entity_ids=ent,
        )

    def __len__(self) -> int:
        return len(self.video_index)

    @property
    def num_videos(self) -> int:
        return len(self.frame_feats)

    @property
    def features(self) -> np.ndarray:
        """Region features per video (what ``DataInfo.train_features`` carries)."""
        return self.region_feats

    def batch(self, idx, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        """Tensors for sentences ``idx`` (the tube batch contract: docs/shards.md, "Tube batches")."""
        idx = np.asarray(idx, dtype=np.int64)
        vids = self.video_index[idx]
        dev = torch.device(device)
        t = lambda a, dtype=None: torch.from_numpy(np.ascontiguousarray(a)).to(dev, dtype)  # noqa: E731
        if self.entity_ids is not None:
            ent = self.entity_ids[idx]
        else:  # a mapped copy written before the field existed
            ent = fallback_entity_ids((self.tokens[idx] != PAD_ID).sum(1), self.subject_pos[idx],
                                      self.rel_subj[idx], self.rel_obj[idx], self.tokens.shape[1])
        return {
            "frame_feats": t(self.frame_feats[vids], torch.float32),
            "region_feats": t(self.region_feats[vids], torch.float32),
            "boxes": t(self.boxes[vids]),
            "frame_valid": t(self.frame_valid[vids]),
            "frame_ids": t(self.frame_ids[vids]),
            "tokens": t(self.tokens[idx]),
            "token_mask": t(self.tokens[idx] != PAD_ID),
            "subject_pos": t(self.subject_pos[idx]),
            "subject_class": t(self.subject_class[idx]),
            "sentence_form": t(self.sentence_form[idx]),
            "rel_subj": t(self.rel_subj[idx]),
            "rel_obj": t(self.rel_obj[idx]),
            "rel_pred": t(self.rel_pred[idx]),
            "rel_valid": t(self.rel_valid[idx]),
            "tubes": t(self.tubes[vids]),
            "gt_segment": t(self.gt_segment[idx]),
            "gt_fids": t(self.gt_fids[idx]),
            "gt_boxes": t(self.gt_boxes[idx]),
            "gt_box_valid": t(self.gt_box_valid[idx]),
            "video_index": t(vids),
            **({} if self.bow_resolvable is None else {"bow_resolvable": t(self.bow_resolvable[idx])}),
            "entity_ids": t(ent, torch.int64),
        }
