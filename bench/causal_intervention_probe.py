"""One-epoch probes of ``causal``'s two intervention semantics, as the authors train ACL: an
ACL-spatial fine-tune (MIL + spatial ACL, its own region bank) from a short ``stvg`` backbone.

    .venv/bin/python bench/causal_intervention_probe.py DATA_ROOT --backbone-epochs 2 --epochs 1

Stage 0 trains the ``backbone`` component (plain MIL) for ``--backbone-epochs`` epochs and keeps
its best-validation epoch (sum of the four accuracies). From that checkpoint three runs train
``--epochs`` more epochs each: the ACL-spatial component with ``intervention=code``, the same
with ``intervention=paper``, and a control that continues the backbone without ACL. Everything
else is the authors' code point (``search_spaces/causal.py`` ``POINTS["code"]`` and ``FIXED``:
lr 8e-4, weight decay 1e-4, batch 48, clip 10; the model options' code defaults), seed 0, one
CPU thread. Writes ``bench/results/causal_intervention_probe.json``.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

METRICS = ("box_macro", "box_micro", "query_macro", "query_micro")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root")
    ap.add_argument("--backbone-epochs", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "causal_intervention_probe.json"))
    args = ap.parse_args(argv)

    import torch

    import search_spaces
    from grounding import engine, tasks
    from grounding.data.shards import Dataset
    from grounding.engine import OPTIM_KEYS, OptimConfig
    from grounding.models.causal import Causal, CausalConfig, component_config

    torch.set_num_threads(1)
    mod = search_spaces.load("causal")
    point = {**mod.POINTS["code"], **mod.FIXED}
    fields = {f for f in CausalConfig.__dataclass_fields__}
    cfg = CausalConfig(**{k: v for k, v in point.items() if k in fields})
    optim = OptimConfig(**{k: v for k, v in point.items() if k in OPTIM_KEYS})
    data = tasks.load(Dataset.open(args.root), seed=args.seed)

    def evaluate(model, splits=("val",)):
        return {s: engine.evaluate(model, data[s], data.task, data.info) for s in splits}

    def train(name, model, epochs, offset):
        """Train ``epochs`` epochs; returns the history and the best-validation state (sum of the
        four accuracies)."""
        opt = engine.make_optimizer(model, optim)
        history, best, best_state = [], -1.0, None
        for e in range(epochs):
            t0 = time.time()
            logs = engine.train_one_epoch(model, opt, data["train"], optim, offset + e, args.seed)
            row = {"run": name, "epoch": offset + e + 1, "train": logs, "seconds": time.time() - t0,
                   **evaluate(model, ("val", "test_iid", "test_ood"))}
            history.append(row)
            score = sum(row["val"][m] for m in METRICS)
            if score > best:
                best, best_state, row["selected"] = score, copy.deepcopy(model.state_dict()), True
            print(json.dumps({"run": name, "epoch": row["epoch"], "val_box_micro": row["val"]["box_micro"],
                              "loss": logs["loss"], "s": round(row["seconds"])}), flush=True)
        return history, best_state

    engine.seed_everything(args.seed)
    backbone = Causal(component_config(cfg, "backbone"), data.info)
    before = evaluate(backbone)
    hist0, state = train("backbone", backbone, args.backbone_epochs, 0)

    runs = {}
    for name, variant in (("acl_spatial_code", dict(name="spatial", intervention="code")),
                          ("acl_spatial_paper", dict(name="spatial", intervention="paper")),
                          ("backbone_continued", dict(name="backbone"))):
        c = component_config(cfg, variant.pop("name")).replace(**variant)
        engine.seed_everything(args.seed + 1)
        model = Causal(c, data.info)
        left = model.load_backbone(state)
        runs[name] = {"config": {k: getattr(c, k) for k in ("acl_spatial", "acl_temporal", "bda", "intervention",
                                                             "style_draw", "acl_queries", "bank_update",
                                                             "negatives", "mil_form")},
                      "not_from_backbone": left,
                      "history": train(name, model, args.epochs, args.backbone_epochs)[0]}
    out = {"root": args.root, "digest": data.digest, "seed": args.seed, "optim": vars(optim),
           "model": {k: getattr(cfg, k) for k in fields}, "backbone": {"untrained": before, "history": hist0},
           "runs": runs}
    Path(args.out).write_text(json.dumps(out, indent=1, default=str))
    print("wrote", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
