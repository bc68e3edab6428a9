"""Calibrate the generated VidSTG's structure knobs (issue 23) on ``tubemil`` and the oracle templates alone.

    OMP_NUM_THREADS=1 .venv/bin/python bench/vidstg_structure_calibration.py --limit 800 --epochs 3 \
        --candidate '{"role_asymmetry": 1.0, "attribute": 0.5, "mirror_decoys": 0.5}' ...

Each ``--candidate`` is a JSON object of :class:`grounding.data.benchmarks.vidstg.VidSTGConfig` knobs
(every other knob at its default; ``{}`` = the generator's defaults). For each: generate the
benchmark with ``--limit`` items per split into a temporary folder, then score ``test_iid`` overall
and on its two subsets (``_bow``: a bag of the sentence's words resolves the target; ``_structure``:
only the sentence's structure does; :func:`grounding.data.tube.bow_resolvable`):

(a) the baselines that need no model: Random and the Upper Bound (:meth:`grounding.tasks.TubeTask.baselines`);
(b) the **oracle templates**, which need no training either (the planted-template diagnostic of
    ``bench/yc2_state_calibration.py``): the GT segment is given and, at every frame, the proposal
    whose region feature (minus the frame's mean proposal feature, which removes the scene style)
    has the highest dot product with a template built from the generator's own prototypes:

    * ``gt_random``: a uniformly random proposal (the floor of the templates);
    * ``category``: ``signal x`` the target's category prototype (all a head noun gives);
    * ``bow``: category + ``relation x`` the predicate's prototype without a role + ``attribute x``
      the mean prototype of *every* attribute word of the sentence (what a bag of the sentence's
      words gives, credited with the target's category);
    * ``bow_form``: as ``bow``, with the agent pattern for declaratives (a bag of words that also
      knows VidSTG's convention that a declarative describes the relation's subject: the reader
      that :func:`grounding.data.tube.bow_resolvable` defines);
    * ``structure``: category + ``relation x`` the target's role pattern (agent for the relation's
      subject, patient for its object) + ``attribute x`` the mean prototype of the attribute words
      the sentence binds to the target (:func:`grounding.data.tube.bind_attributes`): what the
      sentence's structure gives;

(c) ``tubemil`` at its PAPER point (``search_spaces/tubemil.py``: PAPER + FIXED), one seed, ``--epochs``
    epochs on the train split, one thread; the test_iid metrics at the best validation m_vIoU epoch,
    and its boxes on the GT segment (``gt_segment``: the spatial part alone, comparable with the
    templates).

No other method is run: the honesty rule of the calibration (issue 23). Every candidate's row is
appended to ``bench/results/vidstg_structure_calibration.json`` (rows already there are kept, so the
file records every candidate tried).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SPLIT = "test_iid"
SHOWN = ("m_viou", "viou_50", "m_tiou")
GROUPS = ("", "_bow", "_structure")
TEMPLATES = ("gt_random", "category", "bow", "bow_form", "structure")


FLAG = ("v2: a bag of words credited with the target's category, every attribute word of the sentence "
        "unbound, the predicate without roles, and in a declarative the target's role (the relation's subject)")


def _pick(m: dict) -> dict:
    return {f"{k}{g}": m[f"{k}{g}"] for g in GROUPS for k in SHOWN if f"{k}{g}" in m}


class _Cells:
    """m_vIoU per (sentence form x subset): the subsets within each form, so that a difference between
    the subsets is not the forms' (the structure subset is mostly questions)."""

    def __init__(self, arrays):
        self.form, self.bow = np.asarray(arrays.sentence_form), np.asarray(arrays.bow_resolvable)
        self.viou = np.zeros(len(arrays))

    def add(self, idx, b, pred) -> None:
        from grounding.metrics.tube import sample_viou

        v, _ = sample_viou(pred["segment"], pred["proposal"], b["boxes"], b["gt_boxes"], b["gt_box_valid"],
                           b["frame_valid"], b["frame_ids"], b["gt_fids"])
        self.viou[idx] = v.numpy()

    def table(self) -> dict:
        out = {}
        for f, fname in ((0, "declarative"), (1, "interrogative")):
            for flag, sname in ((True, "bow"), (False, "structure")):
                sel = (self.form == f) & (self.bow == flag)
                out[f"m_viou_{fname}_{sname}"] = float(self.viou[sel].mean()) if sel.any() else None
                out[f"n_{fname}_{sname}"] = int(sel.sum())
        return out


