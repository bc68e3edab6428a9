"""Training throughput (samples/s per device) of each method, CPU or GPU.

    .venv/bin/python bench/train_throughput.py --device cuda --amp      # on a GPU machine
    .venv/bin/python bench/train_throughput.py --device cpu             # here

Times ``--steps`` training steps (after ``--warmup``) of every registered method on its default
generated benchmark (smoke-sized data is enough: the step cost does not depend on the split size),
at the sweep's fixed model size unless ``--embed-dim`` says otherwise, with the published batch
size. Writes bench/results/train_throughput_<device>.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def measure(method: str, device: str, amp: bool, steps: int, warmup: int, embed_dim: int | None, work: Path) -> dict:
    import numpy as np
    import torch

    import search_spaces
    from grounding import engine, tasks
    from grounding.data import benchmarks
    from grounding.engine import OPTIM_KEYS, OptimConfig
    from grounding.models import registry

    task = registry.task_of(method)
    bench = benchmarks.get(benchmarks.DEFAULT_FOR_TASK[task])
    overrides = {k: v for k, v in bench.smoke.items() if k != "D"}
    overrides["limit"] = 256
    ds = benchmarks.ensure(work / bench.name, bench.name, overrides, log=lambda m: None)
    data = tasks.load(ds, splits=("train",))
    mod = search_spaces.load(method)
    merged = {**mod.PAPER, **getattr(mod, "FIXED", {})}
    if embed_dim and "embed_dim" in registry.config_fields(method):
        merged.update(embed_dim=embed_dim, heads=8 if embed_dim >= 256 else 4)
    params = {k: v for k, v in merged.items() if k in registry.config_fields(method)}
    optim = OptimConfig(**{k: v for k, v in merged.items() if k in OPTIM_KEYS})
    engine.seed_everything(0)
    model = registry.build(method, params, data.info).to(device)
    opt = engine.make_optimizer(model, optim)
    train = data["train"]
    rng = np.random.default_rng(0)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp and device.startswith("cuda"))

    def step():
        batch = train.batch(rng.choice(len(train), optim.batch_size, replace=False), device)
        with autocast:
            loss, _ = model(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(warmup):
        step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    return {"method": method, "params": params, "batch_size": optim.batch_size, "steps": steps,
            "samples_per_s": steps * optim.batch_size / dt, "step_ms": 1000 * dt / steps,
            "dims": dict(ds.manifest.dims)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--amp", action="store_true", help="bfloat16 autocast (CUDA)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--embed-dim", type=int, default=None)
    ap.add_argument("--methods", nargs="+", default=None)
    ap.add_argument("--work", default=str(REPO / "data" / "bench-throughput"))
    args = ap.parse_args()

    import torch

    from grounding.models import registry

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but no CUDA device is visible; allowed: cpu, or run on a GPU machine")
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for m in args.methods or registry.names():
        r = measure(m, args.device, args.amp, args.steps, args.warmup, args.embed_dim, work)
        rows.append(r)
        print(f"{m:<8} {r['samples_per_s']:9.1f} samples/s  {r['step_ms']:8.1f} ms/step  batch {r['batch_size']}", flush=True)
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or "cpu"
    out = {"device": args.device, "device_name": device_name, "amp": args.amp, "threads": args.threads,
           "torch": torch.__version__, "rows": rows}
    kind = "cuda" if args.device.startswith("cuda") else "cpu"
    path = REPO / "bench" / "results" / f"train_throughput_{kind}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
