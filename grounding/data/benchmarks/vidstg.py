"""Generated VidSTG benchmark for weakly-supervised spatio-temporal tube grounding (task ``tube``).

VidSTG's boxes are VidOR trajectories and its features would need the videos, neither of which
can be downloaded here, so this module plants both on top of the real annotations
(``vidstg/{val,test}_annotations.json`` in the annotation folder): every annotation item (one
VidOR relation instance and its ``used_segment``) with its real declarative sentence and real
questions, its real objects and categories (78 VidOR categories), its real relation
(subject, predicate, object; 50 predicates) and its real temporal extents. One output row is one
item (the "video" of the grounding task: its ``used_segment``) holding all of its sentences, so
features are stored once per video (a video has ~2.2 sentences).

Frames. ``T`` frames [32] evenly cover ``used_segment`` (end **inclusive** in VidSTG): frame
``t`` is ``begin + floor((t + 0.5) * n / T)`` with ``n = end - begin + 1``; a segment with fewer
than ``T`` frames keeps all of them and pads (``frame_valid`` False, ``frame_ids`` -1). The GT
frames are the sampled frames inside ``temporal_gt`` (end **exclusive**): ``begin <= f < end``; a GT
span that no sampled frame hits (about 1% of the items at T=32) is given the sampled frame
nearest its centre, so every sentence has a non-empty ground truth. ``gt_segment`` is the
half-open ``[first, last + 1)`` on the grid, ``gt_fids`` the real ``temporal_gt``.

What a video looks like (every knob is a field of :class:`VidSTGConfig`, default in brackets):

* ``N`` proposals per frame [10], region features of ``Dr`` dims [64] and frame features of ``Df``
  dims [64], stored as ``feature_dtype`` [float16]; boxes in the item's real ``width x height``.
* Prototypes (``grounding.data.benchmarks.planting.text_prototypes``): per category from its words' GloVe
  vectors (``class_noise`` [1.0]) and per predicate from its words' vectors (``word_noise``
  [0.5]), separately for the region and the frame feature spaces (hidden width ``proto_hidden``
  [256]).
* Trajectories: every object of the item moves smoothly: size ``U(0.12, 0.4)`` of the frame width
  and ``U(0.2, 0.6)`` of its height, a velocity that changes by ``N(0, motion)`` [0.01 of the frame
  per sampled frame] and a size that drifts by 2% per frame, reflected at the frame border. The
  relation's subject and object are present over the GT span extended on each side by
  ``U(0, extend)`` [0.5] of the rest of the video; every other object over a random contiguous span
  of ``U(0.3, 1)`` of the video. ``distractor_min..distractor_max`` [1..2] extra objects of
  categories drawn in proportion to their training co-occurrence with the subject's category
  (the real objects of the item are distractors too: many items hold several objects of the
  subject's category, which only the relation tells apart). At most ``N - 3`` objects per frame.
* Proposals with a known IoU profile: each visible object gets one proposal, concentric with
  its box and scaled to an IoU drawn from ``U(0.55, 0.95)`` with probability ``p_good`` [0.85]
  and from ``U(0.3, 0.5)`` otherwise; the relation's subject and object get a second, shifted
  proposal with IoU ``U(0.1, 0.45)``; the remaining slots are background boxes with IoU < 0.3 to
  every object. The slots are shuffled per frame (linking is needed to follow an object).
* Region features: an object's proposal carries ``sqrt(IoU) * signal * exp(signal_jitter * z) *
  proto_category`` [1.0, 0.3] plus an identity vector of the object (norm ``identity`` [0.5], what
  the linking's cosine follows), and, for the relation's subject and object (and mirror decoys,
  see "Structure"), ``relation * sqrt(IoU) * profile_t * pattern`` [0.8] with the relation's
  profile over frames ``profile_t`` = 1 inside the GT span, ``relation_leak`` [0.3] outside it
  where subject and object are both visible (they are around each other), 0 elsewhere, and the
  pattern of the object's role (agent or patient; the predicate's prototype itself at
  ``role_asymmetry`` 0), plus ``attribute * sqrt(IoU) *`` the mean prototype of the object's
  attribute words ("Structure"). Every proposal carries the
  video's scene style, a unit vector times ``scene_strength`` [1.5] (times ``style_strength``
  [0.8] for objects, 1 for background), and isotropic noise of norm ``feature_noise`` [0.8].
* Frame features: the scene style (times ``scene_strength``), ``frame_object`` [0.3] times the
  mean prototype of the visible objects, ``frame_relation`` [0.6] times ``profile_t`` times the
  predicate's prototype, and noise of norm ``feature_noise``.
* Tubes: ``M = N`` tubes per video linked by VCMA Eq. 4 (:func:`grounding.data.tube.link_tubes`,
  ``alpha`` [0.5]) on the planted region features and boxes.

Text. Sentences are tokenised by :func:`grounding.data.tube.tube_tokens` (lower-case, punctuation
dropped), at most ``L`` [24] tokens (the longest VidSTG sentence has 21 words). The ``vocab``
side table holds every word of the val/test sentences, category names and predicates (id 0
``<PAD>``, 1 ``<UNK>``) with a 300-d vector: the real GloVe 840B row of the Charades-STA table
when the word is there, else the YouCook2 GloVe table's row (``youcook2_bb/causal_repo/
word_embedding_glove.json``), else a fixed pseudo-random vector of GloVe's mean norm (seeded by
the word; the manifest's ``extra.word_vectors`` counts each source). ``classes`` holds the
categories with the mean vector of their words. ``subject_pos``, ``rel_subj``/``rel_obj`` come
from the noun-lexicon heuristic of :mod:`grounding.data.tube`, ``entity_ids`` (at most ``E`` [8]
entity phrases per sentence) from its phrase rule (:func:`grounding.data.tube.entity_ids`); ``R`` [1]
relation per sentence
(VidSTG's ``used_relation``; its predicate words, at most ``P`` [4], in ``rel_pred``).
``subject_class`` is the category of the sentence's target (the subject for declaratives; for
questions the subject or the object, as annotated).

Structure (issue 23). Real VidSTG puts several objects of one category in a video (60% of the
sentences' targets share their item with another object of their category; in 21% of the items
the relation's subject and object are of one category) and its sentences tell them apart by the
relation and by the words bound to each noun ("an adult in white clothes is behind another adult
in yellow clothes"). Three knobs plant that from the item's own annotation; no object is added
(the decoys are the item's own objects, rendered as above):

* ``role_asymmetry`` rho [1.0]: the relation's pattern is asymmetric. Its subject (the agent)
  carries ``unit(proto_predicate + rho * role_predicate)``, its object (the patient)
  ``unit(proto_predicate - rho * role_predicate)``, with ``role_predicate`` a unit vector per
  predicate orthogonal to its prototype, so the two roles share the predicate's part and their
  cosine is ``(1 - rho^2) / (1 + rho^2)`` (0 at rho = 1). At 0 both carry the predicate's prototype.
* ``attribute`` [1.0] and ``attribute_rate`` [0.5]: the attribute words
  (:data:`grounding.data.tube.ATTRIBUTE_WORDS`, 21 colour and pattern words; at least one in 54% of
  the sentences) are bound to the sentence's nouns by :func:`grounding.data.tube.bind_attributes`
  (each to the nearer of the target's noun phrase and the other argument's, the target's on a
  tie). The target object takes the words its sentences bind to it and the relation's other
  argument the words bound to the other phrase, over all the item's sentences; every object left
  without a word takes one, drawn with the words' frequency in the sentences, with probability
  ``attribute_rate`` (so carrying an attribute does not mark a described object). The prototypes
  are ``text_prototypes`` of the words' GloVe vectors (noise ``word_noise``), planted with
  weight ``attribute`` (region features only).
* ``mirror_decoys`` [1.0]: for each object a sentence targets, with this probability one rendered
  object of the item of the same category outside the relation (drawn at random among them; the
  co-occurrence distractors, which can be of the relation object's category, never are) becomes
  its mirror: it carries the relation's pattern in the **other** role and the attribute words the
  sentences bind to the relation's other argument (where there are none, it draws one as every
  object without a word does), and is present over the GT span extended as the relation's own
  objects are ("the child in red watches the dog in black" gets a child in black being watched).
  Where the relation's subject and object share a category the other argument already is such a
  mirror and no decoy is made.

At ``role_asymmetry`` = ``attribute`` = ``mirror_decoys`` = 0 the features are byte for byte the
earlier generator's: the structure draws come from their own streams (``[seed, split, index, 1]``
per item, ``[seed, 7919, 1]`` for the role and attribute prototypes). The earlier defaults are
``--set role_asymmetry=0 --set attribute=0 --set mirror_decoys=0``.

The flag ``bow_resolvable`` (a per-sentence column, dims ``bow_resolvable`` = 1): whether a bag of
the sentence's words resolves its target, :func:`grounding.data.tube.bow_resolvable`. The bag is
credited with what it can know without the sentence's structure: the target's category, every
attribute word of the sentence (not the noun it belongs to), the predicate (not who plays which
role) and, in a declarative, that the target is the relation's subject (VidSTG's declaratives
always describe their subject, a convention a bag of words learns from the wh-word's absence). It
scores each object of the target's category that is visible in a ground-truth frame: 1 for
carrying the relation's pattern (in the target's role for a declarative, in either role for a
question) plus 1 per attribute word of the object in the sentence. The target is
bag-of-words-resolvable iff it scores strictly above every other; otherwise only the structure
(which noun is the subject of the predicate, which attribute goes with which noun) tells it apart.
The flag does not promise that the structure does: where the bag's tie is with an object that the
structure cannot tell apart either (symmetric roles at ``role_asymmetry`` 0, a drawn attribute that
happens to be the sentence's), the sentence is in the structure subset all the same; the
calibration's structure template measures how much of the subset is resolvable. The metrics report both subsets (:mod:`grounding.metrics.tube`, suffixes ``_bow`` and
``_structure``). Because a declarative's bag knows its target's role, the structure subset is
mostly questions ("who is watching the adult in yellow?" and "who is the adult in white
watching?" have one bag): compare a method's ``_structure`` numbers with its interrogative ones,
not only with ``_bow``. Attribute binding alone could decide a declarative only through a decoy
in the target's own role with the other argument's attribute words, and such a decoy makes every
sentence about the target that binds it no attribute of its own ambiguous ("who watches the dog in
black?" with two watching children): it would fit 221 of the 5,147 targets that have a twin (4%),
so the generator plants none.

Splits. The real val list becomes ``train`` and ``val`` (by VidOR video: ``val_fraction`` [0.15]
of the videos, seeded), the real test list ``test_iid``. ``test_ood`` is a documented real shift,
as in the youcook2 benchmark: ``heldout_classes`` [6] categories, drawn from the middle of the
frequency ranking (ranks K/8..K/2 by relation count), never appear in train/val/test_iid (items
whose relation subject, object or any sentence target is of such a category are moved to
``test_ood``, other objects of those categories are not rendered); the OOD items are rendered in
``ood_styles`` [32] unseen scene styles (fresh vectors instead of the ``styles`` [8] training
pool) with distractors drawn *against* the training co-occurrence (``1/(1+co)^2``).
``limit`` [None] caps the items per split (tests and smoke runs).

The held-out categories are drawn from ``[seed, 7919]`` after the prototypes and styles, so they
depend on ``seed`` and on ``styles``/``ood_styles`` (the manifest's ``extra.heldout_classes`` names
them; at the defaults: car, cellphone, cup, guitar, horse, stool).

Calibration (on the ``tubemil`` baseline alone, one seed, 4 epochs, the full splits; no other
method was run on this generator while choosing the knobs; before the structure knobs, i.e. at
``role_asymmetry`` = ``attribute`` = ``mirror_decoys`` = 0). Random is about 3% m_vIoU and the
Upper Bound about 71% (the IoU profile of the best proposals), so the target was a baseline well
inside that range, an OOD split that costs the baseline something, and a temporal task that is not
solved by the frame features alone:

1. first setting (``class_noise`` 0.5, ``frame_relation`` 1.0, ``styles`` 32, ``scene_strength`` 1,
   no ``relation_leak``): tubemil 19.4 IID / 25.1 OOD m_vIoU, m_tIoU 0.70: the segment was too
   easy, and the OOD split was *easier* than IID (its targets are less often persons, 52% against
   68%; person targets share the video with more same-category objects and are named by other
   words, "man", than their category, "adult");
2. ``relation_leak`` 0.3, ``class_noise`` 1.0 and ``frame_relation`` 0.6: 14.4 IID / 19.3 OOD,
   m_tIoU 0.55 (held-out categories less predictable from their word vectors did not close the
   OOD gap);
3. ``styles`` 8 and ``scene_strength`` 1.5 in addition (the defaults): 16.0 IID / 16.3 OOD m_vIoU,
   m_tIoU 0.56 IID / 0.53 OOD: the unseen scene styles now cost the OOD split about what its easier
   composition gains (the held-out draw also changed with ``styles``, to the categories above).
   Whole-video with the best proposal per frame: 27.4 IID / 33.7 OOD; Upper Bound 70.7 / 70.6.

Calibration of the structure knobs (issue 23; ``bench/vidstg_structure_calibration.py``, every
candidate tried in ``bench/results/vidstg_structure_calibration.json``), again on ``tubemil`` and,
instead of other methods, the oracle templates alone. The templates need no training: with the GT
segment given they take, per frame, the proposal whose region feature is closest to a template of
the generator's own prototypes: ``bow_form`` = the bag of words of the flag (category + the
predicate without its roles, with the agent's pattern in a declarative, + every attribute word of
the sentence), ``structure`` = category + the target's role pattern + the attribute words bound to
the target. m_vIoU % on test_iid, all / bow subset / structure subset; first at ``limit`` 800 (3
epochs, seed 0; in these rows the decoys could also be co-occurrence distractors, since excluded):

=================================  =========  ==================  ==================  ==================  ==================
role_asymmetry, attribute, decoys  structure  template bow_form    template structure  tubemil             tubemil, GT segment
=================================  =========  ==================  ==================  ==================  ==================
0, 0, 0 (the earlier defaults)     11%        58.5 / 61.2 / 37.0  (same as bow_form)  17.0 / 16.9 / 17.8  34.1 / 34.2 / 33.9
1, 0.5, 1                          32%        53.9 / 63.1 / 34.4  62.2 / 64.2 / 57.8  14.7 / 15.7 / 12.6  30.4 / 33.5 / 23.8
1, 1, 1                            32%        49.4 / 60.2 / 26.4  62.6 / 65.1 / 57.2  15.1 / 16.6 / 12.0  30.9 / 35.0 / 22.3
2, 1, 1                            32%        50.1 / 61.2 / 26.4  64.5 / 65.9 / 61.4  15.1 / 16.4 / 12.4  31.0 / 34.8 / 23.1
1, 1, 0.5                          22%        52.1 / 59.2 / 26.7  62.9 / 64.8 / 56.1  16.2 / 16.9 / 13.8  32.8 / 35.0 / 25.2
=================================  =========  ==================  ==================  ==================  ==================

and on the full splits, 4 epochs, seed 0, as the first calibration (Random 3.2 / 3.3 / 3.0, Upper
Bound 70.7 / 70.7 / 70.5 at both settings):

=================================  =========  ==================  ==================  ==================  ==================
0, 0, 0 (the earlier defaults)     12%        58.6 / 61.4 / 38.4  (same as bow_form)  17.9 / 17.5 / 21.0  34.9 / 34.6 / 36.6
1, 1, 1 (the defaults)             32%        50.7 / 60.7 / 29.2  63.0 / 65.7 / 57.1  15.5 / 16.5 / 13.5  27.6 / 30.1 / 22.2
=================================  =========  ==================  ==================  ==================  ==================

Chosen: ``role_asymmetry`` 1 (orthogonal roles that still share the predicate's part; 2 lets the
structure template resolve a little more but leaves less of the predicate a bag can match),
``attribute`` 1 (attributes as visible as the category; at 0.5 they mislead the bag less),
``mirror_decoys`` 1 (a structure subset of 32% of the sentences, about 3,000 of test_iid's 9,250,
rather than 22%); ``attribute_rate`` 0.5 was not varied. What it gives: the structure subset is what
its name says, the structure template resolves it (57.1, against 65.7 on the bag-of-words subset)
while the bag falls to 29.2, below the category alone (31.8: the attributes it cannot bind pull it
to the wrong object); at the earlier defaults (roles symmetric, no attributes) nothing resolves
its 12% of sentences (questions about a relation between two objects of one category). ``tubemil`` stays well above
Random (15.5) and is worse on the structure subset (13.5 against 16.5; on the GT segment 22.2
against 30.1), but that gap is mostly the subset's composition: 93% of the structure subset are
questions (a declarative's bag knows the target's role), which ``tubemil`` grounds poorly whatever
the subset (its box query's grounded word is the wh-word). Within questions it scores 10.3 on the
bag-of-words subset and 13.6 on the structure subset (GT segment 19.1 / 22.3; the bag template
56.7 / 29.1); within declaratives (211 structure sentences) 20.2 / 12.5 (GT segment 36.8 / 20.7).
Compare methods on the structure subset within a sentence form (the script's per form x subset
cells), not only against the bag-of-words subset.

Cost: about 5 ms of CPU per item; the default benchmark (8,566 items, 19,259 sentences, ~450 MB)
took 63 s of CPU in all (user + system, 2 worker processes; 5 min wall on the shared, loaded 2-core
machine), the smoke instance a few seconds. The structure knobs add about a fifth (the full splits
at the earlier and at the chosen defaults: 162 and 192 s wall, 2 workers, in the calibration).

Every item draws from its own generators seeded by ``[seed, split, index]`` (and ``[seed, split,
index, 1]`` for the structure), so the data does not depend on ``limit`` or on the order of
generation; prototypes and styles come from ``[seed, 7919]`` (``[seed, 7919, 1]`` for the role
and attribute prototypes).
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import hashlib
import json
import math
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa

from ... import __version__
from ..annotations import annotations_dir, file_digest, read_text
from .planting import text_prototypes, unit
from ..schema import classes_schema, vocab_schema
from ..shards import DatasetWriter
from ..tube import (ATTRIBUTE_WORDS, DECLARATIVE, E_MAX, INTERROGATIVE, PAD_ID, UNK_ID, bind_attributes,
                    bow_resolvable, box_iou, category_words, entity_ids, link_tubes, noun_lexicon,
                    relation_positions, subject_position, tube_table, tube_tokens)

PRODUCER = "grounding.data.vidstg"  # recorded in manifests and their digest: kept as before the move
SPLITS = ("train", "val", "test_iid", "test_ood")
SOURCE_FILES = ("vidstg/val_annotations.json", "vidstg/test_annotations.json",
                "charades_sta/glove_vocab_w2id_counter.json", "charades_sta/glove_vectors_1146x300_float32.npy",
                "youcook2_bb/causal_repo/word_embedding_glove.json")


@dataclasses.dataclass(frozen=True)
class VidSTGConfig:
    seed: int = 0
    T: int = 32
    N: int = 10
    Df: int = 64
    Dr: int = 64
    L: int = 24
    R: int = 1
    P: int = 4
    E: int = E_MAX
    feature_dtype: str = "float16"
    proto_hidden: int = 256
    class_noise: float = 1.0
    word_noise: float = 0.5
    motion: float = 0.01
    extend: float = 0.5
    distractor_min: int = 1
    distractor_max: int = 2
    p_good: float = 0.85
    signal: float = 1.0
    signal_jitter: float = 0.3
    identity: float = 0.5
    relation: float = 0.8
    frame_object: float = 0.3
    frame_relation: float = 0.6
    relation_leak: float = 0.3
    style_strength: float = 0.8
    scene_strength: float = 1.5
    feature_noise: float = 0.8
    styles: int = 8
    ood_styles: int = 32
    alpha: float = 0.5
    val_fraction: float = 0.15
    heldout_classes: int = 6
    # structure (issue 23; module docstring "Structure"); role_asymmetry = attribute = mirror_decoys = 0
    # reproduce the earlier generator's features
    role_asymmetry: float = 1.0
    attribute: float = 1.0
    attribute_rate: float = 0.5
    mirror_decoys: float = 1.0
    limit: int | None = None

    def __post_init__(self):
        checks = [
            (self.T >= 2, "T must be >= 2"),
            (self.N >= 4, "N must be >= 4 (target, its second proposal, background)"),
            (min(self.Df, self.Dr, self.L, self.R, self.P, self.E) >= 1, "Df, Dr, L, R, P and E must be >= 1"),
            (self.feature_dtype in ("float16", "float32"), "feature_dtype must be float16 or float32"),
            (0 <= self.p_good <= 1, "p_good must be in [0, 1]"),
            (0 <= self.distractor_min <= self.distractor_max, "need 0 <= distractor_min <= distractor_max"),
            (0 <= self.extend <= 1, "extend must be in [0, 1]"),
            (0 < self.val_fraction < 1, "val_fraction must be in (0, 1)"),
            (self.styles >= 1 and self.ood_styles >= 1, "styles and ood_styles must be >= 1"),
            (min(self.class_noise, self.word_noise, self.motion, self.signal, self.signal_jitter, self.identity,
                 self.relation, self.relation_leak, self.frame_object, self.frame_relation, self.style_strength,
                 self.scene_strength, self.feature_noise, self.alpha) >= 0, "noise levels and strengths must be >= 0"),
            (self.heldout_classes >= 0, "heldout_classes must be >= 0"),
            (min(self.role_asymmetry, self.attribute) >= 0, "role_asymmetry and attribute must be >= 0"),
            (0 <= self.attribute_rate <= 1 and 0 <= self.mirror_decoys <= 1,
             "attribute_rate and mirror_decoys must be in [0, 1]"),
            (self.limit is None or self.limit >= 1, "limit must be >= 1 or None"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(f"VidSTGConfig: {msg}")

    @property
    def dims(self) -> dict[str, int]:
        return {"T": self.T, "N": self.N, "Df": self.Df, "Dr": self.Dr, "L": self.L, "R": self.R, "P": self.P,
                "M": self.N, "bow_resolvable": 1, "E": self.E}


# --------------------------------------------------------------------------- annotations
def predicate_words(predicate: str) -> list[str]:
    """``in_front_of`` -> ``[in, front, of]``; ``play(instrument)`` -> ``[play, instrument]``."""
    return category_words(predicate)


@dataclasses.dataclass
class VidSTGAnnotations:
    items: dict[str, list[dict]]  # "val"/"test" -> items
    categories: list[str]
    predicates: list[str]
    words: list[str]  # id -> word (0 <PAD>, 1 <UNK>)
    counts: np.ndarray
    vectors: np.ndarray  # [V, 300]
    sources: dict[str, int]
    digests: dict[str, str]

    @classmethod
    def load(cls, folder: Path | None = None) -> "VidSTGAnnotations":
        folder = Path(folder) if folder else annotations_dir()
        items = {sp: json.loads(read_text(folder / "vidstg" / f"{sp}_annotations.json")) for sp in ("val", "test")}
        cats, preds, counter = set(), set(), collections.Counter()
        for its in items.values():
            for it in its:
                cats.update(o["category"] for o in it["subject/objects"])
                preds.add(it["used_relation"]["predicate"])
                for s in it["captions"] + it["questions"]:
                    counter.update(tube_tokens(s["description"]))
        categories, predicates = sorted(cats), sorted(preds)
        extra = [w for c in categories + predicates for w in category_words(c) if w not in counter]
        extra += [w for w in ATTRIBUTE_WORDS if w not in counter]
        words = ["<PAD>", "<UNK>"] + sorted(counter, key=lambda w: (-counter[w], w)) + sorted(set(extra))
        counts = np.array([0, 0] + [counter[w] for w in words[2:]], np.int64)
        vectors, sources = _word_vectors(folder, words)
        digests = {f: file_digest(folder / f) for f in SOURCE_FILES}
        return cls(items, categories, predicates, words, counts, vectors, sources, digests)

    @functools.cached_property
    def w2id(self) -> dict[str, int]:
        return {w: i for i, w in enumerate(self.words)}

    @functools.cached_property
    def cat_id(self) -> dict[str, int]:
        return {c: i for i, c in enumerate(self.categories)}

    @functools.cached_property
    def lexicon(self) -> frozenset[str]:
        return noun_lexicon(self.categories)

    def class_vectors(self) -> np.ndarray:
        w2id = self.w2id
        return np.stack([self.vectors[[w2id[w] for w in category_words(c)]].mean(0) for c in self.categories])

    def predicate_vectors(self) -> np.ndarray:
        w2id = self.w2id
        return np.stack([self.vectors[[w2id[w] for w in predicate_words(p)]].mean(0) for p in self.predicates])


def _word_vectors(folder: Path, words: list[str]) -> tuple[np.ndarray, dict[str, int]]:
    sta = folder / "charades_sta"
    w2id = json.loads(read_text(sta / "glove_vocab_w2id_counter.json"))["w2id"]
    glove = np.load(sta / "glove_vectors_1146x300_float32.npy")
    yc2 = json.loads(read_text(folder / "youcook2_bb" / "causal_repo" / "word_embedding_glove.json"))
    mean_norm = float(np.linalg.norm(glove[1:], axis=1).mean())
    out = np.zeros((len(words), 300), np.float32)
    sources = collections.Counter()
    for i, w in enumerate(words):
        if i in (PAD_ID, UNK_ID):
            continue
        if w in w2id:
            out[i], src = glove[w2id[w]], "glove_charades_sta"
        elif w in yc2:
            out[i], src = np.asarray(yc2[w], np.float32), "glove_youcook2"
        else:
            seed = int.from_bytes(hashlib.sha256(w.encode()).digest()[:8], "little")
            out[i], src = mean_norm * unit(np.random.default_rng(seed).standard_normal(300)), "pseudo_random"
        sources[src] += 1
    return out, dict(sources)


# ------------------------------------------------------------------------------- world
@dataclasses.dataclass
class World:
    cls_r: np.ndarray  # [K, Dr]
    cls_f: np.ndarray  # [K, Df]
    pred_r: np.ndarray  # [Pn, Dr]
    pred_f: np.ndarray  # [Pn, Df]
    styles_r: np.ndarray  # [S, Dr]
    styles_f: np.ndarray
    ood_styles_r: np.ndarray
    ood_styles_f: np.ndarray
    co: np.ndarray  # [K, K] training co-occurrence (objects of the same item)
    heldout: np.ndarray  # [K] bool
    role_r: np.ndarray  # [Pn, Dr] unit, orthogonal to pred_r: agent = unit(pred + rho role), patient = unit(pred - rho role)
    attr_r: np.ndarray  # [A, Dr] unit prototypes of ATTRIBUTE_WORDS
    attr_freq: np.ndarray  # [A] the attribute words' share of the val/test sentences' attribute tokens

    def role_pattern(self, pred: int, agent: bool, rho: float) -> np.ndarray:
        """``[Dr]`` the relation's pattern on its subject (``agent``) or object: ``pred_r`` itself at
        ``rho`` = 0 (the earlier generator's symmetric pattern), else ``unit(pred_r +- rho role_r)``."""
        if not rho:
            return self.pred_r[pred]
        return unit(self.pred_r[pred] + (rho if agent else -rho) * self.role_r[pred])


def _relation_classes(it: dict, cat_id: dict[str, int]) -> set[int]:
    cat = {o["tid"]: o["category"] for o in it["subject/objects"]}
    r = it["used_relation"]
    tids = {r["subject_tid"], r["object_tid"]} | {s["target_id"] for s in it["captions"] + it["questions"]}
    return {cat_id[cat[t]] for t in tids if t in cat}


def build_world(cfg: VidSTGConfig, ann: VidSTGAnnotations) -> World:
    rng = np.random.default_rng([cfg.seed, 7919])
    K = len(ann.categories)
    cvec, pvec = ann.class_vectors(), ann.predicate_vectors()
    cls_r = text_prototypes(cvec, cfg.Dr, cfg.proto_hidden, cfg.class_noise, rng)
    cls_f = text_prototypes(cvec, cfg.Df, cfg.proto_hidden, cfg.class_noise, rng)
    pred_r = text_prototypes(pvec, cfg.Dr, cfg.proto_hidden, cfg.word_noise, rng)
    pred_f = text_prototypes(pvec, cfg.Df, cfg.proto_hidden, cfg.word_noise, rng)
    styles = [unit(rng.standard_normal((n, d))) for n in (cfg.styles, cfg.ood_styles) for d in (cfg.Dr, cfg.Df)]
    cat_id = {c: i for i, c in enumerate(ann.categories)}
    freq = np.zeros(K, np.int64)
    for its in ann.items.values():
        for it in its:
            freq[sorted(_relation_classes(it, cat_id))] += 1
    order = np.argsort(-freq, kind="stable")
    band = order[K // 8: K // 2]
    heldout = np.zeros(K, bool)
    if cfg.heldout_classes:
        heldout[rng.choice(band, size=min(cfg.heldout_classes, len(band)), replace=False)] = True
    co = np.zeros((K, K))
    for it in ann.items["val"]:
        u = sorted({cat_id[o["category"]] for o in it["subject/objects"]})
        co[np.ix_(u, u)] += 1
    np.fill_diagonal(co, 0)
    # the structure prototypes draw from their own stream: every draw above is as it was before them
    srng = np.random.default_rng([cfg.seed, 7919, 1])
    g = srng.standard_normal(pred_r.shape)
    role_r = unit(g - (g * pred_r).sum(1, keepdims=True) * pred_r)
    w2id = ann.w2id
    attr_r = text_prototypes(ann.vectors[[w2id[w] for w in ATTRIBUTE_WORDS]], cfg.Dr, cfg.proto_hidden, cfg.word_noise,
                             srng)
    counts = np.array([ann.counts[w2id[w]] for w in ATTRIBUTE_WORDS], np.float64) + 1
    return World(cls_r, cls_f, pred_r, pred_f, styles[0], styles[1], styles[2], styles[3], co, heldout,
                 role_r, attr_r, counts / counts.sum())


# ------------------------------------------------------------------------------ planting
def frame_grid(begin: int, end: int, T: int) -> tuple[np.ndarray, np.ndarray]:
    """Sampled frame ids over ``[begin, end]`` (end inclusive) and their validity."""
    n = end - begin + 1
    if n >= T:
        return begin + np.floor((np.arange(T) + 0.5) * n / T).astype(np.int64), np.ones(T, bool)
    ids = np.full(T, -1, np.int64)
    ids[:n] = np.arange(begin, end + 1)
    return ids, np.arange(T) < n


def gt_on_grid(fids: np.ndarray, valid: np.ndarray, begin: int, end: int) -> np.ndarray:
    """``[T]`` bool: sampled frames inside ``[begin, end)`` (end exclusive); never empty (the
    nearest sampled frame to the span's centre when no sampled frame falls inside)."""
    g = valid & (fids >= begin) & (fids < end)
    if not g.any():
        centre = (begin + max(end - 1, begin)) / 2
        g[int(np.argmin(np.where(valid, np.abs(fids - centre), np.inf)))] = True
    return g


def _fold(x: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Reflect ``x`` into ``[lo, hi]`` (a path bouncing off the borders)."""
    span = np.maximum(hi - lo, 1e-9)
    y = np.mod(x - lo, 2 * span)
    return lo + np.where(y > span, 2 * span - y, y)


def trajectories(rng: np.random.Generator, O: int, T: int, motion: float) -> np.ndarray:
    """``[O, T, 4]`` normalised smooth box tracks: size ``U(0.12, 0.4) x U(0.2, 0.6)`` drifting by
    2% per frame, centre driven by a velocity ``v_t = 0.9 v_{t-1} + N(0, motion)``, reflected at the
    frame border."""
    size0 = np.stack([rng.uniform(0.12, 0.4, O), rng.uniform(0.2, 0.6, O)], 1)  # [O, 2]
    size = np.clip(size0[:, None] * np.exp(np.cumsum(rng.normal(0, 0.02, (O, T, 2)), 1)), 0.05, 0.9)
    c0 = rng.uniform(0, 1, (O, 2)) * (1 - size0) + size0 / 2
    v = np.empty((O, T, 2))
    acc = rng.normal(0, 2 * motion, (O, 2))
    noise = rng.normal(0, motion, (O, T, 2))
    for t in range(T):
        acc = 0.9 * acc + noise[:, t]
        v[:, t] = acc
    c = _fold(c0[:, None] + np.cumsum(v, 1), size / 2, 1 - size / 2)
    return np.clip(np.concatenate([c - size / 2, c + size / 2], -1), 0, 1)


def scaled(box: np.ndarray, iou: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Boxes concentric with ``box [n, 4]`` whose IoU with it is ``iou [n]`` before clipping
    (enlarged: area ratio 1/iou; or shrunk: area ratio iou, each with probability 1/2)."""
    cx, cy = (box[:, 0] + box[:, 2]) / 2, (box[:, 1] + box[:, 3]) / 2
    w, h = box[:, 2] - box[:, 0], box[:, 3] - box[:, 1]
    area = np.where(rng.random(len(box)) < 0.5, 1 / iou, iou)
    aspect = np.exp(rng.uniform(-0.5, 0.5, len(box)) * np.abs(np.log(area)))  # sx/sy
    sx = np.sqrt(area * aspect)
    small = area < 1  # a shrunk box must fit inside: sx, sy <= 1
    sx = np.where(small, np.clip(sx, area, 1), sx)
    sy = area / sx
    return np.clip(np.stack([cx - sx * w / 2, cy - sy * h / 2, cx + sx * w / 2, cy + sy * h / 2], 1), 0, 1)


def shifted(box: np.ndarray, iou: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Same-size boxes shifted along x or y so that IoU = ``(s - d) / (s + d)`` = ``iou``."""
    w, h = box[:, 2] - box[:, 0], box[:, 3] - box[:, 1]
    along_x = rng.random(len(box)) < 0.5
    sign = np.where(rng.random(len(box)) < 0.5, -1.0, 1.0)
    d = np.where(along_x, w, h) * (1 - iou) / (1 + iou) * sign
    out = box.copy()
    out[:, [0, 2]] += np.where(along_x, d, 0)[:, None]
    out[:, [1, 3]] += np.where(along_x, 0, d)[:, None]
    return np.clip(out, 0, 1)


def background(rng: np.random.Generator, tracks: np.ndarray, visible: np.ndarray, C: int = 24) -> np.ndarray:
    """``[T, C, 4]`` random boxes per frame, the ones with IoU < 0.3 to every visible object
    first (``tracks [O, T, 4]``, ``visible [O, T]``)."""
    T = tracks.shape[1]
    wh = np.stack([rng.uniform(0.08, 0.45, (T, C)), rng.uniform(0.1, 0.5, (T, C))], -1)
    xy = rng.uniform(0, 1, (T, C, 2)) * (1 - wh)
    cand = np.concatenate([xy, xy + wh], -1)
    if len(tracks):
        iou = box_iou(cand[:, :, None], tracks.transpose(1, 0, 2)[:, None])  # [T, C, O]
        bad = (np.where(visible.T[:, None], iou, 0.0) >= 0.3).any(-1)
        cand = np.take_along_axis(cand, np.argsort(bad, axis=1, kind="stable")[..., None], 1)
    return cand


def _sentences(cfg: VidSTGConfig, ann: VidSTGAnnotations, it: dict, track_of: dict) -> list[tuple]:
    """``(form, key, index, sentence, tokens, target tid, subject_pos)`` of the item's captions, then
    its questions."""
    rel = it["used_relation"]
    out = []
    for form, key in ((DECLARATIVE, "captions"), (INTERROGATIVE, "questions")):
        for j, s in enumerate(it[key]):
            toks = tube_tokens(s["description"])[: cfg.L]
            target = int(s.get("target_id", rel["subject_tid"]))
            if target not in track_of:  # annotations always target the relation's subject or object
                target = rel["subject_tid"]
            out.append((form, key, j, s, toks, target, subject_position(toks, form, ann.lexicon)))
    return out


def _structure(cfg: VidSTGConfig, world: World, ann: VidSTGAnnotations, sents: list[tuple], track_of: dict,
               obj_cls: np.ndarray, n_core: int, real: list[bool], pres: list, span: tuple[int, int, int],
               srng: np.random.Generator) -> tuple[list, list[set]]:
    """Per rendered object: its role in the relation (True agent, False patient, None none) and its
    attribute words; mirror decoys take the other role and extend their presence over the GT span
    (``pres`` changes in place); only the item's own objects (``real``) become decoys. Module
    docstring, "Structure"."""
    O = len(obj_cls)
    gs, ge, Tv = span
    pattern: list = [True] + [False] * (n_core - 1) + [None] * (O - n_core)  # subject: agent, object: patient
    attrs: list[set] = [set() for _ in range(O)]
    other_of = lambda i: (1 - i) if n_core == 2 and i < 2 else None  # noqa: E731
    targets: list[int] = []
    for form, key, j, s, toks, target, sp in sents:
        ti = track_of[target]
        mine, theirs = bind_attributes(toks, sp, ann.lexicon)
        attrs[ti].update(mine)
        if other_of(ti) is not None:
            attrs[other_of(ti)].update(theirs)
        if ti < n_core and ti not in targets:
            targets.append(ti)
    bound = [set(a) for a in attrs]
    if cfg.mirror_decoys > 0 and not (n_core == 2 and obj_cls[0] == obj_cls[1]):
        for ti in targets:
            twins = [o for o in range(n_core, O) if obj_cls[o] == obj_cls[ti] and pattern[o] is None and real[o]]
            if not twins or srng.random() >= cfg.mirror_decoys:
                continue
            o = twins[int(srng.integers(len(twins)))]
            pattern[o] = not pattern[ti]
            attrs[o] = set(bound[other_of(ti)]) if other_of(ti) is not None else set()
            a = int(srng.uniform(0, cfg.extend) * gs)
            b = int(srng.uniform(0, cfg.extend) * (Tv - ge))
            pres[o] = pres[o].copy()
            pres[o][gs - a: ge + b] = True
    for o in range(O):
        if not attrs[o] and srng.random() < cfg.attribute_rate:
            attrs[o] = {ATTRIBUTE_WORDS[int(srng.choice(len(ATTRIBUTE_WORDS), p=world.attr_freq))]}
    return pattern, attrs


def render_item(cfg: VidSTGConfig, world: World, ann: VidSTGAnnotations, it: dict, rng: np.random.Generator,
                ood: bool, style: int, srng: np.random.Generator | None = None) -> dict:
    """One item's row. ``rng`` draws everything the earlier generator drew, in the same order;
    ``srng`` (default: seeded by the item's ``vid``) draws the structure (attributes, mirror decoys)."""
    T, N = cfg.T, cfg.N
    if srng is None:
        srng = np.random.default_rng([cfg.seed, int(hashlib.sha256(str(it["vid"]).encode()).hexdigest()[:8], 16)])
    cat_id = ann.cat_id
    pred_id = ann.predicates.index(it["used_relation"]["predicate"])
    fids, fvalid = frame_grid(int(it["used_segment"]["begin_fid"]), int(it["used_segment"]["end_fid"]), T)
    Tv = int(fvalid.sum())
    gmask = gt_on_grid(fids, fvalid, int(it["temporal_gt"]["begin_fid"]), int(it["temporal_gt"]["end_fid"]))
    gidx = np.flatnonzero(gmask)
    gs, ge = int(gidx[0]), int(gidx[-1]) + 1
    gmask[gs:ge] = True  # contiguous on the grid (fids are ascending)

    rel = it["used_relation"]
    cat = {o["tid"]: cat_id[o["category"]] for o in it["subject/objects"]}
    core = [rel["subject_tid"]] + ([rel["object_tid"]] if rel["object_tid"] != rel["subject_tid"] else [])
    others = [t for t in sorted(cat) if t not in core and (ood or not world.heldout[cat[t]])]
    obj_tid: list = []
    obj_cls: list[int] = []
    pres = []
    for tid in core:
        a = int(rng.uniform(0, cfg.extend) * gs)
        b = int(rng.uniform(0, cfg.extend) * (Tv - ge))
        p = np.zeros(T, bool)
        p[gs - a: ge + b] = True
        obj_tid.append(tid), obj_cls.append(cat[tid]), pres.append(p)
    K = len(ann.categories)
    co = world.co[cat[rel["subject_tid"]]]
    prob = (1.0 / (1.0 + co) ** 2 if ood else co.copy()) * (np.ones(K, bool) if ood else ~world.heldout)
    extra = []
    n_extra = int(rng.integers(cfg.distractor_min, cfg.distractor_max + 1))
    if n_extra and prob.sum() > 0:
        extra = [int(c) for c in rng.choice(K, size=n_extra, p=prob / prob.sum())]
    for tid, c in [(t, cat[t]) for t in others] + [(None, c) for c in extra]:
        length = max(1, int(round(rng.uniform(0.3, 1.0) * Tv)))
        start = int(rng.integers(0, Tv - length + 1))
        p = np.zeros(T, bool)
        p[start:start + length] = True
        obj_tid.append(tid), obj_cls.append(c), pres.append(p)
    O = min(len(obj_tid), N - 3)
    obj_tid, obj_cls = obj_tid[:O], np.array(obj_cls[:O], np.int64)
    n_core = len(core)
    track_of = {tid: i for i, tid in enumerate(obj_tid) if tid is not None}
    sents = _sentences(cfg, ann, it, track_of)
    pattern, attrs = _structure(cfg, world, ann, sents, track_of, obj_cls, n_core, [t is not None for t in obj_tid],
                                pres, (gs, ge, Tv), srng)
    visible = np.stack(pres[:O]) & fvalid[None]  # [O, T]
    tracks = trajectories(rng, O, T, cfg.motion)  # [O, T, 4]
    ident_r = unit(rng.standard_normal((O, cfg.Dr)))

    # proposals of the objects: (frame, object, box, IoU); the core objects get a second, shifted one
    vo, vt = np.nonzero(visible)
    good = rng.random(len(vo)) < cfg.p_good
    iou = np.where(good, rng.uniform(0.55, 0.95, len(vo)), rng.uniform(0.3, 0.5, len(vo)))
    pb = scaled(tracks[vo, vt], iou, rng)
    second = vo < n_core
    sb = shifted(tracks[vo[second], vt[second]], rng.uniform(0.1, 0.45, int(second.sum())), rng)
    r_t = np.concatenate([vt, vt[second]])
    r_o = np.concatenate([vo, vo[second]])
    r_box = np.concatenate([pb, sb])
    r_iou = box_iou(r_box, tracks[r_o, r_t])
    order = np.lexsort((np.arange(len(r_t)), r_t))  # by frame, first proposals first
    r_t, r_o, r_box, r_iou = r_t[order], r_o[order], r_box[order], r_iou[order]
    rank = np.arange(len(r_t)) - np.searchsorted(r_t, r_t)  # position within its frame
    keep = rank < N
    r_t, r_o, r_box, r_iou, rank = r_t[keep], r_o[keep], r_box[keep], r_iou[keep], rank[keep]
    perm = np.argsort(rng.random((T, N)), 1)  # slot of the k-th row of a frame
    slot = perm[r_t, rank]

    count = np.bincount(r_t, minlength=T)
    bg = background(rng, tracks, visible, C=max(N, 16))
    boxes = np.empty((T, N, 4))
    bg_rank = np.arange(N)[None, :] - count[:, None]  # k-th background of the frame at slot position k
    fill = bg_rank >= 0
    tt, kk = np.nonzero(fill)
    boxes[tt, perm[tt, kk]] = bg[tt, bg_rank[tt, kk]]
    boxes[r_t, slot] = r_box

    s = np.sqrt(np.clip(r_iou, 0, None))
    amp = cfg.signal * np.exp(cfg.signal_jitter * rng.standard_normal(len(r_t)))
    reg = np.zeros((T, N, cfg.Dr))
    feat = (s * amp)[:, None] * world.cls_r[obj_cls[r_o]] + (s * cfg.identity)[:, None] * ident_r[r_o]
    # the relation's profile over frames: 1 inside the GT span, relation_leak where the subject and
    # the object are both visible outside it (they are around each other), 0 elsewhere
    together = visible[:n_core].all(0)
    rel_prof = np.where(gmask, 1.0, np.where(together, cfg.relation_leak, 0.0))
    # the relation's pattern on its subject (agent) and object (patient) and on mirror decoys; the
    # symmetric predicate prototype at role_asymmetry 0 (the rows of other objects are multiplied by 0)
    has_pat = np.array([q is not None for q in pattern], bool)
    pat = np.stack([world.role_pattern(pred_id, bool(q), cfg.role_asymmetry) if q is not None
                    else world.pred_r[pred_id] for q in pattern])
    feat += (cfg.relation * s * has_pat[r_o] * rel_prof[r_t])[:, None] * pat[r_o]
    if cfg.attribute > 0:
        a_idx = {w: i for i, w in enumerate(ATTRIBUTE_WORDS)}
        avec = np.stack([world.attr_r[[a_idx[w] for w in sorted(a)]].mean(0) if a else np.zeros(cfg.Dr)
                         for a in attrs])
        feat += (cfg.attribute * s)[:, None] * avec[r_o]
    reg[r_t, slot] = feat
    objw = np.zeros((T, N))
    objw[r_t, slot] = 1
    sr, sf = (world.ood_styles_r, world.ood_styles_f) if ood else (world.styles_r, world.styles_f)
    st_r, st_f = sr[style % len(sr)], sf[style % len(sf)]
    reg += cfg.scene_strength * np.where(objw > 0, cfg.style_strength, 1.0)[..., None] * st_r
    reg += rng.standard_normal(reg.shape) * (cfg.feature_noise / math.sqrt(cfg.Dr))
    nvis = visible.sum(0)
    frame_obj = (visible.T.astype(np.float64) @ world.cls_f[obj_cls]) / np.maximum(nvis, 1)[:, None]
    frame = (cfg.scene_strength * st_f + cfg.frame_object * frame_obj
             + cfg.frame_relation * rel_prof[:, None] * world.pred_f[pred_id])
    frame = frame + rng.standard_normal(frame.shape) * (cfg.feature_noise / math.sqrt(cfg.Df))
    reg[~fvalid] = 0
    frame[~fvalid] = 0
    boxes[~fvalid] = 0
    tubes = link_tubes(reg, boxes, fvalid, alpha=cfg.alpha)
    seen_in_gt = (visible & gmask[None]).any(1)

    # sentences
    W, H = int(it["width"]), int(it["height"])
    scale = np.array([W, H, W, H], np.float64)
    w2id = ann.w2id
    lexicon = ann.lexicon
    pred_ids = [w2id.get(w, UNK_ID) for w in predicate_words(rel["predicate"])][: cfg.P]
    out = {k: [] for k in ("sample_ids", "sentences", "word_ids", "sentence_form", "subject_pos", "subject_class",
                           "rel_subj", "rel_obj", "rel_pred", "rel_valid", "gt_segment", "gt_fids", "gt_boxes",
                           "gt_box_valid", "bow_resolvable", "entity_ids")}
    for form, key, j, s, toks, target, sp in sents:
        rs, ro = relation_positions(toks, form, sp, target == rel["subject_tid"], lexicon)
        rel_subj = np.full(cfg.R, -1)
        rel_obj = np.full(cfg.R, -1)
        rel_pred = np.zeros((cfg.R, cfg.P), np.int64)
        rel_valid = np.zeros(cfg.R, bool)
        rel_subj[0], rel_obj[0], rel_valid[0] = rs, ro, True
        rel_pred[0, : len(pred_ids)] = pred_ids
        gtb = np.where(gmask[:, None], tracks[track_of[target]] * scale, 0.0)
        out["sample_ids"].append(f"{it['vid']}#{key[0]}{j}")
        out["sentences"].append(s["description"].strip())
        out["word_ids"].append([w2id.get(w, UNK_ID) for w in toks])
        out["sentence_form"].append(form)
        out["subject_pos"].append(sp)
        out["subject_class"].append(cat[target])
        out["rel_subj"].append(rel_subj)
        out["rel_obj"].append(rel_obj)
        out["rel_pred"].append(rel_pred)
        out["rel_valid"].append(rel_valid)
        out["entity_ids"].append(entity_ids(toks, form, lexicon, (sp, rs, ro), cfg.E))
        out["gt_segment"].append([gs, ge])
        out["gt_fids"].append([int(it["temporal_gt"]["begin_fid"]), int(it["temporal_gt"]["end_fid"])])
        out["gt_boxes"].append(gtb)
        out["gt_box_valid"].append(gmask.copy())
        out["bow_resolvable"].append(bow_resolvable(
            track_of[target], obj_cls, pattern, attrs, seen_in_gt, set(toks) & set(ATTRIBUTE_WORDS),
            role_known=form == DECLARATIVE, use_pattern=cfg.relation > 0, use_attrs=cfg.attribute > 0))
    out.update(source_video=str(it["vid"]), frame_width=W, frame_height=H, frame_ids=fids, frame_valid=fvalid,
               frame_features=frame, region_features=reg, proposals=boxes * scale, tubes=tubes)
    return out


# ------------------------------------------------------------------------------- splits
def split_plan(cfg: VidSTGConfig, ann: VidSTGAnnotations, world: World) -> dict[str, list[tuple[str, int]]]:
    """(source list, item index) per output split."""
    cat_id = {c: i for i, c in enumerate(ann.categories)}
    held = lambda it: bool(world.heldout[sorted(_relation_classes(it, cat_id))].any())  # noqa: E731
    vids = sorted({it["vid"] for it in ann.items["val"]})
    rng = np.random.default_rng([cfg.seed, 31337])
    val_vids = set(rng.choice(vids, size=max(1, int(round(cfg.val_fraction * len(vids)))), replace=False).tolist())
    plan = {sp: [] for sp in SPLITS}
    for k, it in enumerate(ann.items["val"]):
        plan["test_ood" if held(it) else ("val" if it["vid"] in val_vids else "train")].append(("val", k))
    for k, it in enumerate(ann.items["test"]):
        plan["test_ood" if held(it) else "test_iid"].append(("test", k))
    if cfg.limit:
        plan = {sp: v[: cfg.limit] for sp, v in plan.items()}
    return plan


_WORKER: dict = {}


def _init_worker(cfg, ann, world):
    _WORKER.update(cfg=cfg, ann=ann, world=world)


def _render_chunk(args) -> pa.Table:
    split, items, offset = args
    cfg, ann, world = _WORKER["cfg"], _WORKER["ann"], _WORKER["world"]
    code = SPLITS.index(split)
    rows = []
    for j, (src, k) in enumerate(items):
        it = ann.items[src][k]
        rng = np.random.default_rng([cfg.seed, code, offset + j])
        n_styles = cfg.ood_styles if split == "test_ood" else cfg.styles
        style = int(hashlib.sha256(str(it["vid"]).encode()).hexdigest(), 16) % n_styles
        srng = np.random.default_rng([cfg.seed, code, offset + j, 1])  # the structure's own stream
        row = render_item(cfg, world, ann, it, rng, split == "test_ood", style, srng)
        row["video_id"] = f"{it['vid']}_{src}{k}"
        rows.append(row)
    return tube_table(rows, cfg.dims, cfg.feature_dtype)


def classes_table(ann: VidSTGAnnotations, world: World, plan: dict) -> pa.Table:
    cat_id = {c: i for i, c in enumerate(ann.categories)}
    counts = np.zeros(len(ann.categories), np.int64)
    for src, k in plan["train"]:
        counts[sorted(_relation_classes(ann.items[src][k], cat_id))] += 1
    vec = ann.class_vectors().astype(np.float32)
    return pa.table({
        "class_id": pa.array(np.arange(len(ann.categories)), pa.int16()),
        "name": ann.categories,
        "word_vector": pa.FixedSizeListArray.from_arrays(pa.array(vec.reshape(-1)), vec.shape[1]),
        "train_count": pa.array(counts, pa.int64()),
        "heldout": pa.array(world.heldout),
    }, schema=classes_schema(vec.shape[1]))


def vocab_table(ann: VidSTGAnnotations) -> pa.Table:
    V, E = ann.vectors.shape
    return pa.table({
        "word_id": pa.array(np.arange(V), pa.int32()),
        "word": ann.words,
        "word_vector": pa.FixedSizeListArray.from_arrays(pa.array(ann.vectors.reshape(-1)), E),
        "count": pa.array(ann.counts, pa.int64()),
    }, schema=vocab_schema(E))


def generate(root: str | os.PathLike, cfg: VidSTGConfig = VidSTGConfig(), workers: int | None = None,
             overwrite: bool = False, annotations: Path | None = None, chunk: int = 128):
    """Write the benchmark to ``root`` (a local folder) and return its manifest."""
    ann = VidSTGAnnotations.load(annotations)
    world = build_world(cfg, ann)
    plan = split_plan(cfg, ann, world)
    producer = {"name": PRODUCER, "version": __version__, "args": dataclasses.asdict(cfg), "annotations": ann.digests}
    extra = {"benchmark": "vidstg_generated", "num_classes": len(ann.categories),
             "heldout_classes": [ann.categories[i] for i in np.flatnonzero(world.heldout)],
             "vocab_size": len(ann.words), "pad_id": PAD_ID, "unk_id": UNK_ID, "word_vectors": ann.sources,
             "items": {sp: len(v) for sp, v in plan.items()},
             "sentences": {sp: sum(len(ann.items[s][k]["captions"]) + len(ann.items[s][k]["questions"])
                                   for s, k in v) for sp, v in plan.items()}}
    jobs = [(sp, items[i:i + chunk], i) for sp, items in plan.items() for i in range(0, len(items), chunk)]
    workers = workers or min(len(jobs), os.cpu_count() or 1)
    with DatasetWriter(root, "tube", cfg.dims, cfg.feature_dtype, producer, overwrite=overwrite, extra=extra) as w:
        w.add_table("vocab", vocab_table(ann))
        w.add_table("classes", classes_table(ann, world, plan))
        if workers <= 1:
            _init_worker(cfg, ann, world)
            for job in jobs:
                w.write(job[0], _render_chunk(job))
        else:
            with ProcessPoolExecutor(workers, initializer=_init_worker, initargs=(cfg, ann, world)) as pool:
                for job, table in zip(jobs, pool.map(_render_chunk, jobs)):
                    w.write(job[0], table)
    return w.manifest
