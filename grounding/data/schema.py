"""Parquet schemas of the task families (see docs/shards.md).

One row is one annotated sample (a segment with its sentence; for ``moment`` and ``tube``, one
video with all of its sentences). Dense per-sample tensors are stored
flattened in fixed-size list columns whose shape is given by the dataset's ``dims`` in the
manifest; ragged annotations (queried classes, ground-truth instances) are variable-size lists.
"""

from __future__ import annotations

import pyarrow as pa

# v2: WSVOG shards may carry contextual text features (dims["D_text"], ``text_*`` columns, a
# ``words`` table and the manifest's ``text`` block; grounding/data/text_features.py). v1
# datasets are still read; methods that need the text columns name the command that adds them.
SCHEMA_VERSION = 2
READABLE_VERSIONS = (1, 2)

# ``tube`` is spatio-temporal video grounding (a segment plus one box per frame; WINNER, VCMA).
# It was called ``stvg`` before; the *method* ``stvg`` (the WSVOG MIL baseline) is unrelated.
TASKS = ("wsvog", "tube", "moment")
FEATURE_DTYPES = {"float16": pa.float16(), "float32": pa.float32()}

# Required dims per task family.
TASK_DIMS = {
    "wsvog": ("T", "N", "D"),  # frames, proposals per frame, feature size
    "tube": ("T", "N", "Df", "Dr", "L", "R", "P", "M"),  # frames, proposals, frame/region feature
    # sizes, tokens per sentence, relations per sentence, words per predicate, linked tubes
    "moment": ("L", "D"),  # clips, feature size
}


def _fixed(value_type: pa.DataType, size: int) -> pa.DataType:
    return pa.list_(value_type, size)


def wsvog_schema(T: int, N: int, D: int, feature_dtype: str = "float16", D_text: int | None = None) -> pa.Schema:
    """Weakly-supervised video object grounding: per-frame region proposals.

    ``gt_boxes`` holds, per instance in ``gt_class`` order, T boxes (x1, y1, x2, y2 in pixels);
    ``gt_valid`` holds T flags per instance (False where the object is absent, occluded or
    outside the frame: such boxes are not scored). With ``D_text`` (schema v2) five text columns
    follow (``grounding/data/text_features.py``): ``text_query`` (``D_text`` values per queried
    class, in ``query_classes`` order), ``text_sentence`` ([CLS]), ``text_query_found``,
    ``word_ids`` (ids into the ``words`` table) and ``query_word_pos``.
    """
    ft = FEATURE_DTYPES[feature_dtype]
    text = [] if not D_text else [
        pa.field("text_query", pa.list_(pa.float16()), nullable=False),
        pa.field("text_sentence", _fixed(pa.float16(), int(D_text)), nullable=False),
        pa.field("text_query_found", pa.list_(pa.bool_()), nullable=False),
        pa.field("word_ids", pa.list_(pa.int32()), nullable=False),
        pa.field("query_word_pos", pa.list_(pa.int16()), nullable=False),
    ]
    return pa.schema(
        [
            pa.field("segment_id", pa.string(), nullable=False),
            pa.field("video_id", pa.string(), nullable=False),
            pa.field("recipe", pa.string(), nullable=False),
            pa.field("sentence", pa.string(), nullable=False),
            pa.field("query_classes", pa.list_(pa.int16()), nullable=False),
            pa.field("features", _fixed(ft, T * N * D), nullable=False),
            pa.field("proposals", _fixed(pa.float32(), T * N * 4), nullable=False),
            pa.field("gt_class", pa.list_(pa.int16()), nullable=False),
            pa.field("gt_boxes", pa.list_(pa.float32()), nullable=False),
            pa.field("gt_valid", pa.list_(pa.bool_()), nullable=False),
            pa.field("frame_width", pa.int16(), nullable=False),
            pa.field("frame_height", pa.int16(), nullable=False),
            *text,
        ]
    )


