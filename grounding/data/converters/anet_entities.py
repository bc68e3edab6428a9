"""ActivityNet-Entities (GVD layout) -> task ``wsvog``.

Inputs:

``--annotations FILE`` (repeatable)
    ``anet_entities_cleaned_class_thresh50_{trainval,test_skeleton,hidden_test_skeleton}.json``:
    ``vocab`` (the 431 object classes) and ``annotations/<video>/segments/<seg>/{tokens,
    process_clss, process_idx, frame_ind, process_bnd_box, crowds, timestamps}``. The test
    skeletons carry no boxes: their instances get no valid frame.
``--split-ids FILE``
    ``split_ids_anet_entities.json`` (``training``/``validation``/``testing``/``hidden_test`` ->
    videos), mapped to splits ``train``/``val``/``test``/``hidden_test``.
``--features DIR``
    GVD's ``fc6_feat_100rois``: one ``<video>_segment_<seg:02d>.npy`` per segment,
    ``[10, 100, 2048]`` (10 frames: the middle frame of 10 equal clips; 100 proposals each).
``--proposals-h5 FILE`` with ``--dic FILE``
    GVD's ``anet_detection_vg_fc6_feat_100rois.h5`` (``dets_labels [segments, 1000, 7]``: x1, y1,
    x2, y2, frame, class, score; ``dets_num``) whose rows follow ``dic_anet.json``'s ``videos``
    list; row ``i`` of a segment's ``dets_labels`` belongs to feature ``i`` of the flattened
    ``[10*100, 2048]`` features, as GVD's loader asserts. Or ``--proposals DIR`` with one
    ``<video>_segment_<seg:02d>.npy`` ``[10, >=N, >=4]`` per segment.
``--sizes FILE`` (optional)
    ``anet_entities_trainval.json`` (``database/<video>/rwidth,rheight``) for the frame size;
    videos without one get ``--default-frame-size`` (720x405). Boxes and proposals are already in
    the 720-px-wide frame (GVD: "no need to resize proposal nor GT box"), so nothing is rescaled.
GloVe (``--glove-txt``/``--glove-pkl``/``--glove-npy``) for the class word vectors; a class name
missing from GloVe gets a fixed pseudo-random vector (as GVD does), counted in the manifest.

Row conventions: ``T`` = 10 frames, the first ``N`` (default 100) proposals per frame;
``query_classes`` = the segment's classes, unique, in order of their position in the sentence;
one ground-truth instance per (box, distinct class of the box) with its box valid only in its
``frame_ind`` frame (and not when the box is empty or the frame is not among the ``T`` kept).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from ..schema import classes_schema
from ..shards import DatasetWriter
from .common import (
    MAX_MISSING_FRACTION, MIN_VOCAB_COVERAGE, ConversionError, MissingInputs, Glove, add_glove_arguments,
    centre_indices, chunks, load_json, need_dir, need_file, parse_size, phrase_vector, producer, rename, wsvog_table)

NAME = "anet-entities"
PRODUCER = "grounding.data.converters.anet_entities"
SPLITS = {"train": "training", "val": "validation", "test": "testing", "hidden_test": "hidden_test"}


def seg_name(vid: str, seg) -> str:
    return f"{vid}_segment_{int(seg):02d}"


class _H5Proposals:
    def __init__(self, h5: Path, dic: Path):
        import h5py  # optional dependency (extra "converters")

        info = load_json(dic, "--dic")
        try:
            self.row = {v["id"]: i for i, v in enumerate(info["videos"])}
        except (KeyError, TypeError):
            raise ConversionError(f"--dic {dic}: expected {{'videos': [{{'id': ...}}, ...]}} (GVD dic_anet.json)") from None
        self.f = h5py.File(h5, "r")
        for key in ("dets_labels", "dets_num"):
            if key not in self.f:
                raise ConversionError(f"--proposals-h5 {h5}: dataset {key!r} is missing")
        self.path = h5

    def close(self) -> None:
        self.f.close()

    def has(self, seg: str) -> bool:
        return seg in self.row and self.row[seg] < self.f["dets_num"].shape[0]

    def get(self, seg: str, frames: int, per_frame: int) -> np.ndarray:
        i = self.row[seg]
        n = int(self.f["dets_num"][i])
        if n != frames * per_frame:
            raise ConversionError(f"--proposals-h5 {self.path}: {seg} has {n} proposals, its features "
                                  f"{frames}x{per_frame}")
        return np.asarray(self.f["dets_labels"][i, :n, :4], np.float32).reshape(frames, per_frame, 4)


class _DirProposals:
    def __init__(self, folder: Path):
        self.folder = folder

    def close(self) -> None:
        pass

    def has(self, seg: str) -> bool:
        return (self.folder / f"{seg}.npy").is_file()

    def get(self, seg: str, frames: int, per_frame: int) -> np.ndarray:
        p = self.folder / f"{seg}.npy"
        a = np.load(p, mmap_mode="r")
        if a.ndim != 3 or a.shape[0] != frames or a.shape[2] < 4:
            raise ConversionError(f"{p}: proposals must be [{frames}, >=N, 4]; got shape {a.shape}")
        return np.asarray(a[..., :4], np.float32)


def convert(root, annotations, split_ids, features, proposals=None, proposals_h5=None, dic=None, sizes=None,
            glove_txt=None, glove_pkl=None, glove_npy=None, glove_vocab=None, splits=tuple(SPLITS), T: int = 10,
            N: int = 100, default_frame_size: str = "720x405", feature_dtype: str = "float16",
            limit: int | None = None, skip_missing: bool = False,
            max_missing_fraction: float = MAX_MISSING_FRACTION, min_vocab_coverage: float = MIN_VOCAB_COVERAGE,
            renames: dict[str, str] | None = None,
            overwrite: bool = False, log=print):
    if not annotations:
        raise ConversionError("--annotations FILE is required (anet_entities_cleaned_class_thresh50_*.json)")
    ann_files = [need_file(p, "--annotations file") for p in annotations]
    ids_file = need_file(split_ids, "--split-ids")
    feat_dir = need_dir(features, "--features")
    bad = [s for s in splits if s not in SPLITS]
    if bad:
        raise ConversionError(f"unknown split {bad[0]!r}; allowed: {', '.join(SPLITS)}")
    if (proposals is None) == (proposals_h5 is None):
        raise ConversionError("give exactly one of --proposals DIR or --proposals-h5 FILE (with --dic FILE)")
    if proposals_h5 is not None:
        props = _H5Proposals(need_file(proposals_h5, "--proposals-h5"), need_file(dic, "--dic (with --proposals-h5)"))
    else:
        props = _DirProposals(need_dir(proposals, "--proposals"))
    default_size = parse_size(default_frame_size)

    vocab, anns = None, {}
    for p in ann_files:
        d = load_json(p, "--annotations file")
        if not isinstance(d, dict) or "vocab" not in d or "annotations" not in d:
            raise ConversionError(f"--annotations {p}: expected {{'vocab': [...], 'annotations': {{...}}}}")
        if vocab is not None and d["vocab"] != vocab:
            raise ConversionError(f"--annotations {p}: its class vocab differs from {ann_files[0]}")
        vocab = d["vocab"]
        anns.update(d["annotations"])
    cls_id = {c: i for i, c in enumerate(vocab)}
    split_of = {}
    for name, vids in load_json(ids_file, "--split-ids").items():
        for v in vids:
            split_of[v] = name
    size_of = {}
    if sizes:
        sp = need_file(sizes, "--sizes")
        for vid, v in (load_json(sp, "--sizes").get("database") or {}).items():
            if "rwidth" in v and "rheight" in v:
                size_of[vid] = (int(v["rwidth"]), int(v["rheight"]))
    glove = Glove.load(glove_txt, glove_pkl, glove_npy, glove_vocab,
                       words={w for c in vocab for w in c.replace(",", " ").split()})

    plan: dict[str, list] = {sp: [] for sp in splits}
    seen = {sp: 0 for sp in splits}
    missing, shape = MissingInputs(skip_missing, max_missing_fraction, "segments"), None
    for vid, v in anns.items():
        sp = next((s for s in splits if SPLITS[s] == split_of.get(vid)), None)
        if sp is None:
            continue
        for seg, s in v["segments"].items():
            if limit and seen[sp] >= limit:
                break
            seen[sp] += 1
            name = seg_name(vid, seg)
            fpath = feat_dir / f"{name}.npy"
            problems = [str(fpath)] if not fpath.is_file() else []
            if not props.has(name):
                problems.append(f"proposals of {name}")
            unknown = [c for cs in s.get("process_clss", []) for c in cs if c not in cls_id]
            if unknown:
                raise ConversionError(f"{name}: class {unknown[0]!r} is not in the annotation vocab")
            if not missing.keep(problems, rename(sp, renames)):
                continue
            if shape is None:
                shape = np.load(fpath, mmap_mode="r").shape
                if len(shape) != 3 or shape[1] < N:
                    raise ConversionError(f"{fpath}: features must be [frames, >={N}, D]; got shape {shape}")
            plan[sp].append((name, vid, s, fpath))
    missing.raise_if_any()
    if shape is None:
        raise ConversionError("no segment to convert (no video of the chosen splits in the annotations)")
    D = int(shape[2])

    K = len(vocab)
    vectors = np.zeros((K, glove.dim), np.float32)
    not_found = 0
    for i, c in enumerate(vocab):
        vectors[i], found = phrase_vector(glove, c)
        not_found += not found
    counts = np.zeros(K, np.int64)
    for name, vid, s, _ in plan.get("train", []):
        counts[sorted({cls_id[c] for cs in s.get("process_clss", []) for c in cs})] += 1
    classes_tbl = pa.table(
        {"class_id": pa.array(np.arange(K), pa.int16()), "name": vocab,
         "word_vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), glove.dim),
         "train_count": pa.array(counts, pa.int64()), "heldout": pa.array(np.zeros(K, bool))},
        schema=classes_schema(glove.dim))

    # segments_with_boxes: per (output) split, segments with at least one valid GT box (what box/query
    # accuracy can score; a test skeleton has none and is not scored, grounding.metrics.wsvog)
    stats = {"segments_skipped": missing.skipped, "default_frame_size_used": 0, "boxes": 0,
             "segments_with_boxes": {rename(sp, renames): 0 for sp in splits if plan[sp]},
             "classes_without_glove": not_found}
    args = dict(annotations=[str(p) for p in ann_files], split_ids=str(ids_file), features=str(feat_dir),
                proposals=str(proposals) if proposals else None, proposals_h5=str(proposals_h5) if proposals_h5 else None,
                dic=str(dic) if dic else None, sizes=str(sizes) if sizes else None, glove=glove.source,
                splits=list(splits), T=T, N=N, default_frame_size=default_frame_size, feature_dtype=feature_dtype,
                limit=limit, skip_missing=skip_missing, max_missing_fraction=max_missing_fraction,
                renames=renames or {})
    sources = {p.name: p for p in (*ann_files, ids_file)}
    extra = {"source": "activitynet_entities", "layout": "GVD fc6_feat_100rois", "num_classes": K,
             "stats": stats, "splits_from": {rename(sp, renames): SPLITS[sp] for sp in splits if plan[sp]}}
    try:
        with DatasetWriter(root, "wsvog", {"T": T, "N": N, "D": D}, feature_dtype,
                           producer(PRODUCER, args, sources), overwrite=overwrite, extra=extra) as w:
            w.add_table("classes", classes_tbl)
            for sp, items in plan.items():
                for part in chunks(items):
                    rows = [_row(it, T, N, D, cls_id, props, size_of, default_size, stats) for it in part]
                    stats["segments_with_boxes"][rename(sp, renames)] += sum(bool(np.any(r["gt_valid"])) for r in rows)
                    w.write(rename(sp, renames), wsvog_table(rows, T, N, D, feature_dtype))
                if items:
                    with_boxes = stats["segments_with_boxes"][rename(sp, renames)]
                    log(f"{sp}: {len(items)} segments, {with_boxes} with a ground-truth box"
                        + ("" if with_boxes or sp == "train" else " (not scored for box/query accuracy)"))
    finally:
        props.close()
    return w.manifest


def _row(item, T, N, D, cls_id, props, size_of, default_size, stats) -> dict:
    name, vid, s, fpath = item
    feats = np.load(fpath, mmap_mode="r")
    if feats.ndim != 3 or feats.shape[1] < N or feats.shape[2] != D:
        raise ConversionError(f"{fpath}: features must be [frames, >={N}, {D}]; got shape {feats.shape}")
    F = feats.shape[0]
    boxes = props.get(name, F, feats.shape[1])
    idx = centre_indices(F, T)
    frame_of = {int(f): t for t, f in enumerate(idx)}  # annotated frame -> row frame (first match)

    clss, pidx = s.get("process_clss", []), s.get("process_idx", [])
    order = sorted(((p, cls_id[c]) for cs, ps in zip(clss, pidx) for c, p in zip(cs, ps)), key=lambda x: x[0])
    query = list(dict.fromkeys(c for _, c in order)) or list(dict.fromkeys(cls_id[c] for cs in clss for c in cs))
    bnd, frm = s.get("process_bnd_box", []), s.get("frame_ind", [])
    gt_class, gt_boxes, gt_valid = [], [], []
    for i, cs in enumerate(clss):
        for c in dict.fromkeys(cs):  # a box may list one class twice (several words of its phrase)
            b, v = np.zeros((T, 4), np.float32), np.zeros(T, bool)
            if i < len(bnd) and i < len(frm) and int(frm[i]) in frame_of:
                x1, y1, x2, y2 = map(float, bnd[i])
                if x2 > x1 and y2 > y1:
                    t = frame_of[int(frm[i])]
                    b[t], v[t] = (x1, y1, x2, y2), True
                    stats["boxes"] += 1
            gt_class.append(cls_id[c])
            gt_boxes.append(b)
            gt_valid.append(v)
    if vid in size_of:
        W, H = size_of[vid]
    else:
        (W, H), stats["default_frame_size_used"] = default_size, stats["default_frame_size_used"] + 1
    return {
        "segment_id": name, "video_id": vid, "recipe": "", "sentence": " ".join(s.get("tokens", [])),
        "query_classes": query, "features": np.asarray(feats[idx, :N, :]),
        "proposals": np.asarray(boxes[idx, :N, :4], np.float32),
        "gt_class": gt_class, "gt_boxes": np.asarray(gt_boxes, np.float32).reshape(len(gt_class), T, 4),
        "gt_valid": np.asarray(gt_valid, bool).reshape(len(gt_class), T), "frame_width": W, "frame_height": H,
    }


HELP = {NAME: "ActivityNet-Entities region features [10,100,2048] + its JSON (GVD layout) -> wsvog"}


def add_arguments(p, fmt: str = NAME) -> None:
    p.add_argument("--annotations", action="append", default=[], metavar="FILE",
                   help="anet_entities_cleaned_class_thresh50_*.json (repeatable)")
    p.add_argument("--split-ids", required=True, metavar="FILE", help="split_ids_anet_entities.json")
    p.add_argument("--features", required=True, metavar="DIR",
                   help="fc6_feat_100rois: <video>_segment_<seg:02d>.npy [10, 100, 2048] per segment")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--proposals-h5", metavar="FILE", help="GVD anet_detection_vg_fc6_feat_100rois.h5 (with --dic)")
    g.add_argument("--proposals", metavar="DIR", help="<video>_segment_<seg:02d>.npy [10, >=N, 4] per segment")
    p.add_argument("--dic", metavar="FILE", help="GVD dic_anet.json (row order of --proposals-h5)")
    p.add_argument("--sizes", metavar="FILE", help="anet_entities_trainval.json (rwidth/rheight per video)")
    p.add_argument("--default-frame-size", default="720x405", metavar="WxH",
                   help="frame size of videos without one in --sizes (default 720x405)")
    add_glove_arguments(p)
    p.add_argument("--splits", default=",".join(SPLITS), help=f"comma-separated, of {', '.join(SPLITS)}")
    p.add_argument("--T", type=int, default=10, help="frames per segment (default 10, all of GVD's)")
    p.add_argument("--N", type=int, default=100, help="proposals kept per frame (the first N; default 100)")


def run(args, root, common: dict, fmt: str = NAME):
    return convert(root, args.annotations, args.split_ids, args.features, proposals=args.proposals,
                   proposals_h5=args.proposals_h5, dic=args.dic, sizes=args.sizes, glove_txt=args.glove_txt,
                   glove_pkl=args.glove_pkl, glove_npy=args.glove_npy, glove_vocab=args.glove_vocab,
                   splits=[s for s in args.splits.split(",") if s], T=args.T, N=args.N,
                   default_frame_size=args.default_frame_size, **common)
