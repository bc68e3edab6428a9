"""Where the mechanisms of ``scl`` and ``causal`` act (issue 22, item 3), measured with the engine's
gradient probe and the models' own diagnostics on the generated YouCook2-BB (T = 5, N = 20, D = 256).

    .venv/bin/python bench/mechanism_probe.py DATA_ROOT [--noiseless NOISELESS_ROOT]

``DATA_ROOT``: a youcook2 instance with its MiniLM text features (``limit`` rows per split);
``NOISELESS_ROOT`` (optional): the same generator with ``feature_noise=0 feature_dtype=float32``,
used only to count the object proposals of each frame (below). Writes
``bench/results/mechanism_probe.json``.

* ``scl``, one row per (state, tau): the gradient norm each term of Eq. (18) sends into each
  parameter group (:func:`grounding.engine.grad_probe`, weights included: ``0.4 L_Clust``,
  ``0.2 L_STran``, ``0.2 L_TTran``), the norm of the two transfer terms together (``cmakt``) into
  the stable encoder, and ``stran_top_prob``/``caos_floor_active`` (a forward's diagnostics).
  Mean over ``--seeds`` model initialisations x ``--batches`` training batches of B = 32 (the
  first rows of the train split). Model: the sweep's ``FIXED`` (128-d, 4 heads) and the paper's
  weights (lambda1 0.4, lambda2 0.2, eta 0.2, dropout 0.1), training mode. States: ``init`` (as
  built) and ``trained`` (``--train-epochs`` epochs at the published tau = 1 with the
  ``stvg_optim`` point's optimiser: Adam lr 1e-3, weight decay 1e-6, batch 32); the tau of a row
  only changes the loss (the weights are the state's).
* ``causal``: object proposals per frame (queried-object proposals, distractors, decoys: every
  proposal that is not scene background; counted on the noiseless copy, where background
  proposals are exactly the recipe's style vector), and, for ``B_r`` = 1..10, what the spatial
  content set holds (``acl_spatial_content_gt_share`` / ``_recall``, ``acl_spatial_style_gt_share``,
  :mod:`grounding.models.causal` "Diagnostics") when it is chosen by an untrained model and by a
  backbone trained ``--backbone-epochs`` epochs with the authors' optimiser (lr 8e-4, weight decay
  1e-4, batch 48, clip 10), on the first ``--content-rows`` training rows.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TAUS = (2.0, 1.0, 0.5, 0.2, 0.1, 0.05, 0.03, 0.02, 0.01, 0.005, 0.002)
SCL_PAPER = {"lambda1": 0.4, "lambda2": 0.2, "tau": 1.0, "eta": 0.2, "dropout": 0.1}


def _mean(rows: list[dict]) -> dict:
    keys = rows[0].keys()
    return {k: sum(r[k] for r in rows) / len(rows) for k in keys}


def scl_tau(data, seeds: int, n_batches: int, train_epochs: int, B: int = 32) -> list[dict]:
    import torch

    import search_spaces
    from grounding import engine
    from grounding.models import registry

    fixed = search_spaces.load("scl").FIXED
    train = data["train"]
    batches = [train.batch(range(i * B, (i + 1) * B)) for i in range(n_batches)]
    states: dict[str, list] = {"init": [], "trained": []}
    for seed in range(seeds):
        engine.seed_everything(seed)
        model = registry.build("scl", {**fixed, **SCL_PAPER}, data.info)
        states["init"].append({k: v.clone() for k, v in model.state_dict().items()})
        if train_epochs:
            cfg = engine.OptimConfig(lr=1e-3, weight_decay=1e-6, batch_size=32)
            opt = engine.make_optimizer(model, cfg)
            for e in range(train_epochs):
                engine.train_one_epoch(model, opt, train, cfg, e, seed)
            states["trained"].append({k: v.clone() for k, v in model.state_dict().items()})
    out = []
    for state, sds in states.items():
        for tau in TAUS:
            samples = []
            for seed, sd in enumerate(sds):
                model = registry.build("scl", {**fixed, **SCL_PAPER, "tau": tau}, data.info)
                model.load_state_dict(sd)
                model.train()
                stable = model.grad_groups()["stable"]
                for i, b in enumerate(batches):
                    row = engine.grad_probe(model, b, seed=1000 * seed + i)
                    with torch.random.fork_rng():
                        torch.manual_seed(1000 * seed + i)
                        t = model.loss_terms(b)
                        g = torch.autograd.grad(t["stran"] + t["ttran"], stable, allow_unused=True)
                    row["grad/cmakt/stable"] = math.sqrt(sum(float((x ** 2).sum()) for x in g if x is not None))
                    with torch.no_grad():
                        model(b)  # counts the forward's diagnostics
                    row.update(model.epoch_end_logs())
                    samples.append(row)
            m = _mean(samples)
            m.update(state=state, tau=tau, n=len(samples),
                     cmakt_over_mil_f_stable=m["grad/cmakt/stable"] / m["grad/mil_f/stable"],
                     stran_over_mil_f_stable=m["grad/stran/stable"] / m["grad/mil_f/stable"],
                     ttran_over_mil_f_stable=m["grad/ttran/stable"] / m["grad/mil_f/stable"])
            out.append(m)
            print(f"scl {state:7s} tau={tau:<6g} cmakt/mil_f (stable) = {m['cmakt_over_mil_f_stable']:.4f} "
                  f"stran {m['grad/stran/stable']:.2e} ttran {m['grad/ttran/stable']:.2e} "
                  f"mil_f {m['grad/mil_f/stable']:.2e} top {m['stran_top_prob']:.3f}", flush=True)
    return out


def object_proposals(root: str) -> dict:
    """Per frame of the train split: proposals that are not scene background (noiseless copy)."""
    import numpy as np

    from grounding import tasks
    from grounding.data.shards import Dataset

    train = tasks.load(Dataset.open(root), splits=("train",))["train"]
    f = train.features.astype(np.float32)  # [n, T, N, D]
    n, T, N, D = f.shape
    counts = []
    for v in range(n):
        rows = f[v].reshape(T * N, D)
        uniq, inv, mult = np.unique(rows, axis=0, return_inverse=True, return_counts=True)
        style = int(mult.argmax())
        bg = (inv.reshape(T, N) == style)
        counts.extend((N - bg.sum(1)).tolist())
    c = np.array(counts)
    return {"frames": int(len(c)), "mean": float(c.mean()), "min": int(c.min()), "max": int(c.max()),
            "p10": float(np.percentile(c, 10)), "p50": float(np.percentile(c, 50)), "p90": float(np.percentile(c, 90)),
            "share_of_frames_above": {str(k): float((c > k).mean()) for k in (1, 2, 3, 5, 8, 10)}}


def causal_content(data, backbone_epochs: int, rows: int, seed: int = 0) -> list[dict]:
    import numpy as np
    import torch

    import search_spaces
    from grounding import engine
    from grounding.models import registry

    fixed = search_spaces.load("causal").FIXED
    base = {"embed_dim": fixed["embed_dim"], "heads": fixed["heads"], "dropout": fixed["dropout"]}
    engine.seed_everything(seed)
    backbone = registry.build("causal", {**base, "acl_spatial": False, "acl_temporal": False, "bda": False},
                              data.info)
    states = {"init": {k: v.clone() for k, v in backbone.state_dict().items()}}
    if backbone_epochs:
        cfg = engine.OptimConfig(lr=8e-4, weight_decay=1e-4, batch_size=48, grad_clip=10.0)
        opt = engine.make_optimizer(backbone, cfg)
        for e in range(backbone_epochs):
            engine.train_one_epoch(backbone, opt, data["train"], cfg, e, seed)
        states["trained"] = {k: v.clone() for k, v in backbone.state_dict().items()}
        states["trained_val"] = engine.evaluate(backbone, data["val"], data.task, data.info)
    out = []
    idx = np.arange(min(rows, len(data["train"])))
    for state in ("init", "trained"):
        if state not in states:
            continue
        for B_r in range(1, 11):
            torch.manual_seed(seed)
            model = registry.build("causal", {**base, "acl_temporal": False, "bda": False, "B_r": B_r, "J": 100},
                                   data.info)
            model.load_backbone(states[state])
            model.train()
            with torch.no_grad():
                for i in range(0, len(idx) - 1, 48):
                    model(data["train"].batch(idx[i:i + 48]))
            logs = model.epoch_end_logs()
            row = {"state": state, "B_r": B_r, **{k: v for k, v in logs.items() if k.startswith("acl_spatial")}}
            out.append(row)
            print(f"causal {state:7s} B_r={B_r:<2d} content gt share {row['acl_spatial_content_gt_share']:.3f} "
                  f"recall {row['acl_spatial_content_gt_recall']:.3f} style gt share "
                  f"{row['acl_spatial_style_gt_share']:.3f}", flush=True)
    if "trained_val" in states:
        out.append({"state": "trained", "backbone_val": states["trained_val"]})
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root")
    ap.add_argument("--noiseless", default=None)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--batches", type=int, default=4)
    ap.add_argument("--train-epochs", type=int, default=3)
    ap.add_argument("--backbone-epochs", type=int, default=3)
    ap.add_argument("--content-rows", type=int, default=480)
    ap.add_argument("--skip", choices=("scl", "causal"), default=None)
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "mechanism_probe.json"))
    args = ap.parse_args(argv)

    import torch

    from grounding import tasks
    from grounding.data.shards import Dataset

    torch.set_num_threads(1)
    t0 = time.time()
    ds = Dataset.open(args.root)
    data = tasks.load(ds, splits=("train", "val"))
    result = {"data": {"root": args.root, "digest": ds.digest, "dims": data.info.dims,
                       "train_rows": len(data["train"])},
              "args": vars(args)}
    if args.skip != "scl":
        result["scl_tau"] = scl_tau(data, args.seeds, args.batches, args.train_epochs)
    if args.skip != "causal":
        if args.noiseless:
            result["object_proposals_per_frame"] = object_proposals(args.noiseless)
            print("object proposals per frame:", result["object_proposals_per_frame"], flush=True)
        result["causal_content"] = causal_content(data, args.backbone_epochs, args.content_rows)
    result["wall_s"] = time.time() - t0
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out} ({result['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