def tube_schema(T: int, N: int, Df: int, Dr: int, L: int, R: int, P: int, M: int,
                feature_dtype: str = "float16", bow_resolvable: bool = False, E: int | None = None) -> pa.Schema:
    """Spatio-temporal video grounding (task ``tube``): one row per video with all its sentences.

    Per video: ``T`` sampled frames (``frame_ids`` original 0-based ids, -1 on padding;
    ``frame_valid``), frame features ``[T, Df]``, region features ``[T, N, Dr]``, proposal
    boxes ``[T, N, 4]`` (x1, y1, x2, y2 in pixels of ``frame_width`` x ``frame_height``) and
    ``M`` linked tubes ``tubes [M, T]`` (proposal index per frame).
    Per sentence ``j`` (list columns, one entry per sentence): ``sample_ids``, ``sentences``,
    ``word_ids`` (ids into the ``vocab`` side table, at most ``L``), ``sentence_form`` (0
    declarative, 1 interrogative), ``subject_pos`` (token index of the grounded word: the subject's
    head noun, or the wh-word of a question; -1 unknown), ``subject_class`` (category id of the
    grounded target, ``classes`` side table), ``R`` relations (``rel_subj``/``rel_obj`` token
    indices, -1 none; ``rel_pred`` ``[R, P]`` word ids, 0 pad; ``rel_valid``), the ground truth
    ``gt_segment`` (half-open ``[start, end)`` on the sampled-frame grid), ``gt_fids`` (half-open
    in original frame ids, VidSTG's ``temporal_gt``), ``gt_boxes [T, 4]`` pixels and
    ``gt_box_valid [T]``. Optional (dims ``bow_resolvable`` = 1, the generated VidSTG since issue 23):
    ``bow_resolvable``, per sentence whether a bag of its words resolves its target among the video's
    objects (:func:`grounding.data.tube.bow_resolvable`); datasets without it have no such subset.
    With the optional dim ``E`` (at most ``E`` entity phrases per sentence) a
    column ``entity_ids`` follows: per sentence one int8 per token, the id (0..E-1, in order of
    appearance) of the entity phrase holding the token, -1 outside every phrase
    (:func:`grounding.data.tube.entity_ids`); datasets without it are still read
    (:func:`grounding.data.tube.fallback_entity_ids`).
    """
    ft = FEATURE_DTYPES[feature_dtype]
    per = lambda t: pa.list_(t)  # noqa: E731  one entry per sentence
    entities = [] if not E else [pa.field("entity_ids", per(pa.list_(pa.int8())), nullable=False)]
    return pa.schema(
        [
            pa.field("video_id", pa.string(), nullable=False),
            pa.field("source_video", pa.string(), nullable=False),
            pa.field("frame_width", pa.int16(), nullable=False),
            pa.field("frame_height", pa.int16(), nullable=False),
            pa.field("frame_ids", _fixed(pa.int32(), T), nullable=False),
            pa.field("frame_valid", _fixed(pa.bool_(), T), nullable=False),
            pa.field("frame_features", _fixed(ft, T * Df), nullable=False),
            pa.field("region_features", _fixed(ft, T * N * Dr), nullable=False),
            pa.field("proposals", _fixed(pa.float32(), T * N * 4), nullable=False),
            pa.field("tubes", _fixed(pa.int16(), M * T), nullable=False),
            pa.field("sample_ids", per(pa.string()), nullable=False),
            pa.field("sentences", per(pa.string()), nullable=False),
            pa.field("word_ids", per(pa.list_(pa.int32())), nullable=False),
            pa.field("sentence_form", per(pa.int8()), nullable=False),
            pa.field("subject_pos", per(pa.int16()), nullable=False),
            pa.field("subject_class", per(pa.int16()), nullable=False),
            pa.field("rel_subj", per(_fixed(pa.int16(), R)), nullable=False),
            pa.field("rel_obj", per(_fixed(pa.int16(), R)), nullable=False),
            pa.field("rel_pred", per(_fixed(pa.int32(), R * P)), nullable=False),
            pa.field("rel_valid", per(_fixed(pa.bool_(), R)), nullable=False),
            pa.field("gt_segment", per(_fixed(pa.int32(), 2)), nullable=False),
            pa.field("gt_fids", per(_fixed(pa.int32(), 2)), nullable=False),
            pa.field("gt_boxes", per(_fixed(pa.float32(), T * 4)), nullable=False),
            pa.field("gt_box_valid", per(_fixed(pa.bool_(), T)), nullable=False),
            *([pa.field("bow_resolvable", per(pa.bool_()), nullable=False)] if bow_resolvable else []),
            *entities,
        ]
    )


