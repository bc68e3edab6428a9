"""VidSTG (+ VidOR boxes) and HC-STVG annotations with per-video features -> task ``tube``.

One output row per *video of the grounding task* with all of its sentences
(:func:`grounding.data.schema.tube_schema`): a VidSTG annotation item (its ``used_segment``, one
declarative sentence and 0-2 questions), or an HC-STVG video (one sentence).

Inputs:

``vidstg``: ``--annotations DIR`` / ``--split NAME=FILE``
    VidSTG's annotation lists: per item ``vid``, ``width``, ``height``, ``used_segment {begin_fid,
    end_fid}`` (end **inclusive**), ``temporal_gt {begin_fid, end_fid}`` (end **exclusive**, as
    TubeDETR reads it: ``begin <= f < end``), ``used_relation {subject_tid, object_tid, predicate}``,
    ``subject/objects [{tid, category}]``, ``captions``/``questions`` (``description``,
    ``target_id``).
``vidstg``: ``--vidor DIR``
    VidOR's annotation tree (``annotation/{training,validation}/<group>/<vid>.json``; searched
    recursively for ``<vid>.json``): ``trajectories[frame] = [{tid, bbox {xmin, ymin, xmax, ymax}}]``.
``hc-stvg``: ``--annotations DIR`` / ``--split NAME=FILE``
    HC-STVG's annotation files, v1 (``train.json``/``test.json``): ``{"<name>.mp4": {"bbox":
    [[x, y, w, h], ...], "st_frame", "img_num", "caption", "width", "height", ...}}``, or v2
    (``trainv2.json``/``valv2.json``, as TubeDETR's ``preproc_hcstvgv2.py`` reads them): the same
    with ``"English"`` for the caption and ``"img_size": [height, width]``; the boxes cover
    the consecutive frames ``st_frame .. st_frame + len(bbox) - 1`` (TubeDETR: ``tube_end = st_frame +
    len(bbox)``, exclusive); the video is frames ``1 .. img_num`` (HC-STVG numbers frames from 1, and
    the features' ``frame_ids`` must use the same numbering). Every sentence is declarative, its
    target a person (category ``person``); there is no relation annotation (``rel_valid`` False).
``--features DIR`` -- **the layout this project defines** (no official release exists):
    one ``<vid>.npz`` per video (HC-STVG: the mp4 name without ``.mp4``) holding ``features [F, P,
    Dr]`` (region features of ``F`` sampled frames, ``P >= N`` proposals each), ``boxes [F, P, 4]``
    (x1, y1, x2, y2 in pixels of the video's ``width`` x ``height``), ``frame_ids [F]`` (ascending
    frame ids, the numbering of the annotations) and optionally ``frame_features [F, Df]`` (when
    absent, ``Df = Dr`` and the frame feature is the mean over the frame's proposals, WINNER
    spec §1.2). Write it with ``numpy.savez(path, features=…, boxes=…, frame_ids=…)``.
``--glove-txt`` / ``--glove-pkl`` / ``--glove-npy --glove-vocab``
    word vectors for the ``vocab`` side table (ids: 0 ``<PAD>``, 1 ``<UNK>``, then the words of the
    converted sentences by descending count); a word GloVe lacks gets a fixed random vector
    (:func:`.common.fallback_vector`, counted in ``extra.stats``). ``classes`` holds the categories
    (mean vector of their words).

Frames. ``T`` frames (default 32; the median VidSTG GT covers ~6 of 32) at the targets
``begin + floor((t + 0.5) * (end - begin + 1) / T)`` over the inclusive video span, each replaced by
the nearest frame of ``frame_ids``; the row keeps the chosen **original frame ids**
(``frame_ids``), the first ``N`` proposals (default 10) of those frames, and ``M = N`` tubes linked
by VCMA Eq. 4 (``--alpha``, default 0.5; :func:`grounding.data.tube.link_tubes`). Per sentence,
``gt_box_valid[t]`` is True when frame ``f`` lies in the half-open GT span and the target has a box
there, ``gt_boxes[t]`` that box (pixels), ``gt_segment`` the half-open ``[first, last + 1)`` of the
sampled frames inside the GT span (``[0, 0)`` when none is), and ``gt_fids`` the GT span in
original frame ids. Text: :func:`grounding.data.tube.tube_tokens` (at most ``L`` = 24 tokens),
``subject_pos``/``rel_subj``/``rel_obj`` by the noun-lexicon heuristic, ``entity_ids`` the entity
phrases (:func:`grounding.data.tube.entity_ids`, at most ``E`` = 8), ``rel_pred`` = the word ids
of VidSTG's predicate (``in_front_of`` -> in, front, of; at most 4); ``sentence_form`` 0 for
captions, 1 for questions; ``subject_class`` = the target's category.
"""

