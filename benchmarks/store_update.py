"""What a store that follows its collection costs (issue 20).

    python benchmarks/store_update.py --files 100000 --add 0.01 --diff-sizes 1000000,10000000

1. A folder of ``--files`` images (hard links of a few small JPEGs: the walk and the stat are what is measured)
   and a store that holds all of them, built with the store's own code (listing, plan, shard writer, publish)
   and zero vectors instead of a forward pass, so setting up 100,000 images takes seconds.
2. ``imgfeat extract`` on the unchanged folder (a new process each time, best of ``--runs``): nothing to extract,
   no model built; where the time goes (interpreter and imports, walk + stat, diff).
3. ``--add`` of new, distinct images added: the update's wall time, its extraction rate, and the time a full run
   of the folder would take at that rate (the baseline, measured in the same run on the same images).
4. The diff's peak memory (a new process per size) for synthetic inputs of ``--diff-sizes`` records against a
   store holding them all, ids and fingerprints only.

Prints Markdown tables.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def make_folder(folder: Path, n: int) -> None:
    from PIL import Image

    seeds = []
    for i in range(4):
        p = folder.parent / f"seed{i}.jpg"
        arr = np.random.default_rng(i).integers(0, 256, (96, 128, 3), dtype=np.uint8)
        Image.fromarray(arr).save(p, quality=85)
        seeds.append(p)
    for i in range(n):
        sub = folder / f"{i // 1000:03d}"
        if i % 1000 == 0:
            sub.mkdir(parents=True, exist_ok=True)
        os.link(seeds[i % 4], sub / f"{i:07d}.jpg")


def fake_store(folder: Path, store_path: Path, opts) -> None:
    """The store a real run would leave, with zero vectors: the same listing, plan, shards and manifest."""
    from imgfeat.data.sources import open_source
    from imgfeat.engines import update
    from imgfeat.outputs.store import FeatureStore
    from imgfeat.outputs.targets import StoreTarget
    import pyarrow.parquet as pq

    import torch

    from imgfeat.engines.pipeline import prepare_model, store_identity

    source = open_source(str(folder))
    store = FeatureStore(store_path)
    upd = update.prepare(opts.update_part, source, store)
    pipeline = prepare_model(opts.model_part, opts.exec_part, torch.device("cpu"))  # the real identity; vectors are zeros of its dimension
    store.open(store_identity(opts.resolve(), pipeline, source))
    dim = pipeline.dim
    target = StoreTarget(store, upd.plan, upd.base)
    pf = pq.ParquetFile(upd.plan)
    for g in range(pf.num_row_groups):
        t = pf.read_row_group(g, columns=["id", "path"])
        ids, paths = t.column("id").to_pylist(), t.column("path").to_pylist()
        target.write(upd.base + g, ids, paths, np.zeros((len(ids), dim), np.float32))
        target.end_shard(upd.base + g, len(ids))
    update.publish(store, upd)
    store.annotate("options", update.cheap_identity(opts.resolve(), source))


def cli(*args: str) -> tuple[float, str]:
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "imgfeat", *args], capture_output=True, text=True, check=True)
    return time.perf_counter() - t0, out.stderr.strip().splitlines()[-1]


def diff_memory(n: int) -> dict:
    """Peak RSS of the diff of n input records against a store that holds them (1% of them changed): the data
    is written by one process, the diff runs in a fresh one (ru_maxrss is a high-water mark)."""
    tmp = Path(tempfile.mkdtemp(prefix="imgfeat-diff-"))
    setup = f"""
import json
from pathlib import Path
import numpy as np, pyarrow as pa, pyarrow.parquet as pq
from imgfeat.engines.update import _schema
from imgfeat.outputs.store import inputs_schema

n, S, tmp = {n}, 100_000, Path({str(tmp)!r})
store = tmp / "store"
(store / "shards").mkdir(parents=True)
segs = []
with pq.ParquetWriter(tmp / "input.parquet", _schema()) as writer:
    for k, s in enumerate(range(0, n, S)):
        e = min(n, s + S)
        ids = pa.array([f"photos/{{i:09d}}.jpg" for i in range(s, e)], pa.string())
        fps = [f"{{1000 + i % 5000}}:{{1700000000000000000 + i}}" for i in range(s, e)]
        changed = [("1:1" if i % 100 == 0 else f) for i, f in zip(range(s, e), fps)]
        writer.write_table(pa.table({{"id": ids, "path": ids, "offset": pa.nulls(e - s, pa.int64()),
                                     "size": pa.nulls(e - s, pa.int64()), "error": pa.nulls(e - s, pa.string()),
                                     "fp": pa.array(changed, pa.string())}}, schema=_schema()), row_group_size=S)
        pq.write_table(pa.table({{"id": ids, "fp": pa.array(fps, pa.string()),
                                 "row": pa.array(np.arange(e - s, dtype=np.int32))}}, schema=inputs_schema()),
                       store / "shards" / f"{{k:06d}}.inputs.parquet")
        segs.append({{"shard": k, "rows": e - s, "errors": 0, "inputs": e - s, "dead": None}})
(store / "manifest.json").write_text(json.dumps({{"format": "imgfeat-store", "format_version": 2, "generation": 1,
                                                  "segments": segs, "dim": 8, "dtype": "float32"}}))