def sentence_templates(cfg, ann, world, arrays) -> dict[str, np.ndarray]:
    """``{template: [Q, Dr]}`` for every sentence of ``arrays`` (module docstring, (b))."""
    from grounding.data.benchmarks import vidstg
    from grounding.data.tube import ATTRIBUTE_WORDS, bind_attributes

    a_idx = {w: i for i, w in enumerate(ATTRIBUTE_WORDS)}
    attr = lambda ws: world.attr_r[[a_idx[w] for w in ws]].mean(0) if ws else np.zeros(cfg.Dr)  # noqa: E731
    out = {k: np.zeros((len(arrays), cfg.Dr)) for k in TEMPLATES[1:]}
    info: dict[str, dict] = {}
    for q, sid in enumerate(arrays.sample_ids):
        vid_row = arrays.video_ids[int(arrays.video_index[q])]
        if vid_row not in info:
            m = re.fullmatch(r"(.*)_(val|test)(\d+)", vid_row)
            it = ann.items[m.group(2)][int(m.group(3))]
            tids = {o["tid"]: i for i, o in enumerate(it["subject/objects"])}
            info[vid_row] = {"it": it, "sents": {f"{key[0]}{j}": (toks, target, sp) for _, key, j, _, toks, target, sp
                                                  in vidstg._sentences(cfg, ann, it, tids)}}
        it, sents = info[vid_row]["it"], info[vid_row]["sents"]
        toks, target, sp = sents[sid.rsplit("#", 1)[1]]
        rel = it["used_relation"]
        p = ann.predicates.index(rel["predicate"])
        cls = cfg.signal * world.cls_r[int(arrays.subject_class[q])]
        mine, _ = bind_attributes(toks, sp, ann.lexicon)
        bag = [w for w in toks if w in a_idx]
        out["category"][q] = cls
        out["bow"][q] = cls + cfg.relation * world.pred_r[p] + cfg.attribute * attr(bag)
        decl = sid.rsplit("#", 1)[1].startswith("c")  # a caption: the relation's subject (the agent)
        out["bow_form"][q] = (cls + cfg.relation * (world.role_pattern(p, True, cfg.role_asymmetry) if decl
                                                    else world.pred_r[p]) + cfg.attribute * attr(bag))
        agent = target == rel["subject_tid"]
        out["structure"][q] = (cls + cfg.relation * world.role_pattern(p, agent, cfg.role_asymmetry)
                               + cfg.attribute * attr(mine))
    return out


def score_templates(cfg, ann, world, td, split: str = SPLIT, batch_size: int = 256) -> dict[str, dict]:
    a = td[split]
    tpl = sentence_templates(cfg, ann, world, a)
    rng = np.random.default_rng(0)
    out = {}
    for name in TEMPLATES:
        acc, cells = td.task.accumulator(td.info), _Cells(a)
        for i in range(0, len(a), batch_size):
            idx = np.arange(i, min(i + batch_size, len(a)))
            b = a.batch(idx)
            feats = b["region_feats"].double()
            feats = feats - feats.mean(2, keepdim=True)
            if name == "gt_random":
                score = torch.from_numpy(rng.random(feats.shape[:3]))
            else:
                score = torch.einsum("btnd,bd->btn", feats, torch.from_numpy(tpl[name][idx]))
            pred = {"segment": b["gt_segment"], "proposal": score.argmax(2)}
            acc.update_batch(pred, b)
            cells.add(idx, b, pred)
        out[name] = {**_pick(acc.compute()), "cells": cells.table()}
    return out


def train_tubemil(td, epochs: int, seed: int) -> dict:
    import search_spaces
    from grounding import engine
    from grounding.models import registry

    torch.set_num_threads(1)
    mod = search_spaces.load("tubemil")
    merged = {**mod.PAPER, **mod.FIXED}
    fields = registry.config_fields("tubemil")
    optim = engine.OptimConfig(**{k: v for k, v in merged.items() if k in engine.OPTIM_KEYS})
    engine.seed_everything(seed)
    model = registry.build("tubemil", {k: v for k, v in merged.items() if k in fields}, td.info)
    opt = engine.make_optimizer(model, optim)
    best, curve = None, []
    for ep in range(epochs):
        logs = engine.train_one_epoch(model, opt, td["train"], optim, ep, seed)
        val = engine.evaluate(model, td["val"], td.task, td.info)
        curve.append({"epoch": ep + 1, "loss": logs["loss"], "val_m_viou": val["m_viou"]})
        if best is None or val["m_viou"] > best["val"]["m_viou"]:
            best = {"epoch": ep + 1, "val": _pick(val), **_test(model, td)}
    return {**best, "curve": curve}


@torch.no_grad()
def _test(model, td, batch_size: int = 256) -> dict:
    """The model on the test split, and its boxes on the GT segment (its temporal choice replaced
    by the ground truth: the spatial part alone), each with its (form x subset) cells."""
    model.eval()
    a = td[SPLIT]
    accs = {k: (td.task.accumulator(td.info), _Cells(a)) for k in (SPLIT, "gt_segment")}
    for i in range(0, len(a), batch_size):
        idx = np.arange(i, min(i + batch_size, len(a)))
        b = a.batch(idx)
        p = model.predict(b)
        for k, pred in ((SPLIT, p), ("gt_segment", {"segment": b["gt_segment"], "proposal": p["proposal"]})):
            accs[k][0].update_batch(pred, b)
            accs[k][1].add(idx, b, pred)
    return {k: {**_pick(acc.compute()), "cells": cells.table()} for k, (acc, cells) in accs.items()}


