"""Node memory and epoch time of concurrent trials: the mapped node copy against the in-memory loader.

    .venv/bin/python bench/data_memory.py                      # D=4096 (~1.5 GB) and the default D
    .venv/bin/python bench/data_memory.py --limit 100 --concurrency 1 2 --epochs 1   # a quick look

Generates the YouCook2 WSVOG benchmark (``python -m grounding.data generate youcook2 DIR --set
D=… --set limit=…``) at ``--dim`` (4096) and at the default D, then runs ``N`` = 1, 2, 4 concurrent
plain processes that each train ``stvg`` (the search space's PAPER point, FIXED model size, one
CPU thread) for ``--epochs`` through the trial loop (:func:`orchestration.worker.trial.train_loop`
on a session that only records the reports: no Ray, no checkpoint storage), once with the mapped
node copy (``data.mapped=true``) and once with the in-memory loader (``data.mapped=false``) on the
same data, the two modes run one after the other at each N. Every 0.25 s it reads
``/proc/PID/smaps_rollup`` of every trial process and sums ``Pss_Anon`` and ``Pss_File`` (plus
``Pss_Shmem``) over them: the node total is the peak of that sum. Epoch times are the trial
loop's ``time/train_s`` (training steps) and ``time/eval_s`` (validation) of the last epoch
(the first epoch also pays the page faults of a cold map).

With ``--cgroup-mb M`` (root, cgroup v1 memory controller) one more mapped trial runs inside a
memory cgroup limited to M MB (smaller than the dataset) and must exit 0 with the same validation
metric as the unlimited N=1 mapped trial of the same seed; the in-memory loader is tried under the
same limit for reference. With ``--sequential K`` one process runs K trials in a row (another seed
each, so the worker's data cache reloads) and reports its memory after each.

Writes bench/results/data_memory.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

FIELDS = ("Pss_Anon", "Pss_File", "Pss_Shmem", "Rss")
CGROUP = Path("/sys/fs/cgroup/memory")


def smaps(pid: int) -> dict[str, int] | None:
    """Bytes of the FIELDS in /proc/PID/smaps_rollup (None once the process is gone)."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    out = {}
    for line in text.splitlines():
        k, _, rest = line.partition(":")
        if k in FIELDS:
            out[k] = int(rest.split()[0]) * 1024
    return out


# ----------------------------------------------------------------------------------- child
def child(args) -> None:
    """One trial process: ``--trials`` trials of stvg in a row, one JSON line per trial."""
    import torch

    import search_spaces
    from grounding.data.shards import Dataset
    from orchestration.worker import trial
    from orchestration.worker.spec import TrialSpec

    torch.set_num_threads(1)
    mod = search_spaces.load("stvg")
    ds = Dataset.open(args.root)

    class Recorder(trial.Session):
        def __init__(self):
            self.reports = []

        def checkpoint(self):
            return None

        def report(self, metrics, checkpoint_dir):
            self.reports.append(dict(metrics))
            if args.keep and checkpoint_dir:  # the last epoch's checkpoint, for --final-eval
                import shutil
                shutil.rmtree(args.keep, ignore_errors=True)
                shutil.copytree(checkpoint_dir, args.keep)

    def spec_for(args, k):
        return TrialSpec(sweep="bench", method="stvg", task="wsvog", data_root=args.root, data_digest=ds.digest,
                         cache_dir=args.cache_dir, cache_max_bytes=200 * 2**30, epochs=args.epochs,
                         seed=args.seed + k, fixed=dict(mod.FIXED), metric="box_micro", workers=1,
                         use_trainer=False, cpus_per_worker=1.0, gpus_per_worker=0.0, threads=1, amp=False,
                         placement="PACK", eval_batch_size=128, storage_path="", checkpoints_keep=1, failures=0,
                         mapped=args.mapped)

    for k in range(args.trials):
        spec = spec_for(args, k)
        if args.final_eval:  # the trial's final evaluation task, on its last checkpoint
            from ray.train import Checkpoint
            from orchestration.worker.final_eval import evaluate_selected
            t0 = time.time()
            res = evaluate_selected(Checkpoint.from_directory(args.final_eval), spec)
            print(json.dumps({"final_eval": True, "wall_s": time.time() - t0, "memory": smaps(os.getpid()),
                              "test_iid_box_micro": res.get("test_iid/box_micro")}), flush=True)
            return
        rec = Recorder()
        t0 = time.time()
        trial.train_loop(dict(mod.PAPER), spec, rec)
        ru = resource.getrusage(resource.RUSAGE_SELF)
        print(json.dumps({"trial": k, "seed": spec.seed, "wall_s": time.time() - t0, "memory": smaps(os.getpid()),
                          "faults": {"major": ru.ru_majflt, "minor": ru.ru_minflt}, "cpu_s": ru.ru_utime + ru.ru_stime,
                          "epochs": [{key: r[key] for key in ("epoch", "time/train_s", "time/eval_s", "val/box_micro")}
                                     for r in rec.reports]}), flush=True)