def moment_schema(L: int, D: int, feature_dtype: str = "float16") -> pa.Schema:
    """Temporal moment localisation: one row per video, holding all of its queries.

    ``features`` are ``L`` clip features of the whole video; query ``j`` of the row has
    ``sample_ids[j]``, ``sentences[j]``, ``word_ids[j]`` (indices into the dataset's ``vocab``
    table) and ``moments[j] = (start, end)`` in seconds. Storing queries per video keeps a
    video's features once however many queries it has.
    """
    ft = FEATURE_DTYPES[feature_dtype]
    return pa.schema(
        [
            pa.field("video_id", pa.string(), nullable=False),
            pa.field("duration", pa.float32(), nullable=False),
            pa.field("features", _fixed(ft, L * D), nullable=False),
            pa.field("sample_ids", pa.list_(pa.string()), nullable=False),
            pa.field("sentences", pa.list_(pa.string()), nullable=False),
            pa.field("word_ids", pa.list_(pa.list_(pa.int32())), nullable=False),
            pa.field("moments", pa.list_(_fixed(pa.float32(), 2)), nullable=False),
        ]
    )


def schema_for(task: str, dims: dict, feature_dtype: str) -> pa.Schema:
    if task not in TASKS:
        raise ValueError(f"unknown task family {task!r}; allowed: {', '.join(TASKS)}")
    if feature_dtype not in FEATURE_DTYPES:
        raise ValueError(
            f"unknown feature dtype {feature_dtype!r}; allowed: {', '.join(FEATURE_DTYPES)}"
        )
    missing = [k for k in TASK_DIMS[task] if k not in dims]
    if missing:
        raise ValueError(f"{task} dims need {', '.join(TASK_DIMS[task])}; missing {', '.join(missing)}")
    args = [int(dims[k]) for k in TASK_DIMS[task]]
    if task == "wsvog" and dims.get("D_text"):
        return wsvog_schema(*args, feature_dtype=feature_dtype, D_text=int(dims["D_text"]))
    if task == "tube" and (dims.get("bow_resolvable") or dims.get("E")):
        return tube_schema(*args, feature_dtype=feature_dtype, bow_resolvable=bool(dims.get("bow_resolvable")),
                           E=int(dims["E"]) if dims.get("E") else None)
    return {"wsvog": wsvog_schema, "tube": tube_schema, "moment": moment_schema}[task](
        *args, feature_dtype=feature_dtype
    )


# Side tables shipped with a dataset (one Parquet file each, listed in the manifest).
def classes_schema(word_dim: int) -> pa.Schema:
    """Object vocabulary of a WSVOG/tube dataset: word vectors and training counts (priors)."""
    return pa.schema(
        [
            pa.field("class_id", pa.int16(), nullable=False),
            pa.field("name", pa.string(), nullable=False),
            pa.field("word_vector", _fixed(pa.float32(), word_dim), nullable=False),
            pa.field("train_count", pa.int64(), nullable=False),
            pa.field("heldout", pa.bool_(), nullable=False),
        ]
    )


def vocab_schema(word_dim: int) -> pa.Schema:
    """Word vocabulary of a moment or tube dataset: id, word, vector, corpus count."""
    return pa.schema(
        [
            pa.field("word_id", pa.int32(), nullable=False),
            pa.field("word", pa.string(), nullable=False),
            pa.field("word_vector", _fixed(pa.float32(), word_dim), nullable=False),
            pa.field("count", pa.int64(), nullable=False),
        ]
    )