from __future__ import annotations

import collections
import json
from pathlib import Path

import numpy as np
import pyarrow as pa

from ..shards import DatasetWriter
from ._moment import split_files
from ..tube import (DECLARATIVE, E_MAX, INTERROGATIVE, PAD_ID, UNK_ID, category_words, entity_ids, link_tubes,
                    noun_lexicon, relation_positions, subject_position, tube_table, tube_tokens)
from ..schema import classes_schema, vocab_schema
from .common import (MAX_MISSING_FRACTION, MIN_VOCAB_COVERAGE, ConversionError, Glove, MissingInputs, check_coverage,
                     add_glove_arguments, chunks, fallback_vector, load_json, need_dir, need_file, producer, rename)

NAME = "vidstg"
HCSTVG = "hc-stvg"
PRODUCER = "grounding.data.converters.vidstg"
DEFAULTS = {"train": "train_annotations.json", "val": "val_annotations.json", "test": "test_annotations.json"}
HC_DEFAULTS = {"train": "train.json", "test": "test.json"}
HC2_DEFAULTS = {"train": "trainv2.json", "val": "valv2.json"}  # HC-STVG v2's released annotation files
SENTENCES = ("both", "captions", "questions")
L_MAX, R_MAX, P_MAX = 24, 1, 4


def _vidor_index(folder: Path) -> dict[str, Path]:
    return {p.stem: p for p in folder.rglob("*.json")}


def _target_frames(begin: int, end: int, T: int, frame_ids: np.ndarray) -> np.ndarray:
    """Indices into ``frame_ids`` of the frames nearest to ``T`` evenly spread targets over the
    inclusive span ``[begin, end]``."""
    targets = begin + np.floor((np.arange(T) + 0.5) * (end - begin + 1) / T).astype(np.int64)
    pos = np.clip(np.searchsorted(frame_ids, targets), 0, len(frame_ids) - 1)
    prev = np.clip(pos - 1, 0, len(frame_ids) - 1)
    closer_prev = np.abs(frame_ids[prev] - targets) <= np.abs(frame_ids[pos] - targets)
    return np.where(closer_prev, prev, pos)


def gt_frames(frame_ids: np.ndarray, begin: int, end: int) -> np.ndarray:
    """``[T]`` bool: sampled frames inside the half-open GT span ``begin <= f < end``."""
    return (frame_ids >= begin) & (frame_ids < end)


# ------------------------------------------------------------------------------ records
def _vidstg_records(items: list, path: Path, sentences: str, limit: int | None) -> list[dict]:
    """Normalised per-video records of a VidSTG annotation list."""
    out = []
    for k, it in enumerate(items[:limit] if limit else items):
        try:
            vid = str(it["vid"])
            used, gt, rel = it["used_segment"], it["temporal_gt"], it.get("used_relation", {})
            span = (int(used["begin_fid"]), int(used["end_fid"]))
            gspan = (int(gt["begin_fid"]), int(gt["end_fid"]))
            size = (int(it["width"]), int(it["height"]))
        except (KeyError, TypeError, ValueError):
            raise ConversionError(f"{path}: item {k} lacks vid, width, height, used_segment or temporal_gt") from None
        cats = {int(o["tid"]): str(o["category"]) for o in it.get("subject/objects", [])}
        subj = int(rel.get("subject_tid", -1))
        sents = []
        for form, key in ((DECLARATIVE, "captions"), (INTERROGATIVE, "questions")):
            if sentences in ("both", key):
                for j, s in enumerate(it.get(key, [])):
                    sents.append({"id": f"{vid}_{k}_{key[0]}{j}", "text": str(s.get("description", "")).strip(),
                                  "form": form, "target": int(s.get("target_id", subj)), "gt": gspan})
        out.append({"row_id": f"{vid}_{k}", "vid": vid, "span": span, "size": size, "cats": cats, "subject": subj,
                    "predicate": str(rel.get("predicate", "")), "sentences": sents})
    return out