# ---------------------------------------------------------------------------------- parent
def generate(root: Path, dim: int | None, limit: int) -> dict:
    if not (root / "manifest.json").exists():
        cmd = [sys.executable, "-m", "grounding.data", "generate", "youcook2", str(root), "--set", f"limit={limit}"]
        if dim:
            cmd += ["--set", f"D={dim}"]
        t0 = time.time()
        subprocess.run(cmd, check=True, cwd=REPO, env=env(), stdout=subprocess.DEVNULL)
        print(f"generated {root} in {time.time() - t0:.0f} s", flush=True)
    m = json.loads((root / "manifest.json").read_text())
    splits: dict[str, dict] = {}
    for s in m["shards"]:
        d = splits.setdefault(s["split"], {"rows": 0, "bytes": 0})
        d["rows"] += s["rows"]
        d["bytes"] += s["bytes"]
    return {"root": str(root), "dims": m["dims"], "feature_dtype": m["feature_dtype"], "splits": splits,
            "shard_bytes": sum(s["bytes"] for s in m["shards"])}


def env() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
            "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def child_cmd(root: str, mapped: bool, epochs: int, cache_dir: str, seed: int = 0, trials: int = 1) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--child", "--root", root, "--mapped", str(mapped).lower(),
            "--epochs", str(epochs), "--cache-dir", cache_dir, "--seed", str(seed), "--trials", str(trials)]


def run_group(cmds: list[list[str]], period: float = 0.25) -> dict:
    """Start ``cmds`` at once, sample their smaps_rollup until all exit; peaks and their reports."""
    procs = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env(), cwd=REPO)
             for c in cmds]
    peak = {"total": 0, **{f: 0 for f in FIELDS}}
    per_proc = [dict.fromkeys(FIELDS, 0) for _ in procs]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            now = dict.fromkeys(FIELDS, 0)
            for i, p in enumerate(procs):
                m = smaps(p.pid) if p.poll() is None else None
                for f in FIELDS:
                    v = (m or {}).get(f, 0)
                    now[f] += v
                    per_proc[i][f] = max(per_proc[i][f], v)
            total = now["Pss_Anon"] + now["Pss_File"] + now["Pss_Shmem"]
            if total > peak["total"]:
                peak.update(now, total=total)
            stop.wait(period)

    t = threading.Thread(target=sample, daemon=True)
    t0 = time.time()
    t.start()
    outs = [p.communicate() for p in procs]
    stop.set()
    t.join()
    rows = []
    for p, (out, err) in zip(procs, outs):
        if p.returncode != 0:
            rows.append({"returncode": p.returncode, "stderr_tail": err[-800:]})
        else:
            rows.append({"returncode": 0, "trials": [json.loads(line) for line in out.splitlines() if line.startswith("{")]})
    return {"wall_s": time.time() - t0, "peak_node": peak, "peak_per_process": per_proc, "processes": rows}