"""
    run = f"""
import json, time
from pathlib import Path
from imgfeat.engines.update import diff
from imgfeat.outputs.store import FeatureStore

import gc, os, threading

def rss():  # resident memory now (not a high-water mark: imports peak higher than they settle)
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

tmp = Path({str(tmp)!r})
gc.collect()
base, peak, running = rss(), [0], [True]

def sample():
    while running[0]:
        peak[0] = max(peak[0], rss())
        time.sleep(0.005)

sampler = threading.Thread(target=sample)
sampler.start()
t0 = time.perf_counter()
upd, pending = diff(FeatureStore(tmp / "store"), tmp / "input.parquet")
seconds = time.perf_counter() - t0
running[0] = False
sampler.join()
print(json.dumps({{"n": {n}, "changed": upd.changed, "unchanged": upd.unchanged, "pending": len(pending),
                  "seconds": seconds, "rss_before_mb": base / 2**20, "peak_mb": max(peak[0], rss()) / 2**20}}))
"""
    try:
        subprocess.run([sys.executable, "-c", setup], check=True)
        out = subprocess.run([sys.executable, "-c", run], capture_output=True, text=True, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=100_000)
    ap.add_argument("--add", type=float, default=0.01)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--diff-sizes", default="1000000,10000000")
    ap.add_argument("--model", default="efficientnet_lite0")
    args = ap.parse_args()
    from imgfeat.options import ExtractOptions

    tmp = Path(tempfile.mkdtemp(prefix="imgfeat-update-"))
    try:
        folder, store = tmp / "photos", tmp / "store"
        t0 = time.perf_counter()
        make_folder(folder, args.files)
        opts = ExtractOptions(data=str(folder), out=str(store), model=args.model, shard_size=10_000)
        fake_store(folder, store, opts)
        seeds = [str(p) for p in sorted(tmp.glob("seed*.jpg"))]
        imgfeat_extract_warm(seeds, tmp / "warm.npy", args.model)  # the model's export and backend choice, cached
        print(f"setup: {args.files:,} files and their store in {time.perf_counter() - t0:.1f} s\n")

        rows = []
        t_import = min(cli_time("-c", "import imgfeat.cli") for _ in range(args.runs))
        walk = []
        for _ in range(args.runs):
            from imgfeat.data.sources import fingerprint, open_source

            t0 = time.perf_counter()
            n = sum(1 for r in open_source(str(folder)).records() if fingerprint(r) or True)
            walk.append(time.perf_counter() - t0)
        unchanged = [cli("extract", "--data", str(folder), "--out", str(store), "--model", args.model)
                     for _ in range(args.runs)]
        best = min(unchanged, key=lambda t: t[0])
        rows.append(("unchanged folder: `imgfeat extract` (whole process)", f"{best[0]:.2f} s", best[1]))
        rows.append(("  of which: interpreter + imports", f"{t_import:.2f} s", "python -c 'import imgfeat.cli'"))
        rows.append(("  of which: walk + stat of every file", f"{min(walk):.2f} s", f"{n:,} files"))

        n_add = max(1, int(args.files * args.add))
        from PIL import Image

        for i in range(n_add):
            arr = np.random.default_rng(10_000 + i).integers(0, 256, (96, 128, 3), dtype=np.uint8)
            Image.fromarray(arr).save(folder / "new" / f"{i:05d}.jpg" if (folder / "new").is_dir() else
                                      _mkdir(folder / "new") / f"{i:05d}.jpg", quality=85)
        seconds, line = cli("extract", "--data", str(folder), "--out", str(store), "--model", args.model)
        rate = float(line.split(" images/s")[0].rsplit(", ", 1)[-1])
        full = args.files * (1 + args.add) / rate
        rows.append((f"{args.add:.0%} added ({n_add:,} new images): the update", f"{seconds:.1f} s", line))
        rows.append(("a full run of the folder at that rate (baseline)", f"{full:.0f} s",
                     f"update / full = {seconds / full:.3f}"))
        print("| run | wall | summary |\n|---|---|---|")
        for r in rows:
            print(f"| {r[0]} | {r[1]} | {r[2]} |")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print("\n| records (ids + fingerprints), 1% changed | diff time | peak RSS during the diff | RSS before it "
          "(imports) | the diff's own peak | found changed |")
    print("|---|---|---|---|---|---|")
    for size in (int(x) for x in args.diff_sizes.split(",") if x):
        m = diff_memory(size)
        print(f"| {size:,} | {m['seconds']:.1f} s | {m['peak_mb']:,.0f} MB | {m['rss_before_mb']:,.0f} MB | "
              f"{m['peak_mb'] - m['rss_before_mb']:,.0f} MB ({(m['peak_mb'] - m['rss_before_mb']) * 2**20 / size:,.0f} "
              f"B/record) | {m['changed']:,} |")


def imgfeat_extract_warm(files: list, out: Path, model: str) -> None:
    import imgfeat

    imgfeat.extract(files, str(out), model=model, quiet=True)


def _mkdir(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p


def cli_time(*args: str) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, *args], check=True)
    return time.perf_counter() - t0


if __name__ == "__main__":
    main()
