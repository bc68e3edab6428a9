"""Shared code of the temporal-moment converters (Charades-STA/-CD, ActivityNet Captions/-CD) -> ``moment``.

Annotation files come in two published shapes, both accepted everywhere:

* records ``[[video, duration, [start, end], sentence], ...]`` (Charades-STA and ActivityNet
  Captions as CPL/CCR ship them);
* ``{video: {"timestamps": [[start, end], ...], "sentences": [...], "duration" | "video_duration":
  seconds, ...}}`` (Charades-CD, ActivityNet-CD, the official ActivityNet Captions files).

Features are one HDF5 file with a ``[frames, D]`` dataset per video (``f[video]``, Charades I3D)
or a group (``f[video][key]``, ActivityNet C3D: ``key = "c3d_features"``); singleton middle axes
(``[frames, 1, 1, 1024]``) are squeezed. A video's frames are pooled to ``L`` clips as CPL does
(:func:`~.common.pool_clips`).

One row per video and split, holding every query of the video (the ``moment`` schema): query
``j`` has ``sample_ids[j] = "<video>_<j>"`` (``j`` = its position among the video's queries in the
annotation file), its sentence (stripped), ``word_ids`` (:class:`~.common.Vocab` ids of
:func:`grounding.data.moment.tokenize`'s tokens, as the generated Charades benchmark: ``<PAD>`` =
0, tokens outside the vocabulary -> the last id ``<UNK>``) and its moment
``(start, end)`` in seconds clipped to ``[0, duration]``. Queries whose clipped moment is empty
(``end <= start``) are dropped and counted in the manifest (``extra.stats.queries_dropped``). Word
counts (and, with ``--vocab sentences``, the vocabulary) come from the sentences of
``vocab_splits`` (default: ``train`` when converted, else every converted split).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from ..moment import tokenize
from ..shards import DatasetWriter
from .common import (MAX_MISSING_FRACTION, MIN_VOCAB_COVERAGE, ConversionError, Glove, Vocab, check_coverage,
                     check_loss, add_glove_arguments, chunks, load_json, moment_table,
                     need_file, pool_clips, producer, rename)

VOCAB_MODES = ("auto", "glove", "sentences")


def load_records(path: Path) -> dict[str, dict]:
    """video -> {"duration": s, "queries": [(j, start, end, sentence)]}, in file order."""
    d = load_json(path)
    out: dict[str, dict] = {}
    if isinstance(d, list):
        for n, r in enumerate(d):
            try:
                vid, dur, (s, e), sent = r[0], float(r[1]), map(float, r[2]), str(r[3])
            except (TypeError, ValueError, IndexError):
                raise ConversionError(f"{path}: record {n} is not [video, duration, [start, end], sentence]") from None
            v = out.setdefault(str(vid), {"duration": dur, "queries": []})
            v["queries"].append((len(v["queries"]), s, e, sent))
        return out
    if isinstance(d, dict):
        for vid, v in d.items():
            try:
                dur = float(v["duration"] if "duration" in v else v["video_duration"])
                ts, sents = v["timestamps"], v["sentences"]
            except (KeyError, TypeError, ValueError):
                raise ConversionError(f"{path}: video {vid} lacks duration/video_duration, timestamps or "
                                      f"sentences") from None
            if len(ts) != len(sents):
                raise ConversionError(f"{path}: video {vid} has {len(ts)} timestamps but {len(sents)} sentences")
            out[str(vid)] = {"duration": dur,
                             "queries": [(j, float(t[0]), float(t[1]), str(s)) for j, (t, s) in enumerate(zip(ts, sents))]}
        return out
    raise ConversionError(f"{path}: expected a list of [video, duration, [start, end], sentence] records or a "
                          f"{{video: {{timestamps, sentences, duration}}}} dict")


class _H5:
    def __init__(self, path: Path, key: str | None):
        import h5py  # optional dependency (extra "converters")

        self.path, self.key = path, key or None
        try:
            self.f = h5py.File(path, "r")
        except OSError as e:
            raise ConversionError(f"--features {path}: not a readable HDF5 file ({e})") from None

    def has(self, vid: str) -> bool:
        if vid not in self.f:
            return False
        return self.key is None or self.key in self.f[vid]

    def get(self, vid: str) -> np.ndarray:
        ds = self.f[vid] if self.key is None else self.f[vid][self.key]
        a = np.asarray(ds, dtype=np.float32)
        if a.ndim < 2:
            raise ConversionError(f"--features {self.path}: {vid} has shape {a.shape}; expected [frames, D]")
        return a.reshape(a.shape[0], -1)

    def close(self) -> None:
        self.f.close()


def convert(root, *, name: str, producer_name: str, source: str, split_files: dict[str, str], features: str,
            feature_key: str | None, L: int, glove_txt=None, glove_pkl=None, glove_npy=None, glove_vocab=None,
            vocab: str = "auto", vocab_splits: list[str] | None = None, vocab_min_count: int = 1,
            feature_dtype: str = "float16",
            limit: int | None = None, skip_missing: bool = False,
            max_missing_fraction: float = MAX_MISSING_FRACTION, min_vocab_coverage: float = MIN_VOCAB_COVERAGE,
            renames: dict[str, str] | None = None,
            overwrite: bool = False, log=print):
    if not split_files:
        raise ConversionError("no annotation file: give --annotations DIR or --split NAME=FILE")
    if L < 1:
        raise ConversionError("--num-clips must be >= 1")
    if vocab not in VOCAB_MODES:
        raise ConversionError(f"--vocab {vocab!r}; allowed: {', '.join(VOCAB_MODES)}")
    files = {sp: need_file(p, f"annotation file of split {sp}") for sp, p in split_files.items()}
    feats = _H5(need_file(features, "--features"), feature_key)
    try:
        records = {sp: load_records(p) for sp, p in files.items()}
        if limit:
            records = {sp: dict(list(r.items())[:limit]) for sp, r in records.items()}
        missing = sorted({v for r in records.values() for v in r if not feats.has(v)})
        if missing and not skip_missing:
            where = f"f[video][{feature_key!r}]" if feature_key else "f[video]"
            raise ConversionError(f"--features {features}: no {where} for {len(missing)} video(s), e.g. "
                                  f"{', '.join(missing[:5])}; pass --skip-missing to leave them out")
        gone = set(missing)
        where = f"f[video][{feature_key!r}]" if feature_key else "f[video]"
        total = {rename(sp, renames): len(r) for sp, r in records.items()}
        reasons = {rename(sp, renames): [f"no {where} for {v}" for v in r if v in gone][:1] for sp, r in records.items()}
        records = {sp: {v: x for v, x in r.items() if v not in gone} for sp, r in records.items()}
        check_loss({rename(sp, renames): len(r) for sp, r in records.items()}, total, max_missing_fraction,
                   reasons, unit="videos")
        first = next((v for r in records.values() for v in r), None)
        if first is None:
            raise ConversionError("no video to convert (empty annotation files, or every video lacks features)")
        D = feats.get(first).shape[1]

        vsplits = vocab_splits or (["train"] if "train" in records else list(records))
        unknown = [s for s in vsplits if s not in records]
        if unknown:
            raise ConversionError(f"--vocab-splits {unknown[0]!r} is not converted; converted: {', '.join(records)}")
        counts = Counter(w for sp in vsplits for v in records[sp].values() for q in v["queries"] for w in tokenize(q[3]))
        glove = Glove.load(glove_txt, glove_pkl, glove_npy, glove_vocab, words=set(counts))
        mode = vocab if vocab != "auto" else ("glove" if glove.rows is not None else "sentences")
        voc = Vocab.from_glove(glove, counts) if mode == "glove" else Vocab.from_sentences(counts, glove, vocab_min_count)

        glove_file = str(glove_txt or glove_pkl or glove_npy)
        coverage = check_coverage({rename(sp, renames): _coverage(r, voc) for sp, r in records.items()},
                                  glove_file, min_vocab_coverage, log)
        stats = {"videos_skipped": len(missing), "queries_dropped": 0, "queries_clipped": 0,
                 "vocab_words": len(voc.words), "vocab_words_without_glove": voc.missing,
                 "vocab_coverage": coverage}
        args = dict(split_files={sp: str(p) for sp, p in files.items()}, features=str(features),
                    feature_key=feature_key, L=L, glove=glove.source, vocab=mode, vocab_splits=vsplits,
                    vocab_min_count=vocab_min_count, feature_dtype=feature_dtype, limit=limit,
                    skip_missing=skip_missing, max_missing_fraction=max_missing_fraction,
                    min_vocab_coverage=min_vocab_coverage, renames=renames or {})
        extra = {"source": source, "num_clips": L, "pooling": "cpl-mean", "vocab": mode, "pad_id": 0,
                 "unk_id": voc.unk_id, "vocab_size": len(voc.words),
                 "stats": stats, "splits_from": {rename(sp, renames): Path(p).name for sp, p in files.items()}}
        with DatasetWriter(root, "moment", {"L": L, "D": D}, feature_dtype,
                           producer(producer_name, args, {p.name: p for p in files.values()}),
                           overwrite=overwrite, extra=extra) as w:
            w.add_table("vocab", voc.table())
            for sp, recs in records.items():
                written = 0
                for part in chunks(list(recs.items())):
                    rows = [r for vid, rec in part if (r := _row(vid, rec, feats, L, D, voc, stats))]
                    written += len(rows)
                    if rows:
                        w.write(rename(sp, renames), moment_table(rows, L, D, feature_dtype))
                # videos whose every query was clipped away count as lost too (nothing is written on error)
                check_loss({rename(sp, renames): written}, {rename(sp, renames): total[rename(sp, renames)]},
                           max_missing_fraction, {rename(sp, renames): ["every query clipped away"]}, unit="videos")
                log(f"{sp}: {written} videos")
    finally:
        feats.close()
    return w.manifest


def _coverage(records: dict, vocab: Vocab) -> tuple[int, int]:
    """(tokens with a GloVe vector, tokens) over a split's sentences: ``<UNK>`` and words the GloVe
    file lacks (zero vectors of ``--vocab sentences``) are not covered."""
    zero = ~np.any(vocab.vectors != 0, axis=1)
    found = n = 0
    for rec in records.values():
        for q in rec["queries"]:
            ids = [vocab.ids.get(t, vocab.unk_id) for t in tokenize(q[3], vocab.ids)]
            n += len(ids)
            found += sum(not zero[i] for i in ids)
    return found, n


def _row(vid, rec, feats: _H5, L, D, vocab: Vocab, stats) -> dict | None:
    frames = feats.get(vid)
    if frames.shape[1] != D:
        raise ConversionError(f"--features {feats.path}: {vid} has D={frames.shape[1]}, other videos {D}")
    dur = rec["duration"]
    ids, sents, words, moments = [], [], [], []
    for j, s, e, sent in rec["queries"]:
        cs, ce = max(0.0, s), min(e, dur)
        if ce <= cs:
            stats["queries_dropped"] += 1
            continue
        if (cs, ce) != (s, e):
            stats["queries_clipped"] += 1
        ids.append(f"{vid}_{j}")
        sents.append(sent.strip())
        words.append(vocab.encode(sent))
        moments.append((cs, ce))
    if not ids:
        return None
    return {"video_id": vid, "duration": dur, "features": pool_clips(frames, L), "sample_ids": ids,
            "sentences": sents, "word_ids": words, "moments": moments}


# ----------------------------------------------------------------------------------- CLI
def add_arguments(p, default_L: int, feature_help: str, default_key: str | None, split_help: str) -> None:
    p.add_argument("--annotations", metavar="DIR", help=f"folder with the published split files ({split_help})")
    p.add_argument("--split", action="append", default=[], metavar="NAME=FILE",
                   help="an annotation file for split NAME (repeatable; adds to or replaces --annotations' files)")
    p.add_argument("--features", required=True, metavar="FILE", help=feature_help)
    p.add_argument("--feature-key", default=default_key,
                   help=f"dataset inside each video's group (default {default_key!r}; '' = the video's own dataset)"
                   if default_key else "dataset inside each video's group (default: none, f[video] itself)")
    p.add_argument("--num-clips", type=int, default=default_L, metavar="L",
                   help=f"clips per video after CPL's mean pooling (default {default_L}, as CPL/CCR: max_num_frames)")
    add_glove_arguments(p)
    p.add_argument("--vocab", choices=VOCAB_MODES, default="auto",
                   help="word ids: 'glove' = the GloVe file's own rows (pkl / npy+w2id; <PAD>=0, <UNK> last), "
                        "'sentences' = words of the vocabulary splits; auto (default) = glove when the file numbers "
                        "its words")
    p.add_argument("--vocab-splits", metavar="S1,S2",
                   help="splits whose sentences count words / build the vocabulary (default train)")
    p.add_argument("--vocab-min-count", type=int, default=1, help="keep words seen at least this often (default 1)")


def split_files(args, defaults: dict[str, str]) -> dict[str, str]:
    files: dict[str, str] = {}
    if args.annotations:
        folder = Path(args.annotations)
        if not folder.is_dir():
            raise ConversionError(f"--annotations {folder} does not exist (or is not a folder)")
        files = {sp: str(folder / f) for sp, f in defaults.items() if (folder / f).is_file()}
        if not files:
            raise ConversionError(f"--annotations {folder}: none of {', '.join(defaults.values())} is there")
    for item in args.split:
        sp, sep, f = item.partition("=")
        if not sep or not sp or not f:
            raise ConversionError(f"--split {item!r} is not NAME=FILE")
        files[sp] = f
    return files


def run(args, root, common: dict, *, name, producer_name, source, defaults):
    key = args.feature_key if args.feature_key else None
    return convert(root, name=name, producer_name=producer_name, source=source,
                   split_files=split_files(args, defaults), features=args.features, feature_key=key,
                   L=args.num_clips, glove_txt=args.glove_txt, glove_pkl=args.glove_pkl, glove_npy=args.glove_npy,
                   glove_vocab=args.glove_vocab, vocab=args.vocab,
                   vocab_splits=[s for s in args.vocab_splits.split(",") if s] if args.vocab_splits else None,
                   vocab_min_count=args.vocab_min_count, **common)
