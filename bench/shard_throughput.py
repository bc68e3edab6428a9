"""Shard read throughput: the project's reader against a plain pyarrow read of the same files.

    python bench/shard_throughput.py                 # full default youcook2 benchmark (~770 MB)
    python bench/shard_throughput.py --limit 1000    # 1000 segments per split (~200 MB), faster

What is timed, per configuration, over every split of the dataset (best of ``--repeat`` runs;
within a run the two readers alternate split by split, so that both see the same page cache and
machine load):

* ``project``: ``Dataset.read_split(split)`` -> ``WsvogArrays.from_table`` (what training does:
  verification against the manifest, cache, row-group selection, padded numpy arrays);
* ``plain``: ``pyarrow.parquet.read_table`` of each shard file + ``to_numpy`` of its features
  (local path, or the ``s3://`` object through s3fs).

Configurations: ``local`` (stamps warm: the sha256 of each local shard is remembered after the
first check; the first, hashing pass is reported as ``local_first_check``), ``s3_cold`` (empty
cache: download + sha256 + read; a fresh cache folder for every repeat) and ``s3_warm`` (the same
split read again right after, every shard in the node cache; compared with the same plain S3
reads). S3 is a moto server in its own process on 127.0.0.1. Wall-clock seconds decide the
ratio; process CPU seconds are recorded too (``*_cpu_s``), as is the load average.

Writes ``bench/results/shard_throughput.json`` and prints a table with MB/s, samples/s and the
ratio project/plain (target >= 0.8).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TARGET = 0.8


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_moto() -> tuple[subprocess.Popen, str]:
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            urllib.request.urlopen(url, timeout=1)
            return proc, url
        except Exception:
            if proc.poll() is not None:
                raise RuntimeError("moto server exited")
            time.sleep(0.1)
    proc.terminate()
    raise RuntimeError("moto server did not start")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--limit", type=int, default=None, help="segments per split (default: the full benchmark)")
    ap.add_argument("--data", default=None, help="local dataset to reuse/generate (default: a folder in /tmp)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per configuration; the best is reported")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "shard_throughput.json"))
    ap.add_argument("--skip-s3", action="store_true")
    args = ap.parse_args()

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")

    load_before = os.getloadavg()
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from grounding.data.benchmarks import youcook2
    from grounding.data.cache import ShardCache
    from grounding.data.manifest import DataError
    from grounding.data.shards import Dataset, publish
    from grounding.data.wsvog import WsvogArrays

    cfg = youcook2.YC2Config(limit=args.limit)
    data = Path(args.data or Path(tempfile.gettempdir()) / f"grounding_bench_yc2_{args.limit or 'full'}")
    try:
        ds = Dataset.open(data)
        if ds.manifest.producer.get("args", {}).get("limit") != args.limit:
            raise DataError("other arguments")
    except DataError:
        t = time.perf_counter()
        print(f"generating youcook2 (limit={args.limit}) at {data} ...", flush=True)
        youcook2.generate(data, cfg, overwrite=True)
        print(f"  {time.perf_counter() - t:.0f} s", flush=True)
        ds = Dataset.open(data)
    m = ds.manifest
    T, N, D = (m.dims[k] for k in ("T", "N", "D"))
    total_bytes = sum(s.bytes for s in m.shards)
    total_rows = sum(s.rows for s in m.shards)
    scratch = Path(tempfile.mkdtemp(prefix="grounding_bench_"))

    def project(d: Dataset, sp: str) -> int:
        return len(WsvogArrays.from_table(d.read_split(sp), T, N, D))

    def plain(paths: list[str], filesystem=None) -> int:
        n = 0
        for p in paths:
            t = pq.read_table(p, filesystem=filesystem)
            col = t["features"]
            col = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
            feats = col.flatten().to_numpy(zero_copy_only=False).reshape(len(col), T, N, D)
            n += len(feats)
        return n

    def timed(fn, rows: int) -> tuple[float, float]:
        w, c = time.perf_counter(), time.process_time()
        got = fn()
        assert got == rows, (got, rows)
        return time.perf_counter() - w, time.process_time() - c

    results: dict[str, dict] = {}

    def record(name: str, proj: list[tuple[float, float]], base: list[tuple[float, float]]) -> None:
        p, q = min(w for w, _ in proj), min(w for w, _ in base)
        results[name] = {
            "project_s": p, "plain_s": q,
            "project_MBps": total_bytes / 2**20 / p, "plain_MBps": total_bytes / 2**20 / q,
            "project_samples_per_s": total_rows / p, "plain_samples_per_s": total_rows / q,
            "ratio": q / p, "project_runs_s": [w for w, _ in proj], "plain_runs_s": [w for w, _ in base],
            "project_cpu_s": [c for _, c in proj], "plain_cpu_s": [c for _, c in base],
        }

    def interleaved(open_project, paths_of, fs=None, warm_too=False):
        """Per repeat, per split: the plain read and the project read back to back (their order
        alternating), so that both see the same machine load; totals over the splits."""
        proj, base, warm = [], [], []
        for r in range(args.repeat):
            d = open_project(r)
            tp = tb = tw = (0.0, 0.0)
            for i, sp in enumerate(m.splits):
                rows = m.split_rows(sp)
                runs = {}
                for which in (("plain", "project") if (r + i) % 2 == 0 else ("project", "plain")):
                    runs[which] = (timed(lambda: plain(paths_of(sp), fs), rows) if which == "plain"
                                   else timed(lambda: project(d, sp), rows))
                tp = (tp[0] + runs["project"][0], tp[1] + runs["project"][1])
                tb = (tb[0] + runs["plain"][0], tb[1] + runs["plain"][1])
                if warm_too:  # the same split again, its shards now in the node cache
                    x = timed(lambda: project(d, sp), rows)
                    tw = (tw[0] + x[0], tw[1] + x[1])
            proj.append(tp)
            base.append(tb)
            warm.append(tw)
        return proj, base, warm

    def local_paths(sp: str) -> list[str]:
        return [str(data / s.path) for s in m.split_shards(sp)]

    # local: the first check hashes every shard; later reads only look up the stamp.
    d0 = Dataset.open(str(data), cache=ShardCache(scratch / "first_check"))
    first = timed(lambda: sum(project(d0, sp) for sp in m.splits), total_rows)[0]
    proj, base, _ = interleaved(lambda r: Dataset.open(str(data), cache=ShardCache(scratch / "first_check")),
                                local_paths)
    record("local", proj, base)
    results["local_first_check"] = {"project_s": first, "project_MBps": total_bytes / 2**20 / first,
                                    "project_samples_per_s": total_rows / first}

    moto = None
    if not args.skip_s3:
        import s3fs

        moto, url = start_moto()
        try:
            os.environ["AWS_ENDPOINT_URL_S3"] = url
            fs = s3fs.S3FileSystem(endpoint_url=url)
            fs.mkdir("bench")
            t = time.perf_counter()
            publish(str(data), "s3://bench/yc2")
            results["publish_s"] = time.perf_counter() - t
            root = "s3://bench/yc2"

            def s3_paths(sp: str) -> list[str]:
                return [f"bench/yc2/{s.path}" for s in m.split_shards(sp)]

            # a fresh, empty node cache for every repeat: the first read of each split is cold
            cold, base, warm = interleaved(lambda r: Dataset.open(root, cache=ShardCache(scratch / f"s3_cache_{r}")),
                                           s3_paths, fs, warm_too=True)
            record("s3_cold", cold, base)
            record("s3_warm", warm, base)
        finally:
            moto.terminate()
            moto.wait()
    shutil.rmtree(scratch, ignore_errors=True)

    report = {
        "dataset": {"benchmark": "youcook2", "limit": args.limit, "dims": m.dims, "feature_dtype": m.feature_dtype,
                    "rows": total_rows, "bytes": total_bytes, "shards": len(m.shards),
                    "splits": {sp: m.split_rows(sp) for sp in m.splits}},
        "repeat": args.repeat, "target_ratio": TARGET, "results": results,
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform(),
                    "pyarrow": pa.__version__, "numpy": np.__version__,
                    "loadavg_1_5_15_before": list(load_before), "loadavg_1_5_15_after": list(os.getloadavg())},
        "reader": "Dataset.read_split -> WsvogArrays.from_table",
        "plain": "pyarrow.parquet.read_table + features.to_numpy",
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))

    print(f"\n{total_rows} rows, {total_bytes / 2**20:.0f} MB in {len(m.shards)} shards "
          f"(T={T} N={N} D={D} {m.feature_dtype}); best of {args.repeat}")
    print(f"{'config':<12} {'project MB/s':>13} {'plain MB/s':>11} {'project samples/s':>18} "
          f"{'plain samples/s':>16} {'ratio':>6}")
    ok = True
    for name in ("local", "s3_cold", "s3_warm"):
        r = results.get(name)
        if not r:
            continue
        ok &= r["ratio"] >= TARGET
        print(f"{name:<12} {r['project_MBps']:>13.0f} {r['plain_MBps']:>11.0f} {r['project_samples_per_s']:>18.0f} "
              f"{r['plain_samples_per_s']:>16.0f} {r['ratio']:>6.2f}")
    f = results["local_first_check"]
    print(f"{'local, first check (sha256 of every shard)':<44} {f['project_MBps']:.0f} MB/s")
    print(f"load average (1 min) before/after: {load_before[0]:.1f}/{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"target ratio >= {TARGET}: {'met' if ok else 'NOT met'}; wrote {out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