def _hcstvg_records(ann: dict, path: Path, limit: int | None) -> list[dict]:
    if not isinstance(ann, dict):
        raise ConversionError(f"{path}: expected HC-STVG's {{'<name>.mp4': {{bbox, st_frame, img_num, caption, "
                              f"width, height}}}}")
    out = []
    for k, (name, r) in enumerate(list(ann.items())[:limit] if limit else ann.items()):
        try:
            bbox = np.asarray(r["bbox"], np.float64).reshape(-1, 4)
            st, n = int(r["st_frame"]), int(r["img_num"])
            if "img_size" in r:  # v2: img_size = [height, width] (TubeDETR's preproc_hcstvgv2)
                size = (int(r["img_size"][1]), int(r["img_size"][0]))
            else:
                size = (int(r["width"]), int(r["height"]))
            caption = str(r["caption"] if "caption" in r else r["English"]).strip()  # v2: "English"
        except (KeyError, TypeError, ValueError, IndexError):
            raise ConversionError(f"{path}: entry {name!r} lacks bbox, st_frame, img_num, caption (v2: English), "
                                  f"width and height (v2: img_size)") from None
        vid = Path(name).stem
        boxes = {st + i: (b[0], b[1], b[0] + b[2], b[1] + b[3]) for i, b in enumerate(bbox)}
        out.append({"row_id": vid, "vid": vid, "span": (1, n), "size": size, "cats": {0: "person"}, "subject": 0,
                    "predicate": "", "boxes": {0: boxes},
                    "sentences": [{"id": f"{vid}_c0", "text": caption, "form": DECLARATIVE, "target": 0,
                                   "gt": (st, st + len(bbox))}]})
    return out