def summary(group: dict) -> dict:
    ok = [r for r in group["processes"] if r["returncode"] == 0]
    last = [t["epochs"][-1] for r in ok for t in r["trials"]]
    first = [t["epochs"][0] for r in ok for t in r["trials"]]
    mean = lambda xs: sum(xs) / len(xs) if xs else None  # noqa: E731
    gb = lambda b: round(b / 2**30, 3)  # noqa: E731
    pk = group["peak_node"]
    return {"ok": len(ok), "failed": len(group["processes"]) - len(ok),
            "node_pss_gb": gb(pk["total"]), "node_anon_gb": gb(pk["Pss_Anon"]), "node_file_gb": gb(pk["Pss_File"]),
            "first_epoch_train_s": mean([e["time/train_s"] for e in first]),
            "last_epoch_train_s": mean([e["time/train_s"] for e in last]),
            "last_epoch_eval_s": mean([e["time/eval_s"] for e in last]),
            "val_box_micro": [e["val/box_micro"] for e in last], "wall_s": round(group["wall_s"], 1)}


def prebuild(root: str, cache_dir: str) -> float:
    """Build the mapped copy once (its own process) so that timed runs start warm-on-disk."""
    code = ("import sys; from grounding import tasks; from grounding.data.shards import Dataset; "
            "from grounding.data.cache import ShardCache; "
            "tasks.load(Dataset.open(sys.argv[1], cache=ShardCache(sys.argv[2])))")
    t0 = time.time()
    subprocess.run([sys.executable, "-c", code, root, cache_dir], check=True, env=env(), cwd=REPO)
    return time.time() - t0


def evict(folders: list[Path]) -> None:
    """Drop these files' clean pages from the page cache, so that a run inside a memory cgroup
    faults them in itself (pages stay charged to the cgroup that first read them)."""
    for folder in folders:
        for p in folder.rglob("*"):
            if p.is_file():
                fd = os.open(p, os.O_RDONLY)
                try:
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                finally:
                    os.close(fd)


