"""Does ``vcma``'s q_phi learn? Held-out box accuracy on the planted toy of tests/grounding/test_vcma.py.

    PYTHONPATH=. .venv/bin/python bench/vcma_toy.py [--steps 300] [--seeds 0 1 2] [--only NAME ...]

The toy (``planted_toy`` there): per frame one region carries the subject class's prototype, two
others carry distractor classes (the sentence's object and a third class), the other seven only the
video's scene; every region carries the shared scene vector and noise; N = 10 regions, so chance is
0.10. The sentence is "a <subject> is near the <object>". Each row trains a fresh model for
``--steps`` updates of its first epoch (an E-step: q_phi; AdamW, weight decay 1e-4, batch 16, one
thread) from the config defaults plus the row's overrides, and scores q_phi's choice for the target
entity on 128 held-out videos every 100 updates. Writes bench/results/vcma_toy.json and prints a
markdown table (mean and per-seed values).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from grounding.models.vcma import VCMA, VCMAConfig  # noqa: E402

# name -> (config overrides, learning rate)
ROWS = {
    "default": ({}, 1e-3),
    "no_warmup": ({"e_warmup_rounds": 0}, 1e-3),
    "post_norm": ({"norm_first": False}, 1e-3),
    "entities_tokens": ({"entities": "tokens"}, 1e-3),
    "before_issue_23": ({"norm_first": False, "e_warmup_rounds": 0, "entities": "tokens"}, 1e-3),
    "default_lr_5e-5": ({}, 5e-5),
    "default_lr_3e-4": ({}, 3e-4),
    "default_lr_3e-3": ({}, 3e-3),
    "tau_3": ({"tau": 3.0}, 1e-3),
    "no_encoder": ({"enc_blocks": 0}, 1e-3),
}


def toy_module():
    """tests/grounding/test_vcma.py, where the toy lives (one definition for the test and this probe)."""
    spec = importlib.util.spec_from_file_location("vcma_toy_tests", REPO / "tests" / "grounding" / "test_vcma.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def curve(tv, overrides: dict, lr: float, steps: int, seed: int, B: int = 16, every: int = 100) -> list[float]:
    torch.manual_seed(seed)
    m = VCMA(VCMAConfig(**overrides), tv.toy_info())
    held = [tv.planted_toy(64, seed=10_000 + k) for k in range(2)]
    opt = torch.optim.AdamW(m.parameters(), lr=lr, weight_decay=1e-4)
    m.epoch_start(0)
    m.train()
    out = [tv.q_box_accuracy(m, held)]
    for step in range(steps):
        loss, _ = m(tv.planted_toy(B, seed=seed * 100_000 + step)[0])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (step + 1) % every == 0:
            out.append(tv.q_box_accuracy(m, held))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--only", nargs="*", choices=sorted(ROWS), help="rows to run (default: all)")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "vcma_toy.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    tv = toy_module()
    out = Path(args.out)
    results = json.loads(out.read_text())["rows"] if out.exists() else {}
    for name in args.only or list(ROWS):
        overrides, lr = ROWS[name]
        t0 = time.perf_counter()
        curves = {str(s): curve(tv, overrides, lr, args.steps, s) for s in args.seeds}
        results[name] = {"overrides": overrides, "lr": lr, "steps": args.steps, "curves": curves,
                         "seconds": round(time.perf_counter() - t0, 1)}
        print(name, json.dumps(results[name]), flush=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"command": " ".join(sys.argv), "chance": 0.1, "rows": results}, indent=1))
    print("\n| row | overrides | lr | " + " | ".join(f"acc@{k * 100}" for k in range(args.steps // 100 + 1)) + " |")
    print("|---|---|---|" + "---|" * (args.steps // 100 + 1))
    for name, r in results.items():
        cs = list(r["curves"].values())
        cells = []
        for k in range(len(cs[0])):
            vals = [c[k] for c in cs]
            cells.append(f"{sum(vals) / len(vals):.2f} ({', '.join(f'{v:.2f}' for v in vals)})")
        print(f"| {name} | `{json.dumps(r['overrides'])}` | {r['lr']:g} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
