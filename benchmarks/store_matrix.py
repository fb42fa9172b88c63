"""Reading a store's vectors after deletions (issue 30): ``np.asarray(StoreMatrix)`` and a pass of 65,536-row
slices, against the previous implementation (each part's live rows gathered into a copy, then concatenated: two
copies; a slice made an index array of the whole matrix), measured in the same run on the same files.

    python benchmarks/store_matrix.py               # 1M x 512 float32 in 100 shards, 1% of rows deleted
    python benchmarks/store_matrix.py --n 200000

Peak anonymous memory (RssAnon) is read from /proc around each read; pages of the memory-mapped shard files are
not counted (they are the page cache's, not the program's).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from imgfeat.outputs.store import StoreMatrix


def rss_anon_mb() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def old_array(m: StoreMatrix) -> np.ndarray:
    parts = [p if k is None else p[k] for p, k in zip(m._parts, m._keeps)]
    return np.concatenate(parts)


def old_blocks(m: StoreMatrix, rows: int) -> float:
    total = 0.0
    for start in range(0, len(m), rows):
        total += float(m._rows(np.arange(len(m))[start:start + rows])[0, 0])
    return total


def new_blocks(m: StoreMatrix, rows: int) -> float:
    total = 0.0
    for start in range(0, len(m), rows):
        total += float(m[start:start + rows][0, 0])
    return total


def timed(fn) -> tuple[float, float]:
    """(seconds, peak RssAnon above the start in MB, sampled every 5 ms while ``fn`` runs)."""
    import threading

    before, peak, done = rss_anon_mb(), [0.0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss_anon_mb())
            time.sleep(0.005)

    watcher = threading.Thread(target=sample, daemon=True)
    watcher.start()
    t = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - t
    peak[0] = max(peak[0], rss_anon_mb())
    done.set()
    watcher.join()
    del out
    return seconds, peak[0] - before


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--shards", type=int, default=100)
    ap.add_argument("--deleted", type=float, default=0.01)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        files, keeps, per = [], [], args.n // args.shards
        for s in range(args.shards):
            path = Path(tmp) / f"{s:06d}.npy"
            np.save(path, rng.standard_normal((per, args.dim), dtype=np.float32))
            files.append(path)
            dead = rng.random(per) < args.deleted
            keeps.append(np.flatnonzero(~dead) if dead.any() else None)
        m = StoreMatrix(files, args.dim, np.float32, keeps)
        for f in files:  # warm the page cache: both sides read from memory
            np.load(f, mmap_mode="r").sum()
        assert np.array_equal(old_array(m)[:1000], np.asarray(m)[:1000])
        rows = [("np.asarray, before (gather + concatenate)", *timed(lambda: old_array(m))),
                ("np.asarray, now (one copy)", *timed(lambda: np.asarray(m))),
                ("65,536-row slices, before", *timed(lambda: old_blocks(m, 65536))),
                ("65,536-row slices, now", *timed(lambda: new_blocks(m, 65536)))]
    print(f"{len(m):,} live rows x {args.dim} float32 in {args.shards} shards, {args.deleted:.0%} deleted")
    print(f"| {'read':<42} | {'seconds':>8} | {'ratio':>6} | {'peak RssAnon MB':>15} |")
    print(f"|{'-' * 44}|{'-' * 10}|{'-' * 8}|{'-' * 17}|")
    for j, (name, sec, mb) in enumerate(rows):
        base = rows[j - j % 2][1]
        print(f"| {name:<42} | {sec:>8.2f} | {base / sec:>6.2f} | {mb:>15.0f} |")
    t = time.perf_counter()
    np.arange(100_000_000)[0:65536]
    print(f"the index array a slice made before, at 100M rows: {time.perf_counter() - t:.2f} s and 800 MB per slice")


if __name__ == "__main__":
    main()