# ------------------------------------------------------------------------------ convert
def convert(root, split_files: dict[str, str], vidor, features, T: int = 32, N: int = 10, sentences: str = "both",
            feature_dtype: str = "float16", limit: int | None = None, skip_missing: bool = False,
            max_missing_fraction: float = MAX_MISSING_FRACTION, min_vocab_coverage: float = MIN_VOCAB_COVERAGE,
            renames: dict[str, str] | None = None, overwrite: bool = False, log=print, fmt: str = NAME,
            glove_txt=None, glove_pkl=None, glove_npy=None, glove_vocab=None, alpha: float = 0.5):
    if fmt not in (NAME, HCSTVG):
        raise ConversionError(f"format {fmt!r}; allowed: {NAME}, {HCSTVG}")
    if not split_files:
        raise ConversionError("no annotation file: give --annotations DIR or --split NAME=FILE")
    if sentences not in SENTENCES:
        raise ConversionError(f"--sentences {sentences!r}; allowed: {', '.join(SENTENCES)}")
    if T < 2 or N < 1:
        raise ConversionError("T must be >= 2 and N >= 1")
    if alpha < 0:
        raise ConversionError(f"--alpha {alpha}: must be >= 0")
    files = {sp: need_file(p, f"annotation file of split {sp}") for sp, p in split_files.items()}
    feat_dir = need_dir(features, "--features")
    traj_file = {}
    if fmt == NAME:
        traj_file = _vidor_index(need_dir(vidor, "--vidor"))

    plan: dict[str, list] = {}
    missing, shape = MissingInputs(skip_missing, max_missing_fraction, "items"), None
    counts: collections.Counter = collections.Counter()
    categories: set[str] = set()
    for sp, p in files.items():
        data = load_json(p, f"annotation file of split {sp}")
        if fmt == NAME:
            if not isinstance(data, list):
                raise ConversionError(f"{p}: expected a list of VidSTG items (vid, used_segment, temporal_gt, …)")
            recs = _vidstg_records(data, p, sentences, limit)
        else:
            recs = _hcstvg_records(data, p, limit)
        plan[sp] = []
        for rec in recs:
            npz = feat_dir / f"{rec['vid']}.npz"
            problems = [] if npz.is_file() else [str(npz)]
            if fmt == NAME and rec["vid"] not in traj_file:
                problems.append(f"VidOR trajectories {rec['vid']}.json under {vidor}")
            if not missing.keep(problems, rename(sp, renames)) or not rec["sentences"]:
                continue
            if shape is None:
                with np.load(npz, allow_pickle=False) as z:
                    f = z["features"].shape
                    ff = z["frame_features"].shape if "frame_features" in z.files else None
                if len(f) != 3 or f[1] < N:
                    raise ConversionError(f"{npz}: features must be [frames, >={N}, D]; got shape {f}")
                shape = (int(f[2]), int(ff[1]) if ff is not None else int(f[2]), ff is not None)
            rec["npz"] = npz
            plan[sp].append(rec)
            categories.update(rec["cats"].values())
            for s in rec["sentences"]:
                counts.update(tube_tokens(s["text"]))
    missing.raise_if_any()
    if shape is None:
        raise ConversionError(f"no {fmt} item to convert")
    Dr, Df, has_frame = shape
    cats = sorted(categories)
    extra_words = [w for c in cats + sorted({r["predicate"] for v in plan.values() for r in v}) for w in
                   category_words(c) if w not in counts]
    words = ["<PAD>", "<UNK>"] + sorted(counts, key=lambda w: (-counts[w], w)) + sorted(set(extra_words))
    glove = Glove.load(glove_txt, glove_pkl, glove_npy, glove_vocab, words=set(words))
    vectors = np.zeros((len(words), glove.dim), np.float32)
    no_vector = 0
    for i, w in enumerate(words[2:], start=2):
        v = glove.get(w)
        if v is None:
            no_vector += 1
            v = fallback_vector(w, glove.dim)
        vectors[i] = v
    w2id = {w: i for i, w in enumerate(words)}
    coverage = check_coverage(
        {rename(sp, renames): (sum(glove.get(t) is not None for r in recs for x in r["sentences"] for t in tube_tokens(x["text"])),
                               sum(len(tube_tokens(x["text"])) for r in recs for x in r["sentences"]))
         for sp, recs in plan.items()}, str(glove_txt or glove_pkl or glove_npy), min_vocab_coverage, log)
    cat_id = {c: i for i, c in enumerate(cats)}
    dims = {"T": T, "N": N, "Df": Df, "Dr": Dr, "L": L_MAX, "R": R_MAX, "P": P_MAX, "M": N, "E": E_MAX}
    ctx = {"T": T, "N": N, "Dr": Dr, "Df": Df, "has_frame": has_frame, "w2id": w2id, "cat_id": cat_id,
           "lexicon": noun_lexicon(cats), "alpha": alpha, "traj_file": traj_file, "fmt": fmt}

    stats = {"items_skipped": missing.skipped, "videos": sum(len(v) for v in plan.values()),
             "sentences": sum(len(r["sentences"]) for v in plan.values() for r in v), "gt_boxes": 0,
             "sentences_without_gt_frame": 0, "words_without_vector": no_vector, "vocab_coverage": coverage}
    args = dict(format=fmt, split_files={sp: str(p) for sp, p in files.items()}, vidor=str(vidor) if vidor else None,
                features=str(feat_dir), T=T, N=N, sentences=sentences, feature_dtype=feature_dtype, limit=limit,
                skip_missing=skip_missing, max_missing_fraction=max_missing_fraction,
                min_vocab_coverage=min_vocab_coverage, renames=renames or {}, glove=glove.source, alpha=alpha)
    extra = {"source": fmt.replace("-", ""), "stats": stats, "pad_id": PAD_ID, "unk_id": UNK_ID,
             "layout": "per-video npz (features, boxes, frame_ids[, frame_features])",
             "splits_from": {rename(sp, renames): Path(p).name for sp, p in files.items()}}
    train_counts = np.zeros(len(cats), np.int64)
    for r in plan.get("train", []):
        for s in r["sentences"]:
            if s["target"] in r["cats"]:
                train_counts[cat_id[r["cats"][s["target"]]]] += 1
    cvec = np.stack([vectors[[w2id[w] for w in category_words(c)]].mean(0) for c in cats]).astype(np.float32)
    with DatasetWriter(root, "tube", dims, feature_dtype, producer(PRODUCER, args, {p.name: p for p in files.values()}),
                       overwrite=overwrite, extra=extra) as w:
        w.add_table("vocab", pa.table({
            "word_id": pa.array(np.arange(len(words)), pa.int32()), "word": words,
            "word_vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), glove.dim),
            "count": pa.array([0, 0] + [int(counts.get(x, 0)) for x in words[2:]], pa.int64())},
            schema=vocab_schema(glove.dim)))
        w.add_table("classes", pa.table({
            "class_id": pa.array(np.arange(len(cats)), pa.int16()), "name": cats,
            "word_vector": pa.FixedSizeListArray.from_arrays(pa.array(cvec.reshape(-1)), glove.dim),
            "train_count": pa.array(train_counts, pa.int64()), "heldout": pa.array(np.zeros(len(cats), bool))},
            schema=classes_schema(glove.dim)))
        cache: dict = {}
        for sp, recs in plan.items():
            for part in chunks(recs):
                rows = [_row(rec, ctx, cache, stats) for rec in part]
                w.write(rename(sp, renames), tube_table(rows, dims, feature_dtype))
            log(f"{sp}: {len(recs)} videos, {sum(len(r['sentences']) for r in recs)} sentences")
    return w.manifest


