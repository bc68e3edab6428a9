"""Per-step cost of ``cpl`` and ``ccr`` at the authors' size, for planning a full run.

    python bench/moment_size_probe.py --out bench/results/moment_size_probe.json

Generates a small ``charades`` instance with the authors' 200 clips (``--limit`` [40] videos per
split) and times ``--steps`` [3] training steps at batch 32 and one 64-query evaluation batch on
one thread, for CPL (d 256, 3 + 3 layers, 4 heads) and CCR (the same with 8 heads, its default
options). The full-data cost follows: an epoch of the generated Charades-CD train split is 345
steps, and the authors train 30 epochs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from grounding import tasks  # noqa: E402
from grounding.data import benchmarks  # noqa: E402
from grounding.models import registry  # noqa: E402

SIZES = {"cpl": {"hidden_dim": 256, "layers": 3, "heads": 4, "downsample": 4},
         "ccr": {"hidden_dim": 256, "layers": 3, "heads": 8, "downsample": 4}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default=str(REPO / "data" / "charades-L200"))
    ap.add_argument("--limit", type=int, default=40)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    ds = benchmarks.ensure(args.root, "charades", {"limit": args.limit, "L": 200}, log=lambda *_: None)
    data = tasks.load(ds, splits=("train", "val"))
    out = {"dims": ds.manifest.dims, "batch_size": 32, "threads": 1, "methods": {}}
    for name, kw in SIZES.items():
        torch.manual_seed(0)
        model = registry.build(name, kw, data.info)
        opt = torch.optim.Adam(model.parameters(), 4e-4)
        batch = data["train"].batch(np.arange(32), "cpu")
        steps = []
        for _ in range(args.steps):
            c, w = time.process_time(), time.time()
            loss, _ = model(batch)
            opt.zero_grad()
            loss.backward()
            opt.step()
            steps.append({"cpu_s": time.process_time() - c, "wall_s": time.time() - w})
        model.eval()
        c = time.process_time()
        with torch.no_grad():
            model.predict(data["val"].batch(np.arange(64), "cpu"))
        cpu = float(np.median([s["cpu_s"] for s in steps]))
        out["methods"][name] = {"config": kw, "params": sum(p.numel() for p in model.parameters()),
                                "steps": steps, "median_step_cpu_s": cpu, "eval_64_cpu_s": time.process_time() - c,
                                "full_run_cpu_h": cpu * 345 * 30 / 3600}
        print(name, json.dumps(out["methods"][name]), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
