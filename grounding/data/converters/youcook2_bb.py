"""YouCook2-BB region features in the layout of the causal-intervention code (WSVOG_Causal_Intervention,
``dataset_name='cvpr'``) -> task ``wsvog``.

Inputs (paths as in that code's ``config.py``; the NAFAE release shares the class list and splits):

``--annotations DIR``
    the causal repo's annotation folder: ``class_file.csv`` (67 classes, id,singular,,plural),
    ``YC2_glove_dict.pth`` as released (a torch-saved FloatTensor ``[68, 300]``: row 0 padding, row
    k+1 = class k; read with ``torch.load(weights_only=True)``) or its raw storage
    ``YC2_glove_dict_68x300_float32.npy``, ``{train,val,test}_dict.json`` (segment -> [[subset, recipe, video,
    index], class ids]) and ``seg_sentence_dict.json``.
``--features DIR``
    one ``<segment>.npy`` per segment, ``[frames, >=N, D]`` (D = 4096 for the released RoI
    features), in ``DIR/{training,validation,testing}/`` (the code's ``data_split``) or flat in DIR.
``--layout nafae`` with ``--features DIR`` (no ``--proposals``)
    NAFAE's released object features (its ``object_feature.md``): one ``(20, 4096)`` float32 ``.npy``
    per sampled frame, ``DIR/{training,validation,testing}/<recipe>/<video>/<SSSS><FFFFFF>.npy``
    (segment index from 0 in 4 digits, frame index at 16 fps from the segment's start in 6; the
    frames of a segment in name order are its feature frames), and ``DIR/{train,val,test}_box.json``
    mapping ``<split dir>/<recipe>/<video>/<SSSSFFFFFF>`` to the frame's ``[20, 4]`` boxes in 224x224
    coordinates, in feature order (rescaled like ``rpn_box``). The recipe and video come from the
    dict files' ``[subset, recipe, video, index]``.
``--proposals DIR``
    same layout (``rpn_box``): ``[frames, >=N, >=4]`` boxes x1,y1,x2,y2 in **224x224** input
    coordinates; they are rescaled to the video's resized frame (``x * rwidth/224``,
    ``y * rheight/224``) exactly as the loader does.
``--sizes FILE`` (repeatable)
    ``yc2_training_vid.json`` and/or any ``yc2_bb_*_annotations.json``: ``database/<video>/rwidth,
    rheight`` (the causal-repo conversion's ``width``/``height`` are read too).
``--boxes FILE`` (repeatable)
    box ground truth in the official YouCook2-BB format (``database/<video>/segments/<seg>/
    objects[i]/{label, boxes[frame]{xtl,ytl,xbr,ybr,occluded,outside}}``), or the causal repo's
    conversion (``database/<video>/annotations/<seg>/<i>/{label, boxes{frame: …}}``). Boxes are in
    the resized frame (720 px wide), annotated at 1 fps: box frame ``j`` is feature frame ``j``.
``--nafae DIR`` (optional)
    NAFAE's ``{train,val,test}_entities.pkl`` (read through the restricted unpickler with
    ``encoding="latin1"``): with ``--sentences nafae`` the sentence of segment ``<video>_<i:02d>``
    is ``" ".join(sentence_raw[i])``.

Conventions of a row (training rows, and evaluation rows under ``--eval-frames centre``, are those of
the generated benchmark, :mod:`grounding.data.benchmarks.youcook2`):

* training rows: ``T`` frames (default 5, the code's ``num_frm``), the centre frames of ``T`` equal
  bins of the segment's frames (:func:`~.common.centre_indices`; deterministic, where the original
  training loader draws a random frame per bin);
* evaluation rows (every split but ``train``), ``--eval-frames``:

  - ``all`` (default): every feature frame of the segment, as the published test scores it ("Weakly-
    Supervised Video Object Grounding via Causal Intervention" samples ``T = 5`` frames "for
    training", Sec. 5.3, and scores box/query accuracy as the earlier YouCook2-BB works, Sec. 5.2;
    its authors' ``YC2_test_data`` loads all of a segment's 1-fps frames and their
    ``tools/test_tool.py`` scores every annotated one). A segment of ``F`` frames becomes
    ``ceil(F / T)`` rows of ``T`` consecutive frames, with the same ``segment_id``; the last row is
    filled up as that test fills its last window of frames (its ``x = T - F % T`` missing frames are
    the segment's frames ``(j - x) mod F``, ``j < x``: the segment's last ``x`` frames when
    ``F >= x``) and those filler frames have ``gt_valid`` False, so each frame is scored exactly
    once. Box and query accuracy count (instance, frame) and (segment, class, frame) items, and every
    WSVOG model here scores a frame from that frame's proposals alone (the self-attention runs over
    the proposals of one frame; the temporal attention only weighs the training loss), so the rows'
    metrics are those of the whole segment scored at once. The published test also cuts a segment
    into windows (of 10 frames) before its model sees it;
  - ``centre``: the ``T`` centre frames, one row per segment (what this converter wrote before;
    tables name it: :func:`grounding.tasks.scoring_protocol`). Where ``F < T`` frames repeat and a
    repeated annotated frame is counted again, as it always was.

  The manifest records the setting (``extra.eval_frames``) and per split the segments, rows,
  frames and valid ground-truth boxes written (``extra.stats``);
* the first ``N`` proposals (default 20, the code's ``num_proposals``) of each frame are kept,
  in file order (the RPN's score order);
* ``query_classes``: the segment's classes from the dict file, unique, in order of appearance;
* ``gt_class``: one instance per annotated object (the box file's objects, in order), or, for
  segments without box annotation (the training list), one per class of the dict file;
  ``gt_boxes`` ``[I*T*4]`` and ``gt_valid`` ``[I*T]`` per instance, False where the box is missing,
  ``occluded`` or ``outside`` (as the original evaluation skips them);
* ``frame_width``/``frame_height``: the video's ``rwidth``/``rheight``.

The ``classes`` table holds the 67 classes with their GloVe vectors and ``train_count`` = number of
converted training segments that mention the class (as in the generated benchmark).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pyarrow as pa

from .. import safe_pickle, text_features
from ..schema import classes_schema
from ..shards import DatasetWriter
from .common import (
    CHUNK_ROWS, MAX_MISSING_FRACTION, MIN_VOCAB_COVERAGE, ConversionError, MissingInputs, centre_indices,
    check_coverage, load_json, need_dir, need_file, producer, rename, wsvog_table)

NAME = "youcook2-bb"
PRODUCER = "grounding.data.converters.youcook2_bb"
SPLIT_DIRS = {"train": "training", "val": "validation", "test": "testing"}
LAYOUTS = ("causal", "nafae")  # --layout: per-segment arrays (causal release) or per-frame files (NAFAE)
EVAL_FRAMES = ("all", "centre")  # --eval-frames: every frame of an eval segment (published test) or T centre frames
PROPOSAL_SCALE = 224.0


# ----------------------------------------------------------------------------- annotations
def read_classes(path: Path) -> tuple[list[str], dict[str, int]]:
    """Class names (singular) and a lookup of every listed form (singular, plural) -> id."""
    names, lookup = [], {}
    with open(path) as f:
        for row in csv.reader(f):
            if not row:
                continue
            cid = int(row[0])
            if cid != len(names):
                raise ConversionError(f"{path}: class ids must run 0..K-1 in order; found {cid} at row {len(names)}")
            names.append(row[1].strip())
            for form in row[1:]:
                if form.strip():
                    lookup[form.strip()] = cid
    return names, lookup


GLOVE_NPY, GLOVE_PTH = "YC2_glove_dict_68x300_float32.npy", "YC2_glove_dict.pth"


def read_class_vectors(ann: Path) -> tuple[Path, np.ndarray]:
    """The class GloVe vectors ``[K+1, 300]`` (row 0 padding) and the file they came from: the
    causal release's ``YC2_glove_dict.pth`` (a torch-saved FloatTensor, read with
    ``torch.load(weights_only=True)``: tensors only, no code) or its raw ``.npy`` storage."""
    npy, pth = ann / GLOVE_NPY, ann / GLOVE_PTH
    if npy.is_file():
        return npy, np.load(npy, allow_pickle=False).astype(np.float32)
    if not pth.is_file():
        raise ConversionError(f"--annotations {ann}: neither {GLOVE_PTH} (the causal release) nor {GLOVE_NPY} is there")
    import torch  # lazy: only for the causal release's .pth GloVe dictionary

    try:
        t = torch.load(pth, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - a corrupt or non-tensor file: one line
        raise ConversionError(f"{pth}: not a torch-saved tensor ({type(e).__name__}: {str(e).splitlines()[0]})") from None
    if isinstance(t, dict) and len(t) == 1:  # a state-dict-like wrapper around the one tensor
        t = next(iter(t.values()))
    if not isinstance(t, torch.Tensor) or t.ndim != 2:
        raise ConversionError(f"{pth}: expected a [classes + 1, 300] FloatTensor, got {type(t).__name__}"
                              f"{f' of shape {tuple(t.shape)}' if isinstance(t, torch.Tensor) else ''}")
    return pth, t.detach().to(torch.float32).numpy()


def read_sizes(files: list[Path]) -> dict[str, tuple[int, int]]:
    sizes: dict[str, tuple[int, int]] = {}
    for p in files:
        db = load_json(p, "--sizes file").get("database")
        if not isinstance(db, dict):
            raise ConversionError(f"--sizes {p}: expected {{'database': {{video: {{rwidth, rheight}}}}}}")
        for vid, v in db.items():
            w, h = v.get("rwidth", v.get("width")), v.get("rheight", v.get("height"))
            if w is not None and h is not None:
                sizes[vid] = (int(w), int(h))
    return sizes


def read_boxes(files: list[Path], lookup: dict[str, int]) -> dict[tuple[str, int], list[tuple[int, list[dict]]]]:
    """(video, segment index) -> [(class id, per-frame box dicts)] from official or converted files."""
    out: dict[tuple[str, int], list[tuple[int, list[dict]]]] = {}
    for p in files:
        db = load_json(p, "--boxes file").get("database")
        if not isinstance(db, dict):
            raise ConversionError(f"--boxes {p}: expected {{'database': {{video: {{segments: …}}}}}}")
        for vid, v in db.items():
            if "segments" in v:  # official format: objects is a list, boxes a list per frame
                segs = {k: s.get("objects", []) for k, s in v["segments"].items()}
            elif "annotations" in v:  # causal-repo conversion: dicts keyed by index strings
                segs = {k: [objs[i] for i in sorted(objs, key=int)] for k, objs in v["annotations"].items()}
            else:
                continue
            for seg, objs in segs.items():
                insts = []
                for obj in objs:
                    label = obj.get("label")
                    if label not in lookup:
                        raise ConversionError(f"--boxes {p}: video {vid} segment {seg}: label {label!r} "
                                              f"is not in class_file.csv")
                    boxes = obj.get("boxes", [])
                    if isinstance(boxes, dict):
                        frames = [boxes.get(str(j), {}) for j in range(1 + max(map(int, boxes), default=-1))]
                    else:
                        frames = list(boxes)
                    insts.append((lookup[label], frames))
                out[(vid, int(seg))] = insts
    return out


def _box(b: dict) -> list[float] | None:
    """x1,y1,x2,y2 of an annotated frame, or None if missing, occluded or outside."""
    if not b or any(k not in b for k in ("xtl", "ytl", "xbr", "ybr")):
        return None
    if int(b.get("occluded", 0)) or int(b.get("outside", 0)):
        return None
    return [float(b["xtl"]), float(b["ytl"]), float(b["xbr"]), float(b["ybr"])]


def load_nafae_sentences(folder: Path, splits) -> dict[str, str]:
    """Segment id -> sentence from NAFAE's ``<split>_entities.pkl`` (restricted unpickler)."""
    out = {}
    for sp in splits:
        p = need_file(folder / f"{sp}_entities.pkl", f"--nafae {folder}: {sp}_entities.pkl")
        d = safe_pickle.load(p, encoding="latin1")
        for vid, ent in d.items():
            for i, words in enumerate(ent.get("sentence_raw", [])):
                out[f"{vid}_{i:02d}"] = " ".join(words)
    return out