def _load_video(rec, ctx, cache):
    vid, npz = rec["vid"], rec["npz"]
    if vid not in cache:
        cache.clear()  # items of one video are adjacent in VidSTG's lists; keep one video in memory
        N, Dr, Df = ctx["N"], ctx["Dr"], ctx["Df"]
        with np.load(npz, allow_pickle=False) as z:
            feats, boxes, fids = z["features"], z["boxes"], np.asarray(z["frame_ids"], np.int64)
            frame = z["frame_features"] if ctx["has_frame"] else None
        if feats.ndim != 3 or feats.shape[1] < N or feats.shape[2] != Dr:
            raise ConversionError(f"{npz}: features must be [frames, >={N}, {Dr}]; got shape {feats.shape}")
        if boxes.shape[:2] != feats.shape[:2] or boxes.shape[2] < 4 or fids.shape != (feats.shape[0],):
            raise ConversionError(f"{npz}: boxes {boxes.shape} / frame_ids {fids.shape} do not match features "
                                  f"{feats.shape} ([F, P, 4] and [F])")
        if frame is not None and frame.shape != (feats.shape[0], Df):
            raise ConversionError(f"{npz}: frame_features must be [{feats.shape[0]}, {Df}]; got {frame.shape}")
        if len(fids) > 1 and np.any(np.diff(fids) <= 0):
            raise ConversionError(f"{npz}: frame_ids must be strictly ascending")
        traj = []
        if ctx["fmt"] == NAME:
            traj = json.loads(ctx["traj_file"][vid].read_text()).get("trajectories", [])
        cache[vid] = (feats, boxes, fids, frame, traj)
    return cache[vid]


def _target_box(rec, traj, f: int, tid: int):
    if "boxes" in rec:  # HC-STVG
        return rec["boxes"].get(tid, {}).get(f)
    if 0 <= f < len(traj):
        for obj in traj[f]:
            if int(obj.get("tid", -2)) == tid:
                b = obj["bbox"]
                return (b["xmin"], b["ymin"], b["xmax"], b["ymax"])
    return None


