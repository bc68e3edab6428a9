"""Time the contextual text-feature step of the default ``youcook2`` benchmark (what its first-use
generation adds): the encoder's load and its pass over every distinct (sentence, queries) pair of
the default split plan, at several batch sizes.

    nice -n 10 .venv/bin/python bench/text_features_time.py --batch-sizes 64 128 256

Writes bench/results/text_features_time.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[128])
    ap.add_argument("--limit", type=int, default=None, help="segments per split (default: all)")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "text_features_time.json"))
    args = ap.parse_args()

    import torch

    from grounding.data import text_features
    from grounding.data.benchmarks import youcook2

    cfg = youcook2.YC2Config(limit=args.limit)
    ann = youcook2.YC2Annotations.load()
    plan = youcook2.split_plan(ann, youcook2.build_world(cfg, ann), cfg.limit)
    items = [(ann.sentences.get(seg, ""), list(dict.fromkeys(int(c) for c in ann.lists[src][seg][1])))
             for split in plan.values() for src, seg in split]
    distinct = len(dict.fromkeys((s, tuple(q)) for s, q in items))
    t0 = time.time()
    text_features._load("minilm")
    load_s = time.time() - t0
    rows = []
    for bs in args.batch_sizes:
        f = text_features.Featurizer(ann.forms, "minilm", batch_size=bs)
        f.prepare(items)
        rows.append({"batch_size": bs, "encode_s": round(f.seconds, 2), "items_per_s": round(distinct / f.seconds, 1)})
        print(json.dumps(rows[-1]), flush=True)
    out = {"rows_in_plan": len(items), "distinct_items": distinct, "load_s": round(load_s, 2),
           "torch_threads": torch.get_num_threads(), "runs": rows}
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