# ------------------------------------------------------------------------------- convert
def _segment_file(folder: Path, split: str, seg: str) -> Path:
    sub = folder / SPLIT_DIRS[split] / f"{seg}.npy"
    return sub if sub.parent.is_dir() else folder / f"{seg}.npy"


def convert(root, annotations, features, proposals, sizes=(), boxes=(), splits=("train", "val", "test"),
            T: int = 5, N: int = 20, feature_dtype: str = "float16", limit: int | None = None,
            nafae=None, sentences: str = "causal", skip_missing: bool = False, layout: str = "causal",
            eval_frames: str = "all",
            max_missing_fraction: float = MAX_MISSING_FRACTION, min_vocab_coverage: float = MIN_VOCAB_COVERAGE,
            renames: dict[str, str] | None = None, overwrite: bool = False, log=print,
            text_encoder: str | None = "minilm", word_vectors=None):
    """Write the YouCook2-BB segments of ``splits`` to ``root``; return the manifest.

    ``text_encoder`` (default ``minilm``; None = without) adds the schema-v2 contextual text
    columns (``grounding/data/text_features.py``) computed from the segments' sentences, with the
    class names and plurals of ``class_file.csv``; ``word_vectors`` (default the annotation
    folder's ``word_embedding_glove.json``) gives the GloVe vectors of the word ids.
    ``eval_frames``: ``all`` (every frame of a val/test segment, in rows of ``T``) or ``centre``
    (``T`` centre frames per segment); see the module docstring."""
    ann = need_dir(annotations, "--annotations")
    feat_dir = need_dir(features, "--features")
    if layout not in LAYOUTS:
        raise ConversionError(f"--layout {layout!r}; allowed: {', '.join(LAYOUTS)}")
    if eval_frames not in EVAL_FRAMES:
        raise ConversionError(f"--eval-frames {eval_frames!r}; allowed: {', '.join(EVAL_FRAMES)}")
    nafae_layout = layout == "nafae"
    prop_dir = feat_dir if nafae_layout else need_dir(proposals, "--proposals (with --layout causal)")
    bad = [s for s in splits if s not in SPLIT_DIRS]
    if bad:
        raise ConversionError(f"unknown split {bad[0]!r}; allowed: {', '.join(SPLIT_DIRS)}")
    if T < 1 or N < 1:
        raise ConversionError("T and N must be >= 1")
    if sentences not in ("causal", "nafae"):
        raise ConversionError(f"--sentences {sentences!r}; allowed: causal, nafae")
    size_files = [need_file(p, "--sizes file") for p in sizes]
    box_files = [need_file(p, "--boxes file") for p in boxes]

    class_csv = need_file(ann / "class_file.csv", "class_file.csv in --annotations")
    glove_npy, glove = read_class_vectors(ann)
    names, lookup = read_classes(class_csv)
    if glove.shape[0] != len(names) + 1:
        raise ConversionError(f"{glove_npy}: {glove.shape[0]} rows; expected {len(names) + 1} (padding + classes)")
    glove = glove[1:]
    lists = {sp: load_json(need_file(ann / f"{sp}_dict.json", f"{sp}_dict.json in --annotations"))
             for sp in splits}
    sent_path = need_file(ann / "seg_sentence_dict.json", "seg_sentence_dict.json in --annotations")
    sents = load_json(sent_path)
    if sentences == "nafae":
        sents = load_nafae_sentences(need_dir(nafae, "--nafae (with --sentences nafae)"), splits)
    size_of = read_sizes(size_files)
    gt = read_boxes(box_files, lookup)

    # Plan every row and check every input before anything is written.
    plan: dict[str, list[tuple]] = {}
    missing = MissingInputs(skip_missing, max_missing_fraction, "segments")
    D = None
    for sp in splits:
        items = []
        entries = list(lists[sp].items())
        box_json = _load_nafae_boxes(feat_dir, sp) if nafae_layout else None
        for seg, (meta, classes) in entries[:limit] if limit else entries:
            vid, recipe, index = str(meta[2]), str(meta[1]), int(meta[3])
            if nafae_layout:
                fpath = _nafae_frames(feat_dir, sp, recipe, vid, index)
                keys = [f"{SPLIT_DIRS[sp]}/{recipe}/{vid}/{f.stem}" for f in fpath]
                problems = [] if fpath else [f"NAFAE frames {feat_dir / SPLIT_DIRS[sp] / recipe / vid}/{index:04d}*.npy"]
                problems += [f"box of {k} in {sp}_box.json" for k in keys if k not in box_json][:1]
                ppath = [box_json.get(k) for k in keys]
            else:
                fpath, ppath = _segment_file(feat_dir, sp, seg), _segment_file(prop_dir, sp, seg)
                problems = [str(p) for p in (fpath, ppath) if not p.is_file()]
            if vid not in size_of:
                problems.append(f"frame size of video {vid} (give its rwidth/rheight with --sizes)")
            if seg not in sents:
                problems.append(f"sentence of {seg}")
            if not missing.keep(problems, rename(sp, renames)):
                continue
            if D is None and nafae_layout:
                shape = np.load(fpath[0], mmap_mode="r").shape
                if len(shape) != 2:
                    raise ConversionError(f"{fpath[0]}: a NAFAE frame must be [proposals, D]; got shape {shape}")
                D = int(shape[1])
            if D is None:
                shape = np.load(fpath, mmap_mode="r").shape
                if len(shape) != 3:
                    raise ConversionError(f"{fpath}: features must be [frames, proposals, D]; got shape {shape}")
                D = int(shape[2])
            items.append((seg, vid, recipe, index, [int(c) for c in classes], fpath, ppath))
        plan[sp] = items
    missing.raise_if_any("those segments")
    if D is None:
        raise ConversionError("no segment to convert (empty splits or all skipped)")

    train_counts = np.zeros(len(names), np.int64)
    for item in plan.get("train", []):
        train_counts[sorted(set(item[4]))] += 1
    classes_tbl = pa.table(
        {"class_id": pa.array(np.arange(len(names)), pa.int16()), "name": names,
         "word_vector": pa.FixedSizeListArray.from_arrays(pa.array(glove.reshape(-1)), glove.shape[1]),
         "train_count": pa.array(train_counts, pa.int64()), "heldout": pa.array(np.zeros(len(names), bool))},
        schema=classes_schema(glove.shape[1]))

    args = dict(annotations=str(ann), features=str(feat_dir), proposals=None if nafae_layout else str(prop_dir),
                sizes=[str(p) for p in size_files], boxes=[str(p) for p in box_files], splits=list(splits),
                T=T, N=N, feature_dtype=feature_dtype, limit=limit, sentences=sentences, layout=layout,
                eval_frames=eval_frames,
                nafae=str(nafae) if nafae else None, skip_missing=skip_missing,
                max_missing_fraction=max_missing_fraction, renames=renames or {})
    sources = {p.name: p for p in (class_csv, glove_npy, sent_path, *size_files, *box_files)}
    sources.update({f"{sp}_dict.json": ann / f"{sp}_dict.json" for sp in splits})
    # segments_with_boxes: per (output) split, the segments with at least one valid GT box, i.e.
    # what box/query accuracy can score (a split with none is not scored, grounding.metrics.wsvog);
    # segments_in_box_files: those the --boxes files list at all (the public test file lists labels only)
    # segments / rows / frames (distinct feature frames in the rows, filler not counted) /
    # gt_boxes (valid instance-frame boxes in the rows: what box accuracy counts) per split
    outs = [rename(sp, renames) for sp in splits]
    stats = {"segments_skipped": missing.skipped,
             "segments_with_boxes": dict.fromkeys(outs, 0), "segments_in_box_files": dict.fromkeys(outs, 0),
             "frame_count_mismatch": 0, "segments": dict.fromkeys(outs, 0), "rows": dict.fromkeys(outs, 0),
             "frames": dict.fromkeys(outs, 0), "gt_boxes": dict.fromkeys(outs, 0)}
    extra = {"source": "youcook2_bb", "layout": ("NAFAE per-frame region features + <split>_box.json" if nafae_layout
                                                 else "causal-intervention (cvpr) region features"),
             "eval_frames": eval_frames,
             "num_classes": len(names), "proposal_scale": PROPOSAL_SCALE, "stats": stats,
             "splits_from": {rename(sp, renames): SPLIT_DIRS[sp] for sp in splits}}
    feat = None
    dims = {"T": T, "N": N, "D": D}
    if text_encoder:
        wv = Path(word_vectors) if word_vectors else ann / "word_embedding_glove.json"
        need_file(wv, "word vectors for the text features (--word-vectors, or word_embedding_glove.json in --annotations)")
        with open(class_csv) as f:
            listed = {r[1]: r[2:] for r in csv.reader(f) if len(r) > 1}
        vocab = text_features.WordVocab.from_json(wv)
        ids = {rename(sp, renames): [vocab.ids(sents[it[0]]) for it in items] for sp, items in plan.items()}
        stats["vocab_coverage"] = check_coverage({sp: (sum(i != 0 for x in v for i in x), sum(map(len, v)))
                                                  for sp, v in ids.items()}, str(wv), min_vocab_coverage, log)
        feat = text_features.Featurizer(text_features.forms_from_names(names, [listed.get(n, []) for n in names]),
                                        text_encoder, vocab)
        feat.prepare((sents[it[0]], list(dict.fromkeys(it[4]))) for items in plan.values() for it in items)
        dims["D_text"] = feat.info["dim"]
        args.update(text_encoder=text_encoder, word_vectors=str(wv))
    with DatasetWriter(root, "wsvog", dims, feature_dtype,
                       producer(PRODUCER, args, sources), overwrite=overwrite, extra=extra) as w:
        w.add_table("classes", classes_tbl)
        for sp, items in plan.items():
            out = rename(sp, renames)
            every = eval_frames == "all" and sp != "train"
            for rows in _row_chunks(items, T, N, D, size_of, gt, sents, stats, out, every):
                table = wsvog_table(rows, T, N, D, feature_dtype)
                w.write(out, feat.attach(table) if feat else table)
            with_boxes = stats["segments_with_boxes"][out]
            log(f"{sp}: {len(items)} segments, {with_boxes} with a ground-truth box"
                + ("" if with_boxes or sp == "train" else " (not scored for box/query accuracy)")
                + (f"; every frame: {stats['frames'][out]} frames in {stats['rows'][out]} rows of {T}"
                   if every else f"; {T} centre frames per segment"))
        if feat:
            w.add_table("words", feat.words_table())
            w.text = feat.manifest_block()
            log(f"text features ({text_encoder}): {feat.mentions} mentions, {feat.fallback} by the sentence-mean "
                f"fallback, encoder {feat.seconds:.1f}s")
        # stats are filled while writing; the manifest is written when the block closes
    return w.manifest