def _row(rec, ctx, cache, stats) -> dict:
    T, N = ctx["T"], ctx["N"]
    feats, boxes, fids, frame, traj = _load_video(rec, ctx, cache)
    sel = _target_frames(rec["span"][0], rec["span"][1], T, fids)
    region = np.asarray(feats[sel, :N, :], np.float32)
    props = np.asarray(boxes[sel, :N, :4], np.float32)
    frame_feat = np.asarray(frame[sel], np.float32) if frame is not None else region.mean(1)
    chosen = fids[sel]
    w2id, lexicon = ctx["w2id"], ctx["lexicon"]
    pred_ids = [w2id.get(x, UNK_ID) for x in category_words(rec["predicate"])][:P_MAX]
    out = {k: [] for k in ("sample_ids", "sentences", "word_ids", "sentence_form", "subject_pos", "subject_class",
                           "rel_subj", "rel_obj", "rel_pred", "rel_valid", "gt_segment", "gt_fids", "gt_boxes",
                           "gt_box_valid", "entity_ids")}
    for s in rec["sentences"]:
        toks = tube_tokens(s["text"])[:L_MAX]
        sp = subject_position(toks, s["form"], lexicon)
        inside = gt_frames(chosen, *s["gt"])
        gtb, valid = np.zeros((T, 4), np.float32), np.zeros(T, bool)
        for t in np.flatnonzero(inside):
            b = _target_box(rec, traj, int(chosen[t]), s["target"])
            if b is not None:
                gtb[t], valid[t] = b, True
        stats["gt_boxes"] += int(valid.sum())
        idx = np.flatnonzero(inside)
        if not len(idx):
            stats["sentences_without_gt_frame"] += 1
        rs, ro = relation_positions(toks, s["form"], sp, s["target"] == rec["subject"], lexicon)
        rel_pred = np.zeros((R_MAX, P_MAX), np.int64)
        rel_pred[0, : len(pred_ids)] = pred_ids
        has_rel = bool(rec["predicate"])
        out["sample_ids"].append(s["id"])
        out["sentences"].append(s["text"])
        out["word_ids"].append([w2id.get(x, UNK_ID) for x in toks])
        out["sentence_form"].append(s["form"])
        out["subject_pos"].append(sp)
        out["subject_class"].append(ctx["cat_id"].get(rec["cats"].get(s["target"], ""), -1))
        out["rel_subj"].append([rs if has_rel else -1])
        out["rel_obj"].append([ro if has_rel else -1])
        out["rel_pred"].append(rel_pred)
        out["rel_valid"].append([has_rel])
        out["entity_ids"].append(entity_ids(toks, s["form"], lexicon, (sp, rs, ro) if has_rel else (sp,), E_MAX))
        out["gt_segment"].append([int(idx[0]), int(idx[-1]) + 1] if len(idx) else [0, 0])
        out["gt_fids"].append(list(s["gt"]))
        out["gt_boxes"].append(gtb)
        out["gt_box_valid"].append(valid)
    out.update(video_id=rec["row_id"], source_video=rec["vid"], frame_width=rec["size"][0],
               frame_height=rec["size"][1], frame_ids=chosen, frame_valid=np.ones(T, bool),
               frame_features=frame_feat, region_features=region, proposals=props,
               tubes=link_tubes(region, props, alpha=ctx["alpha"]))
    return out


HELP = {NAME: "VidSTG annotations + VidOR boxes + per-video npz features (documented layout) -> tube",
        HCSTVG: "HC-STVG annotations (bbox from st_frame) + per-video npz features (documented layout) -> tube"}


def add_arguments(p, fmt: str = NAME) -> None:
    defaults = DEFAULTS if fmt == NAME else HC_DEFAULTS
    p.add_argument("--annotations", metavar="DIR", help=f"folder with {', '.join(defaults.values())}"
                   + (f" (v1), or {', '.join(HC2_DEFAULTS.values())} (v2)" if fmt == HCSTVG else ""))
    p.add_argument("--split", action="append", default=[], metavar="NAME=FILE",
                   help="an annotation file for split NAME (repeatable)")
    if fmt == NAME:
        p.add_argument("--vidor", required=True, metavar="DIR", help="VidOR annotation tree (<vid>.json with trajectories)")
        p.add_argument("--sentences", choices=SENTENCES, default="both", help="captions, questions or both (default)")
    p.add_argument("--features", required=True, metavar="DIR",
                   help="<vid>.npz per video: features [F,P,D], boxes [F,P,4] (pixels), frame_ids [F][, frame_features [F,Df]]")
    add_glove_arguments(p)
    p.add_argument("--T", type=int, default=32, help="frames per video (default 32)")
    p.add_argument("--N", type=int, default=10, help="proposals kept per frame (the first N; default 10)")
    p.add_argument("--alpha", type=float, default=0.5, help="IoU weight of the tube linking, VCMA Eq. 4 (default 0.5)")


def run(args, root, common: dict, fmt: str = NAME):
    defaults = DEFAULTS if fmt == NAME else HC_DEFAULTS
    if fmt == HCSTVG and args.annotations and (Path(args.annotations) / HC2_DEFAULTS["train"]).is_file():
        defaults = HC2_DEFAULTS
    return convert(root, split_files(args, defaults), getattr(args, "vidor", None),
                   args.features, T=args.T, N=args.N, sentences=getattr(args, "sentences", "both"), fmt=fmt,
                   glove_txt=args.glove_txt, glove_pkl=args.glove_pkl, glove_npy=args.glove_npy,
                   glove_vocab=args.glove_vocab, alpha=args.alpha, **common)
