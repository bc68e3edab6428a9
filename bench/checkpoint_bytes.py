"""Bytes of the checkpoint files a trial writes, per method, at the published feature sizes.

    .venv/bin/python bench/checkpoint_bytes.py                       # every method, 2 epochs each
    .venv/bin/python bench/checkpoint_bytes.py --methods causal --epochs 1

Each method trains through the trial loop (:func:`orchestration.worker.trial.train_loop`, the code
a Tune trial runs; no Ray) on a session that, at every report, records the size of every file in
the checkpoint folder the trial hands to Tune (``selected.pt``, ``state.pt``). Nothing is
estimated: the bytes are those ``trial._save`` wrote. The data are the generated benchmarks at the
published feature sizes (``python -m grounding.data generate … --set …``, a few items per split):

* WSVOG (``stvg``, ``causal``, ``scl``): ``youcook2`` with ``D=4096`` (YouCook2-BB's RoI features),
  ``T=5``, ``N=20``;
* tube (``tubemil``, ``winner``, ``vcma``): ``vidstg`` with ``Df=Dr=2048``, ``T=32``, ``N=10`` (the
  sizes docs/shards.md assumes: VidSTG has no official features);
* moment (``cpl``, ``ccr``): ``charades`` with ``L=200`` clips of ``D=1024`` (I3D).

Every method trains its search space's ``PAPER`` point under its ``FIXED`` settings (what a default
sweep's first trial trains; ``embed_dim=128`` for the WSVOG methods; ``causal`` once more at the
paper's ``embed_dim=512``, ``heads=8``), batch size lowered to fit the
few training items (the batch size changes no tensor that is saved). ``causal``'s backbone is built
first as a sweep builds it (:func:`orchestration.worker.stage_store.build_stage`, its ``stage.pt``
measured too) and the trial reads it from the store, as every trial of a sweep does.

Per checkpoint it also says which stages stored their current weights in ``state.pt`` (not when
the stage was selected at that epoch: they are ``selected.pt``'s) and, so that the worst case is
known, ``state_pt_if_unselected``: ``state.pt`` plus the bytes of the current weights it left out
(computed from the tensors' sizes, not written). ``duplicates``: every tensor of at least 64 KiB
whose bytes occur more than once across the checkpoint's files (sha256 of the contents).

``--before-tree DIR`` measures ``causal`` once more with the code before commits ``a59a277`` and
``196fe78`` (``git archive a59a277^ | tar -x -C DIR``: the earlier layout, whose trial loop takes a
``run`` dict) on the same data and settings, in a subprocess importing that tree.

Writes bench/results/checkpoint_bytes.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

import search_spaces  # noqa: E402
from grounding.data.shards import Dataset  # noqa: E402
from orchestration.worker import stage_store, trial  # noqa: E402
from orchestration.worker.spec import TrialSpec  # noqa: E402

BENCHMARKS = {  # benchmark -> (generator overrides at the published sizes, task, methods)
    "youcook2": ({"D": 4096}, "wsvog", ("stvg", "causal", "scl")),
    "vidstg": ({"Df": 2048, "Dr": 2048}, "tube", ("tubemil", "winner", "vcma")),
    "charades": ({"L": 200, "D": 1024}, "moment", ("cpl", "ccr")),
}
METRIC = {"wsvog": "box_micro", "tube": "m_viou", "moment": "r1_iou50"}
DUP_MIN = 64 * 1024


def env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def generate(root: Path, bench: str, sets: dict, limit: int) -> None:
    if (root / "manifest.json").exists():
        return
    cmd = [sys.executable, "-m", "grounding.data", "generate", bench, str(root),
           *(["--workers", "1"] if bench != "charades" else []),  # charades generates in one process
           "--set", f"limit={limit}", *[a for k, v in sets.items() for a in ("--set", f"{k}={v}")]]
    t0 = time.time()
    subprocess.run(cmd, check=True, cwd=REPO, env=env(), stdout=subprocess.DEVNULL)
    print(f"generated {root} ({' '.join(cmd[4:])}) in {time.time() - t0:.0f} s", flush=True)


def _tensors(obj, path=""):
    if isinstance(obj, torch.Tensor):
        yield path, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _tensors(v, f"{path}/{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _tensors(v, f"{path}/{i}")


def _nbytes(state: dict | None) -> int:
    return sum(t.numel() * t.element_size() for _, t in _tensors(state or {}))


def inspect(folder: str) -> dict:
    """Sizes of the checkpoint's files, which stages kept current weights, duplicated tensors."""
    files = {p.name: p.stat().st_size for p in sorted(Path(folder).iterdir()) if p.is_file()}
    loaded = {n: torch.load(Path(folder) / n, map_location="cpu", weights_only=True) for n in files if n.endswith(".pt")}
    seen: dict[str, list[str]] = {}
    for name, obj in loaded.items():
        for path, t in _tensors(obj):
            if t.numel() * t.element_size() >= DUP_MIN:
                h = hashlib.sha256(t.detach().contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()
                seen.setdefault(h, []).append(f"{name}:{path} {list(t.shape)}")
    out = {"files": files, "duplicates": [v for v in seen.values() if len(v) > 1]}
    st, pkg = loaded.get(trial.STATE_FILE), loaded.get(trial.SELECTED_FILE)
    if st is not None and pkg is not None:
        stages = st["group"]["stages"]
        out["current_weights_in_state"] = {n: s["model"] is not None for n, s in stages.items()}
        left_out = sum(_nbytes(pkg["stages"][n]["model"]) for n, s in stages.items() if s["model"] is None)
        out["state_pt_if_unselected"] = files[trial.STATE_FILE] + left_out
        out["selected_model_bytes"] = {n: _nbytes(p["model"]) for n, p in pkg["stages"].items()}
        out["optimizer_bytes"] = {n: _nbytes(s["optimizer"]) for n, s in stages.items()}
    return out


class Recorder(trial.Session):
    """Rank 0 of 1: measures each checkpoint folder while it exists (the loop deletes it after)."""

    def __init__(self):
        self.epochs: list[dict] = []

    def checkpoint(self):
        return None

    def report(self, metrics, checkpoint_dir):
        self.epochs.append({"epoch": metrics["epoch"], **inspect(checkpoint_dir)})


def spec_for(method: str, task: str, root: str, digest: str, epochs: int, fixed: dict, storage: str) -> TrialSpec:
    return TrialSpec(sweep="bench-checkpoint-bytes", method=method, task=task, data_root=root, data_digest=digest,
                     cache_dir=str(Path(storage) / "cache"), cache_max_bytes=50 * 2**30, epochs=epochs, seed=0,
                     fixed=fixed, metric=METRIC[task], workers=1, use_trainer=False, cpus_per_worker=1.0,
                     gpus_per_worker=0.0, threads=1, amp=False, placement="PACK", eval_batch_size=32,
                     storage_path=storage, checkpoints_keep=2, failures=0)


def run_method(method: str, task: str, root: str, epochs: int, batch: int, work: str, pins: dict | None = None) -> dict:
    mod = search_spaces.load(method)
    fixed = {**getattr(mod, "FIXED", {}), **getattr(mod, "PAPER", {}), "batch_size": batch, **(pins or {})}
    ds = Dataset.open(root)
    spec = spec_for(method, task, root, ds.digest, epochs, fixed, work)
    out: dict = {"data": {"root": root, "dims": ds.manifest.dims}, "fixed": {k: v for k, v in fixed.items()}}
    if method == "causal":  # the backbone as a sweep builds it: once, in the stage store
        uri = str(Path(work) / "stages" / "backbone")
        man = stage_store.build_stage(spec, [], "backbone", uri, "bench", "")["manifest"]
        out["stage_pt"] = {"backbone": man["bytes"]}
        spec = dataclasses.replace(spec, shared={"backbone": {"uri": uri, "key": man["key"], "explicit": True}})
    rec = Recorder()
    t0 = time.time()
    trial.train_loop({}, spec, rec)
    out["train_s"] = round(time.time() - t0, 1)
    out["checkpoints"] = rec.epochs
    last = rec.epochs[-1]["files"]
    out["per_checkpoint_bytes"] = sum(last.values())
    out["per_trial_bytes_kept"] = sum(sum(e["files"].values()) for e in rec.epochs[-spec.checkpoints_keep:])
    return out


BEFORE = """
import json, os, sys
import torch
import search_spaces
from grounding.data.shards import Dataset
from orchestration import trial  # the earlier layout: orchestration/trial.py, train_loop(hp, run, session)

torch.set_num_threads(1)
root, work, epochs, batch = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
mod = search_spaces.load("causal")
run = dict(method="causal", data_root=root, data_digest=Dataset.open(root).digest, cache_dir=work + "/cache",
           cache_max_bytes=50 * 2**30, epochs=epochs, seed=0, fixed={**mod.FIXED, **mod.PAPER, "batch_size": batch},
           metric="box_micro", threads=1, gpus_per_worker=0, amp=False, eval_batch_size=32, shared={})


class Rec(trial.Session):
    out = []

    def checkpoint(self):
        return None

    def report(self, metrics, d):
        self.out.append({"epoch": metrics["epoch"], "files": {p: os.path.getsize(os.path.join(d, p))
                                                               for p in sorted(os.listdir(d))}})


trial.train_loop({}, run, Rec())
print(json.dumps(Rec.out))
"""


def run_before(tree: str, root: str, epochs: int, batch: int, work: str) -> dict:
    """``causal``'s checkpoint files written by the trial loop of the code in ``tree``."""
    out = subprocess.run([sys.executable, "-c", BEFORE, root, work, str(epochs), str(batch)], cwd=tree,
                         env={**env(), "PYTHONPATH": tree}, check=True, capture_output=True, text=True).stdout
    ckpts = json.loads(out.strip().splitlines()[-1])
    return {"tree": tree, "checkpoints": ckpts, "per_trial_bytes_kept": sum(sum(e["files"].values()) for e in ckpts[-2:])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", nargs="*", default=[m for _, _, ms in BENCHMARKS.values() for m in ms])
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--limit", type=int, default=16, help="items per split of each generated benchmark")
    ap.add_argument("--batch", type=int, default=8, help="batch size (the saved tensors do not depend on it)")
    ap.add_argument("--work", default=str(REPO / "data" / "bench-checkpoint-bytes"))
    ap.add_argument("--merge", action="store_true", help="add to the existing results file")
    ap.add_argument("--before-tree", help="a tree of commit a59a277^ (git archive): causal measured with it too")
    ap.add_argument("--paper-embed", action=argparse.BooleanOptionalAction, default=True,
                    help="causal once more at the paper's embed_dim=512, heads=8 (model.embed_dim=512 model.heads=8)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    results_file = REPO / "bench" / "results" / "checkpoint_bytes.json"
    prior = json.loads(results_file.read_text()) if args.merge and results_file.exists() else {}
    methods = prior.get("methods", {})
    for bench, (sets, task, ms) in BENCHMARKS.items():
        todo = [m for m in ms if m in args.methods]
        if not todo:
            continue
        root = Path(args.work) / f"{bench}-{'-'.join(f'{k}{v}' for k, v in sets.items())}-limit{args.limit}"
        generate(root, bench, sets, args.limit)
        for m in todo:
            with tempfile.TemporaryDirectory(dir=args.work) as work:
                methods[m] = {"benchmark": bench, **run_method(m, task, str(root), args.epochs, args.batch, work)}
            print(f"{m}: {json.dumps({e['epoch']: e['files'] for e in methods[m]['checkpoints']})}", flush=True)
        if task == "wsvog" and "causal" in todo and args.paper_embed:  # the paper's 512-d embedding, 8 heads
            key = "causal embed_dim=512"
            with tempfile.TemporaryDirectory(dir=args.work) as work:
                methods[key] = {"benchmark": bench, **run_method("causal", task, str(root), args.epochs, args.batch,
                                                                 work, {"embed_dim": 512, "heads": 8})}
            print(f"{key}: {json.dumps({e['epoch']: e['files'] for e in methods[key]['checkpoints']})}", flush=True)
        if task == "wsvog" and "causal" in todo and args.before_tree:
            with tempfile.TemporaryDirectory(dir=args.work) as work:
                before = {"benchmark": bench, **run_before(args.before_tree, str(root), args.epochs, args.batch, work)}
            prior["before"] = {"causal": before}
            print(f"causal before a59a277: {json.dumps({e['epoch']: e['files'] for e in before['checkpoints']})}")
    out = {"command": "python bench/checkpoint_bytes.py " + " ".join(sys.argv[1:]), "epochs": args.epochs,
           "limit": args.limit, "platform": platform.platform(), "torch": torch.__version__,
           "git": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                 text=True).stdout.strip(),
           "before": prior.get("before", {}), "methods": methods}
    results_file.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {results_file}")


if __name__ == "__main__":
    main()