def _nafae_frames(feat_dir: Path, split: str, recipe: str, vid: str, index: int) -> list[Path]:
    """NAFAE's per-frame files of segment ``index`` of a video, in frame order:
    ``<feat>/<training|validation|testing>/<recipe>/<video>/<SSSS><FFFFFF>.npy`` (4 digits segment
    index from 0, 6 digits frame index at 16 fps from the segment's start; NAFAE's object_feature.md)."""
    d = feat_dir / SPLIT_DIRS[split] / recipe / vid
    return sorted(d.glob(f"{index:04d}{'[0-9]' * 6}.npy"))


def _load_nafae_boxes(feat_dir: Path, split: str) -> dict:
    """``<feat>/<split>_box.json``: frame key ``<split dir>/<recipe>/<video>/<SSSSFFFFFF>`` ->
    ``[20, 4]`` boxes x1,y1,x2,y2 in 224x224 coordinates, in the order of the frame's features."""
    return load_json(need_file(feat_dir / f"{split}_box.json", f"NAFAE box file {split}_box.json in --features"),
                     "NAFAE box file")


def frame_rows(F: int, T: int, every: bool) -> tuple[np.ndarray, np.ndarray]:
    """``(index [R, T], scored [R, T])``: the feature frames of a segment's ``R`` rows and which of
    them are scored. ``every``: all ``F`` frames in order in ``ceil(F / T)`` rows, the last one
    filled with the frames ``(j - x) mod F`` (``x = R*T - F`` of them; the published test's filler)
    that are not scored; otherwise one row of the ``T`` centre frames, all scored."""
    if not every:
        return centre_indices(F, T)[None], np.ones((1, T), bool)
    R = -(-F // T)
    x = R * T - F
    idx = np.concatenate([np.arange(F), (np.arange(x) - x) % F]).astype(np.int64)
    return idx.reshape(R, T), (np.arange(R * T) < F).reshape(R, T)


def _segment_arrays(fpath, ppath, idx: np.ndarray, N: int, D: int):
    """(frame count, features [len(idx), N, D], proposals [len(idx), N, 4] float64) of the frames
    ``idx`` of a segment: the causal layout's two ``[frames, P, …]`` arrays, or NAFAE's per-frame
    files (a list of ``(P, D)`` arrays) and their boxes (a list of ``[P, 4]`` lists from the box JSON)."""
    if isinstance(fpath, list):
        F = len(fpath)
        feats = {int(i): np.load(fpath[i], mmap_mode="r") for i in dict.fromkeys(idx.tolist())}
        for i, a in feats.items():
            if a.ndim != 2 or a.shape[0] < N or a.shape[1] != D:
                raise ConversionError(f"{fpath[i]}: a NAFAE frame must be [>={N}, {D}]; got shape {a.shape}")
        props = {i: np.asarray(ppath[i], np.float64) for i in feats}
        for i, b in props.items():
            if b.ndim != 2 or b.shape[0] < N or b.shape[1] < 4:
                raise ConversionError(f"box of {fpath[i].stem} in the NAFAE box file must be [>={N}, 4]; "
                                      f"got shape {b.shape}")
        return F, np.stack([feats[int(i)][:N] for i in idx]), np.stack([props[int(i)][:N, :4] for i in idx])
    feats = np.load(fpath, mmap_mode="r")
    props = np.load(ppath, mmap_mode="r")
    if feats.ndim != 3 or feats.shape[1] < N or feats.shape[2] != D:
        raise ConversionError(f"{fpath}: features must be [frames, >={N}, {D}]; got shape {feats.shape}")
    if props.ndim != 3 or props.shape[0] != feats.shape[0] or props.shape[1] < N or props.shape[2] < 4:
        raise ConversionError(f"{ppath}: proposals must be [{feats.shape[0]}, >={N}, 4] to match {fpath.name}; "
                              f"got shape {props.shape}")
    return feats.shape[0], np.asarray(feats[idx, :N, :]), np.asarray(props[idx, :N, :4], np.float64)


def _frame_count(fpath) -> int:
    return len(fpath) if isinstance(fpath, list) else int(np.load(fpath, mmap_mode="r").shape[0])


def _row_chunks(items, T, N, D, size_of, gt, sents, stats, split: str, every: bool):
    """The rows of ``items`` (segments) in lists of about ``CHUNK_ROWS`` rows, counted into ``stats``."""
    part: list[dict] = []
    for item in items:
        rows = _rows(item, T, N, D, size_of, gt, sents, stats, split, every)
        stats["segments"][split] += 1
        stats["rows"][split] += len(rows)
        stats["segments_with_boxes"][split] += any(bool(np.any(r["gt_valid"])) for r in rows)
        stats["gt_boxes"][split] += sum(int(np.sum(r["gt_valid"])) for r in rows)
        part += rows
        if len(part) >= CHUNK_ROWS:
            yield part
            part = []
    if part:
        yield part


def _rows(item, T, N, D, size_of, gt, sents, stats, split: str, every: bool) -> list[dict]:
    """The rows of one segment (:func:`frame_rows`): features, rescaled proposals, ground truth."""
    seg, vid, recipe, index, classes, fpath, ppath = item
    F = _frame_count(fpath)
    if F < 1:
        raise ConversionError(f"{fpath}: segment {seg} has no frames")
    index_rows, scored = frame_rows(F, T, every)
    F, fsel, boxes = _segment_arrays(fpath, ppath, index_rows.reshape(-1), N, D)
    stats["frames"][split] += len(set(index_rows[scored].tolist()))
    W, H = size_of[vid]
    boxes[..., [0, 2]] *= W / PROPOSAL_SCALE
    boxes[..., [1, 3]] *= H / PROPOSAL_SCALE
    R = len(index_rows)
    fsel, boxes = fsel.reshape(R, T, N, D), boxes.reshape(R, T, N, 4)

    insts = gt.get((vid, index))
    if insts is None:
        gt_class = classes
        gt_boxes = np.zeros((R, len(classes), T, 4), np.float32)
        gt_valid = np.zeros((R, len(classes), T), bool)
    else:
        stats["segments_in_box_files"][split] += 1
        gt_class = [c for c, _ in insts]
        gt_boxes = np.zeros((R, len(insts), T, 4), np.float32)
        gt_valid = np.zeros((R, len(insts), T), bool)
        for i, (_, frames) in enumerate(insts):
            if frames and len(frames) != F:
                stats["frame_count_mismatch"] += 1
            for r, t in zip(*np.nonzero(scored)):
                f = index_rows[r, t]
                b = _box(frames[f]) if f < len(frames) else None
                if b is not None:
                    gt_boxes[r, i, t], gt_valid[r, i, t] = b, True
    return [{
        "segment_id": seg, "video_id": vid, "recipe": recipe, "sentence": sents[seg],
        "query_classes": list(dict.fromkeys(classes)),
        "features": fsel[r], "proposals": boxes[r].astype(np.float32),
        "gt_class": gt_class, "gt_boxes": gt_boxes[r], "gt_valid": gt_valid[r],
        "frame_width": W, "frame_height": H,
    } for r in range(R)]


# ----------------------------------------------------------------------------------- CLI
HELP = {NAME: "YouCook2-BB region features (causal-intervention / NAFAE layout) -> wsvog"}


def add_arguments(p, fmt: str = NAME) -> None:
    p.add_argument("--annotations", required=True, metavar="DIR",
                   help="causal repo annotation folder (class_file.csv, YC2_glove_dict.pth or its .npy, "
                        "{train,val,test}_dict.json, seg_sentence_dict.json)")
    p.add_argument("--features", required=True, metavar="DIR",
                   help="per-segment region features <segment>.npy [frames, >=N, D] in "
                        "DIR/{training,validation,testing}/ or flat")
    p.add_argument("--proposals", metavar="DIR",
                   help="per-segment proposal boxes <segment>.npy [frames, >=N, 4] in 224x224 coordinates, same layout "
                        "(--layout causal; NAFAE's boxes come from <split>_box.json in --features)")
    p.add_argument("--layout", choices=LAYOUTS, default="causal",
                   help="causal (default): <segment>.npy [frames, P, D] per segment; nafae: NAFAE's feature folder, "
                        "<split dir>/<recipe>/<video>/<SSSS><FFFFFF>.npy (P, D) per frame + {train,val,test}_box.json")
    p.add_argument("--sizes", action="append", default=[], metavar="FILE",
                   help="yc2_training_vid.json / yc2_bb_*_annotations.json giving rwidth/rheight per video (repeatable)")
    p.add_argument("--boxes", action="append", default=[], metavar="FILE",
                   help="box annotations, official yc2_bb format or the causal repo conversion (repeatable)")
    p.add_argument("--splits", default="train,val,test", help="comma-separated, of train,val,test (default: all)")
    p.add_argument("--T", type=int, default=5,
                   help="frames per row (default 5): a training segment's centre frames of T equal bins; an "
                        "evaluation segment's frames in rows of T (see --eval-frames)")
    p.add_argument("--N", type=int, default=20, help="proposals kept per frame (the first N; default 20)")
    p.add_argument("--eval-frames", choices=EVAL_FRAMES, default="all",
                   help="val/test segments: all (default) = every frame, as the published test scores every "
                        "annotated 1-fps frame (rows of T consecutive frames, same segment_id); centre = the T "
                        "centre frames (the earlier setting; tables name it)")
    p.add_argument("--sentences", choices=("causal", "nafae"), default="causal",
                   help="sentences from seg_sentence_dict.json (causal) or NAFAE's entities pkls")
    p.add_argument("--nafae", metavar="DIR", help="folder with NAFAE's {train,val,test}_entities.pkl")
    p.add_argument("--text-encoder", choices=("minilm", "none"), default="minilm",
                   help="contextual text features in the shards (default minilm: all-MiniLM-L6-v2; none = without)")
    p.add_argument("--word-vectors", metavar="FILE",
                   help="JSON {word: [300 floats]} for the word ids (default: word_embedding_glove.json in --annotations)")


def run(args, root, common: dict, fmt: str = NAME):
    return convert(root, args.annotations, args.features, args.proposals, sizes=args.sizes, boxes=args.boxes,
                   splits=[s for s in args.splits.split(",") if s], T=args.T, N=args.N,
                   sentences=args.sentences, nafae=args.nafae, layout=args.layout, eval_frames=args.eval_frames,
                   text_encoder=None if args.text_encoder == "none" else args.text_encoder,
                   word_vectors=args.word_vectors, **common)