def run_candidate(knobs: dict, limit: int, epochs: int, seed: int, workers: int) -> dict:
    from grounding import tasks
    from grounding.data.benchmarks import vidstg
    from grounding.data.shards import Dataset

    cfg = vidstg.VidSTGConfig(limit=limit or None, **knobs)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.time()
        vidstg.generate(Path(tmp) / "ds", cfg, workers=workers)
        gen_s = time.time() - t0
        ds = Dataset.open(Path(tmp) / "ds")
        td = tasks.load(ds, mapped=False)
        ann = vidstg.VidSTGAnnotations.load()
        world = vidstg.build_world(cfg, ann)
        flags = td[SPLIT].bow_resolvable
        base = td.task.baselines(td[SPLIT], td.info)
        row = {"knobs": knobs, "config": dataclasses.asdict(cfg), "flag_definition": FLAG, "limit": limit or None,
               "epochs": epochs, "seed": seed,
               "generate_s": round(gen_s, 1),
               "digest": ds.digest,
               "sentences": {sp: int(len(td[sp])) for sp in ("train", "val", SPLIT)},
               f"{SPLIT}_structure_fraction": float(1 - flags.mean()),
               f"{SPLIT}_declarative_fraction": {
                   "bow": float((td[SPLIT].sentence_form[flags] == 0).mean()),
                   "structure": float((td[SPLIT].sentence_form[~flags] == 0).mean()) if (~flags).any() else None},
               "random": _pick(base["random"]), "upper_bound": _pick(base["upper_bound"]),
               "templates": score_templates(cfg, ann, world, td)}
        t0 = time.time()
        if epochs > 0:
            row["tubemil"] = train_tubemil(td, epochs, seed)
        row["train_s"] = round(time.time() - t0, 1)
    return row


def summary(row: dict) -> str:
    pct = lambda v: "-" if v is None else f"{100 * v:.1f}"  # noqa: E731
    cell = lambda m: " / ".join(pct(m.get(f"m_viou{g}")) for g in GROUPS)  # noqa: E731
    inter = lambda m: " / ".join(pct(m["cells"][f"m_viou_interrogative_{s}"]) for s in ("bow", "structure"))  # noqa: E731
    parts = [f"{json.dumps(row['knobs'])}: structure {100 * row[f'{SPLIT}_structure_fraction']:.0f}% of {SPLIT}",
             f"m_vIoU all / bow / structure [interrogatives: bow / structure]: random {cell(row['random'])}, "
             f"UB {cell(row['upper_bound'])}"]
    parts += [f"tpl {k} {cell(v)} [{inter(v)}]" for k, v in row["templates"].items()]
    if "tubemil" in row:
        t = row["tubemil"]
        parts.append(f"tubemil {cell(t[SPLIT])} [{inter(t[SPLIT])}] (epoch {t['epoch']}), "
                     f"on the GT segment {cell(t['gt_segment'])} [{inter(t['gt_segment'])}]")
    return "; ".join(parts)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--candidate", action="append", default=[], metavar="JSON",
                    help="VidSTGConfig knobs of one candidate (repeatable; default: the generator's defaults)")
    ap.add_argument("--limit", type=int, default=800, help="items per split (0: all)")
    ap.add_argument("--epochs", type=int, default=4, help="tubemil epochs (0: templates and baselines only)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=1, help="generator processes")
    ap.add_argument("--note", default="", help="recorded with the rows")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "vidstg_structure_calibration.json"))
    args = ap.parse_args(argv)
    out = Path(args.out)
    doc = json.loads(out.read_text()) if out.exists() else {
        "script": "bench/vidstg_structure_calibration.py", "split": SPLIT,
        "metrics": "fractions in [0, 1]; suffix _bow / _structure: the subsets of grounding.data.tube.bow_resolvable",
        "rows": []}
    for text in args.candidate or ["{}"]:
        try:
            knobs = json.loads(text)
        except json.JSONDecodeError as e:
            print(f"--candidate {text!r} is not a JSON object ({e.msg}); allowed: e.g. '{{\"attribute\": 0.5}}'",
                  file=sys.stderr)
            return 2
        row = run_candidate(knobs, args.limit, args.epochs, args.seed, args.workers)
        if args.note:
            row["note"] = args.note
        doc["rows"].append(row)
        out.write_text(json.dumps(doc, indent=1) + "\n")
        print(summary(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
