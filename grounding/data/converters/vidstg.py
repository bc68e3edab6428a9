"""VidSTG annotations (+ VidOR boxes + per-video features) -> task ``stvg``.

VidSTG ships sentences and temporal extents (``{train,val,test}_annotations.json``) but no boxes
(they are VidOR's trajectories) and no features, so this converter reads three things:

``--annotations DIR`` / ``--split NAME=FILE``
    VidSTG's annotation lists: per item ``vid``, ``width``, ``height``, ``used_segment {begin_fid,
    end_fid}``, ``temporal_gt {begin_fid, end_fid}``, ``captions``/``questions`` (``description``,
    ``target_id``).
``--vidor DIR``
    VidOR's annotation tree (``annotation/{training,validation}/<group>/<vid>.json``; searched
    recursively for ``<vid>.json``): ``trajectories[frame] = [{tid, bbox {xmin, ymin, xmax,
    ymax}}]``.
``--features DIR`` -- **the layout this project defines** (no official release exists):
    one ``<vid>.npz`` per video holding ``features [F, P, D]`` (float16/float32; region features
    of ``F`` sampled frames, ``P >= N`` proposals each), ``boxes [F, P, 4]`` (proposal x1, y1, x2,
    y2 in pixels of the video's ``width`` x ``height``) and ``frame_ids [F]`` (ascending 0-based
    frame indices into the video, the same numbering as VidOR's ``trajectories`` and VidSTG's
    ``*_fid``). Write it with ``numpy.savez(path, features=…, boxes=…, frame_ids=…)``.

One row per sentence (``--sentences both|captions|questions``): ``segment_id =
"<vid>_<k>_c<j>"`` / ``"<vid>_<k>_q<j>"`` (``k`` = the item's position in the annotation file).
``T`` frames (default 10): the targets ``begin + floor((t + 0.5) * (end - begin + 1) / T)`` over the
item's ``used_segment``, each replaced by the nearest frame of ``frame_ids``; the first ``N``
proposals (default 20) of those frames. ``tube[t]`` is the target's VidOR box in that frame and
``tube_valid[t]`` is True when the frame lies in ``temporal_gt`` and the target has a box there.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..shards import DatasetWriter
from .common import ConversionError, MissingInputs, chunks, load_json, need_dir, need_file, producer, rename, stvg_table

NAME = "vidstg"
PRODUCER = "grounding.data.converters.vidstg"
DEFAULTS = {"train": "train_annotations.json", "val": "val_annotations.json", "test": "test_annotations.json"}
SENTENCES = ("both", "captions", "questions")


def _vidor_index(folder: Path) -> dict[str, Path]:
    return {p.stem: p for p in folder.rglob("*.json")}


def _target_frames(begin: int, end: int, T: int, frame_ids: np.ndarray) -> np.ndarray:
    """Indices into ``frame_ids`` of the frames nearest to ``T`` evenly spread targets."""
    targets = begin + np.floor((np.arange(T) + 0.5) * (end - begin + 1) / T).astype(np.int64)
    pos = np.clip(np.searchsorted(frame_ids, targets), 0, len(frame_ids) - 1)
    prev = np.clip(pos - 1, 0, len(frame_ids) - 1)
    closer_prev = np.abs(frame_ids[prev] - targets) <= np.abs(frame_ids[pos] - targets)
    return np.where(closer_prev, prev, pos)


def convert(root, split_files: dict[str, str], vidor, features, T: int = 10, N: int = 20,
            sentences: str = "both", feature_dtype: str = "float16", limit: int | None = None,
            skip_missing: bool = False, renames: dict[str, str] | None = None, overwrite: bool = False, log=print):
    if not split_files:
        raise ConversionError("no annotation file: give --annotations DIR or --split NAME=FILE")
    if sentences not in SENTENCES:
        raise ConversionError(f"--sentences {sentences!r}; allowed: {', '.join(SENTENCES)}")
    if T < 1 or N < 1:
        raise ConversionError("T and N must be >= 1")
    files = {sp: need_file(p, f"annotation file of split {sp}") for sp, p in split_files.items()}
    feat_dir = need_dir(features, "--features")
    vidor_dir = need_dir(vidor, "--vidor")
    traj_file = _vidor_index(vidor_dir)

    plan: dict[str, list] = {}
    missing, D = MissingInputs(skip_missing), None
    for sp, p in files.items():
        items = load_json(p, f"annotation file of split {sp}")
        if not isinstance(items, list):
            raise ConversionError(f"{p}: expected a list of VidSTG items (vid, used_segment, temporal_gt, captions, …)")
        plan[sp] = []
        for k, it in enumerate(items[:limit] if limit else items):
            try:
                vid = str(it["vid"])
                it["used_segment"]["begin_fid"], it["temporal_gt"]["end_fid"], it["width"]
            except (KeyError, TypeError):
                raise ConversionError(f"{p}: item {k} lacks vid, width, used_segment or temporal_gt") from None
            npz = feat_dir / f"{vid}.npz"
            problems = [] if npz.is_file() else [str(npz)]
            if vid not in traj_file:
                problems.append(f"VidOR trajectories {vid}.json under {vidor_dir}")
            if not missing.keep(problems):
                continue
            if D is None:
                with np.load(npz, allow_pickle=False) as z:
                    shape = z["features"].shape
                if len(shape) != 3 or shape[1] < N:
                    raise ConversionError(f"{npz}: features must be [frames, >={N}, D]; got shape {shape}")
                D = int(shape[2])
            for kind, key in (("c", "captions"), ("q", "questions")):
                if sentences in ("both", key):
                    for j, s in enumerate(it.get(key, [])):
                        plan[sp].append((f"{vid}_{k}_{kind}{j}", vid, it, s, npz))
    missing.raise_if_any()
    if D is None:
        raise ConversionError("no VidSTG item to convert")

    stats = {"items_skipped": missing.skipped, "sentences": sum(len(v) for v in plan.values()), "tube_boxes": 0}
    args = dict(split_files={sp: str(p) for sp, p in files.items()}, vidor=str(vidor_dir), features=str(feat_dir),
                T=T, N=N, sentences=sentences, feature_dtype=feature_dtype, limit=limit,
                skip_missing=skip_missing, renames=renames or {})
    extra = {"source": "vidstg", "layout": "per-video npz (features, boxes, frame_ids)", "stats": stats,
             "splits_from": {rename(sp, renames): Path(p).name for sp, p in files.items()}}
    cache: dict[str, tuple] = {}
    with DatasetWriter(root, "stvg", {"T": T, "N": N, "D": D}, feature_dtype,
                       producer(PRODUCER, args, {p.name: p for p in files.values()}),
                       overwrite=overwrite, extra=extra) as w:
        for sp, rows in plan.items():
            for part in chunks(rows):
                out = [_row(r, T, N, D, traj_file, cache, stats) for r in part]
                w.write(rename(sp, renames), stvg_table(out, T, N, D, feature_dtype))
            log(f"{sp}: {len(rows)} sentences")
    return w.manifest


def _load_video(vid, npz, traj_file, cache, N, D):
    if vid not in cache:
        cache.clear()  # items of one video are adjacent in VidSTG's lists; keep one video in memory
        with np.load(npz, allow_pickle=False) as z:
            feats, boxes, fids = z["features"], z["boxes"], np.asarray(z["frame_ids"], np.int64)
        if feats.ndim != 3 or feats.shape[1] < N or feats.shape[2] != D:
            raise ConversionError(f"{npz}: features must be [frames, >={N}, {D}]; got shape {feats.shape}")
        if boxes.shape[:2] != feats.shape[:2] or boxes.shape[2] < 4 or fids.shape != (feats.shape[0],):
            raise ConversionError(f"{npz}: boxes {boxes.shape} / frame_ids {fids.shape} do not match features "
                                  f"{feats.shape} ([F, P, 4] and [F])")
        if len(fids) > 1 and np.any(np.diff(fids) <= 0):
            raise ConversionError(f"{npz}: frame_ids must be strictly ascending")
        traj = json.loads(traj_file[vid].read_text()).get("trajectories", [])
        cache[vid] = (feats, boxes, fids, traj)
    return cache[vid]


def _row(r, T, N, D, traj_file, cache, stats) -> dict:
    seg_id, vid, it, sent, npz = r
    feats, boxes, fids, traj = _load_video(vid, npz, traj_file, cache, N, D)
    used, gt = it["used_segment"], it["temporal_gt"]
    sel = _target_frames(int(used["begin_fid"]), int(used["end_fid"]), T, fids)
    tid = int(sent.get("target_id", it.get("used_relation", {}).get("subject_tid", -1)))
    tube, valid = np.zeros((T, 4), np.float32), np.zeros(T, bool)
    for t, i in enumerate(sel):
        f = int(fids[i])
        if not int(gt["begin_fid"]) <= f <= int(gt["end_fid"]) or f >= len(traj):
            continue
        for obj in traj[f]:
            if int(obj.get("tid", -2)) == tid:
                b = obj["bbox"]
                tube[t] = (b["xmin"], b["ymin"], b["xmax"], b["ymax"])
                valid[t] = True
                stats["tube_boxes"] += 1
                break
    return {"segment_id": seg_id, "video_id": vid, "sentence": str(sent.get("description", "")).strip(),
            "features": np.asarray(feats[sel, :N, :]), "proposals": np.asarray(boxes[sel, :N, :4], np.float32),
            "tube": tube, "tube_valid": valid, "frame_width": int(it["width"]), "frame_height": int(it["height"])}


HELP = {NAME: "VidSTG annotations + VidOR boxes + per-video npz features (documented layout) -> stvg"}


def add_arguments(p, fmt: str = NAME) -> None:
    p.add_argument("--annotations", metavar="DIR", help=f"folder with {', '.join(DEFAULTS.values())}")
    p.add_argument("--split", action="append", default=[], metavar="NAME=FILE",
                   help="an annotation file for split NAME (repeatable)")
    p.add_argument("--vidor", required=True, metavar="DIR", help="VidOR annotation tree (<vid>.json with trajectories)")
    p.add_argument("--features", required=True, metavar="DIR",
                   help="<vid>.npz per video: features [F,P,D], boxes [F,P,4] (pixels), frame_ids [F]")
    p.add_argument("--T", type=int, default=10, help="frames per sentence (default 10)")
    p.add_argument("--N", type=int, default=20, help="proposals kept per frame (the first N; default 20)")
    p.add_argument("--sentences", choices=SENTENCES, default="both", help="captions, questions or both (default)")


def run(args, root, common: dict, fmt: str = NAME):
    from ._moment import split_files

    return convert(root, split_files(args, DEFAULTS), args.vidor, args.features, T=args.T, N=args.N,
                   sentences=args.sentences, **common)