def cgroup_run(cmd: list[str], limit_mb: int, name: str) -> dict:
    """``cmd`` inside a fresh cgroup-v1 memory cgroup of ``limit_mb`` MB (swap off on this machine)."""
    cg = CGROUP / name
    cg.mkdir(exist_ok=True)
    (cg / "memory.limit_in_bytes").write_text(str(limit_mb * 2**20))
    shell = f'echo $$ > {cg}/cgroup.procs && exec "$@"'
    t0 = time.time()
    p = subprocess.run(["sh", "-c", shell, "sh", *cmd], capture_output=True, text=True, env=env(), cwd=REPO)
    out = {"limit_mb": limit_mb, "returncode": p.returncode, "wall_s": round(time.time() - t0, 1),
           "max_usage_mb": round(int((cg / "memory.max_usage_in_bytes").read_text()) / 2**20),
           "failcnt": int((cg / "memory.failcnt").read_text())}
    oom = (cg / "memory.oom_control").read_text()
    out["oom_kills"] = int(next((ln.split()[1] for ln in oom.splitlines() if ln.startswith("oom_kill ")), 0))
    trials = [json.loads(line) for line in p.stdout.splitlines() if line.startswith("{")]
    if trials:
        out["val_box_micro"] = trials[-1]["epochs"][-1]["val/box_micro"]
        out["memory"] = trials[-1]["memory"]
    if p.returncode:
        out["stderr_tail"] = p.stderr[-400:]
    try:
        cg.rmdir()
    except OSError:
        pass
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--root", help=argparse.SUPPRESS)
    ap.add_argument("--mapped", choices=("true", "false"), default="true", help=argparse.SUPPRESS)
    ap.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--trials", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--cache-dir", default="", help=argparse.SUPPRESS)
    ap.add_argument("--keep", default="", help=argparse.SUPPRESS)
    ap.add_argument("--final-eval", default="", help=argparse.SUPPRESS)
    ap.add_argument("--final-eval-check", action="store_true",
                    help="also run a trial's final evaluation (its own process, as the sweep's Ray task) on the "
                         "trial's last checkpoint and compare its peak memory with the trial's")
    ap.add_argument("--dim", type=int, default=4096, help="feature size D of the large dataset")
    ap.add_argument("--limit", type=int, default=450, help="segments per split of the generated benchmark")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--concurrency", type=int, nargs="*", default=[1, 2, 4])
    ap.add_argument("--pairs", type=int, default=0, help="K rounds of one mapped and one in-memory trial "
                    "run at the same time (both see the same machine load): the epoch-time ratio")
    ap.add_argument("--merge", action="store_true", help="add to the existing results file")
    ap.add_argument("--default-dim", action=argparse.BooleanOptionalAction, default=True,
                    help="also measure the default D (N=1 and the largest N)")
    ap.add_argument("--cgroup-mb", type=int, default=0, help="memory-limited run (MB, smaller than the dataset)")
    ap.add_argument("--sequential", type=int, default=0, help="K trials in one process, memory after each")
    ap.add_argument("--work", default=str(REPO / "data" / "bench-data-memory"))
    args = ap.parse_args()
    if args.child:
        args.mapped = args.mapped == "true"
        return child(args)
    if not Path("/proc/self/smaps_rollup").exists():
        raise SystemExit("error: /proc/PID/smaps_rollup is not readable here; allowed: Linux >= 4.14")
    if args.cgroup_mb and not (CGROUP / "memory.limit_in_bytes").exists():
        raise SystemExit(f"error: --cgroup-mb needs the cgroup-v1 memory controller at {CGROUP}")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    old = REPO / "bench" / "results" / "data_memory.json"
    prior = json.loads(old.read_text()) if args.merge and old.exists() else {}
    out: dict = {**prior, "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                             "loadavg_start": os.getloadavg(), "mem_total_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)},
                 "method": "stvg (PAPER point, FIXED embed_dim=128), 1 torch thread per process, plain processes "
                           "calling orchestration.worker.trial.train_loop", "epochs": args.epochs, "datasets": prior.get("datasets", {})}
    sets = [("D%d" % args.dim, args.dim, args.concurrency)]
    if args.default_dim:
        sets.append(("D_default", None, sorted({min(args.concurrency), max(args.concurrency)})))
    results = out["runs"] = prior.get("runs", {})
    for name, dim, levels in sets:
        root = work / f"yc2-{name}-{args.limit}"
        info = out["datasets"][name] = generate(root, dim, args.limit)
        cache = str(work / f"cache-{name}")
        info["mapped_build_s"] = round(prebuild(str(root), cache), 1)
        info["float16_copy_gb"] = round(sum(p.stat().st_size for p in (Path(cache) / "mapped").rglob("*.npy")) / 2**30, 3)
        print(f"{name}: {info['shard_bytes'] / 2**30:.2f} GB of shards, mapped copy {info['float16_copy_gb']} GB "
              f"built in {info['mapped_build_s']} s", flush=True)
        for n in levels:
            for mapped in (True, False):
                key = f"{name}/N{n}/{'mapped' if mapped else 'in_memory'}"
                g = run_group([child_cmd(str(root), mapped, args.epochs, cache, seed=0) for _ in range(n)])
                results[key] = {"summary": summary(g), **g}
                print(key, json.dumps(results[key]["summary"]), flush=True)
                _write(out)
        if dim and args.final_eval_check:
            keep = str(work / "final-eval-ckpt")
            t = run_group([child_cmd(str(root), True, args.epochs, cache, seed=0) + ["--keep", keep]])
            f = run_group([child_cmd(str(root), True, args.epochs, cache, seed=0) + ["--final-eval", keep]])
            gb = lambda b: round(b / 2**30, 3)  # noqa: E731
            pss = lambda g: g["peak_per_process"][0]["Pss_Anon"] + g["peak_per_process"][0]["Pss_File"]  # noqa: E731
            out["final_eval"] = {"dataset": name, "trial_peak_pss_gb": gb(pss(t)), "trial_peak_anon_gb":
                                 gb(t["peak_per_process"][0]["Pss_Anon"]), "final_eval_peak_pss_gb": gb(pss(f)),
                                 "final_eval_peak_anon_gb": gb(f["peak_per_process"][0]["Pss_Anon"]),
                                 "final_eval_returncode": f["processes"][0]["returncode"],
                                 "final_eval": (f["processes"][0].get("trials") or [None])[0]}
            out["final_eval"]["holds"] = out["final_eval"]["final_eval_peak_pss_gb"] <= out["final_eval"]["trial_peak_pss_gb"]
            print("final eval", json.dumps(out["final_eval"]), flush=True)
            _write(out)
        if dim and args.pairs:
            rounds = []
            for k in range(args.pairs):
                g = run_group([child_cmd(str(root), m, args.epochs, cache, seed=0) for m in (True, False)])
                t = [p["trials"][0]["epochs"] for p in g["processes"]]
                rounds.append({"mapped_train_s": [e["time/train_s"] for e in t[0]],
                               "in_memory_train_s": [e["time/train_s"] for e in t[1]],
                               "mapped_eval_s": [e["time/eval_s"] for e in t[0]],
                               "in_memory_eval_s": [e["time/eval_s"] for e in t[1]],
                               "peak_per_process": g["peak_per_process"]})
                r = rounds[-1]
                r["ratio_last_epoch_train"] = r["mapped_train_s"][-1] / r["in_memory_train_s"][-1]
                r["ratio_all_epochs_train_eval"] = ((sum(r["mapped_train_s"]) + sum(r["mapped_eval_s"])) /
                                                    (sum(r["in_memory_train_s"]) + sum(r["in_memory_eval_s"])))
                print(f"pair {k}", json.dumps({k2: v for k2, v in r.items() if k2 != "peak_per_process"}), flush=True)
            ratios = sorted(r["ratio_last_epoch_train"] for r in rounds)
            out["pairs"] = {"dataset": name, "rounds": rounds, "median_ratio_last_epoch_train": ratios[len(ratios) // 2],
                            "note": "one mapped and one in-memory process at the same time, per round"}
            _write(out)
        if dim and args.sequential:
            g = run_group([child_cmd(str(root), True, 1, cache, seed=100, trials=args.sequential)])
            trials = g["processes"][0].get("trials", [])
            out["sequential"] = {"dataset": name, "trials": len(trials), "epochs_each": 1,
                                 "pss_after_each_gb": [round(sum(t["memory"][f] for f in ("Pss_Anon", "Pss_File", "Pss_Shmem")) / 2**30, 3) for t in trials],
                                 "anon_after_each_gb": [round(t["memory"]["Pss_Anon"] / 2**30, 3) for t in trials],
                                 "returncode": g["processes"][0]["returncode"]}
            print("sequential", json.dumps(out["sequential"]), flush=True)
            _write(out)
        if dim and args.cgroup_mb:
            ref = (results[f"{name}/N{min(levels)}/mapped"]["summary"]["val_box_micro"] or [None])[0]
            lim = out["cgroup"] = {"dataset": name, "unlimited_val_box_micro": ref}
            evict([root, Path(cache)])
            lim["mapped"] = cgroup_run(child_cmd(str(root), True, args.epochs, cache), args.cgroup_mb, "wt25-mapped")
            lim["mapped"]["same_metric"] = lim["mapped"].get("val_box_micro") == ref
            print("cgroup mapped", json.dumps(lim["mapped"]), flush=True)
            evict([root, Path(cache)])
            lim["in_memory"] = cgroup_run(child_cmd(str(root), False, 1, cache), args.cgroup_mb, "wt25-inmem")
            print("cgroup in-memory", json.dumps(lim["in_memory"]), flush=True)
            _write(out)
    out["machine"]["loadavg_end"] = os.getloadavg()
    _write(out)


def _write(out: dict) -> None:
    path = REPO / "bench" / "results" / "data_memory.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
