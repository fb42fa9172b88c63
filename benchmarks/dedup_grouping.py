"""dedup's grouping alone (issue 31): the streamed ``groups_at`` (pairs found a block of rows at a time, spilled to
files, taken in batches closest first; O(N) small held) against the one-pass grouping it replaced (every pair above
the threshold in memory as int64 arrays, lexsorted, a dict of representatives), on the same neighbour lists, each
in a fresh process: wall time, peak RssAnon over the process (the memory-mapped lists' pages left out) and whether
both gave the same groups.

    python benchmarks/dedup_grouping.py --rows 1000000 --intrinsic 32              # makes the collection and lists
    python benchmarks/dedup_grouping.py --lists DIR                                # DIR/D.npy and DIR/I.npy, reused

The collection is ``scale.py``'s (the same ``--intrinsic``); its lists are dedup's default (k = 10, the index
``auto`` chooses for a graph), saved as ``.npy`` in ``--lists`` (default: a temporary folder) and memory-mapped.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import scale  # noqa: E402


def one_pass(D: np.ndarray, I: np.ndarray, threshold: float) -> list[np.ndarray]:
    """The grouping before the streamed one (2c4c6de), the baseline: the same rule, every pair held at once."""
    n = len(D)
    src, col = np.nonzero((D >= threshold) & (I >= 0))
    dst = I[src, col].astype(np.int64)
    sim = D[src, col]
    keep = dst != src
    a, b, sim = np.minimum(src, dst)[keep], np.maximum(src, dst)[keep], sim[keep]
    order = np.lexsort((-sim, a * n + b))
    a, b, sim = a[order], b[order], sim[order]
    first = np.ones(len(a), bool)
    first[1:] = (a[1:] != a[:-1]) | (b[1:] != b[:-1])
    a, b, sim = a[first], b[first], sim[first]
    order = np.lexsort((b, a, -sim))
    a, b = a[order], b[order]
    degree = np.bincount(np.concatenate([a, b]), minlength=n)
    swap = degree[b] > degree[a]
    a, b = np.where(swap, b, a), np.where(swap, a, b)
    alone = (degree[a] == 1) & (degree[b] == 1)
    rep_of: dict[int, int] = {}
    for r, m in zip(a[~alone].tolist(), b[~alone].tolist()):
        rr, rm = rep_of.get(r), rep_of.get(m)
        if rr is None and rm is None:
            rep_of[r] = rep_of[m] = r
        elif rm is None and rr == r:
            rep_of[m] = r
        elif rr is None and rm == m:
            rep_of[r] = m
    rows = np.concatenate([np.fromiter(rep_of.keys(), np.int64, len(rep_of)), a[alone], b[alone]])
    reps = np.concatenate([np.fromiter(rep_of.values(), np.int64, len(rep_of)), a[alone], a[alone]])
    order = np.lexsort((rows, rows != reps, reps))
    rows, reps = rows[order], reps[order]
    groups = np.split(rows, np.flatnonzero(reps[1:] != reps[:-1]) + 1) if len(rows) else []
    return sorted(groups, key=lambda g: (-len(g), int(g[0])))


def run(which: str, lists: Path, threshold: float) -> None:
    """In the child process: group the lists and print the groups' count, rows and a digest of them all."""
    from imgfeat.tools.dedup import groups_at

    D, I = np.load(lists / "D.npy", mmap_mode="r"), np.load(lists / "I.npy", mmap_mode="r")
    with tempfile.TemporaryDirectory(prefix="imgfeat-grouping-", dir=lists) as work:
        t0 = time.perf_counter()
        groups = one_pass(D, I, threshold) if which == "one pass" else groups_at(D, I, threshold, folder=work)
        seconds = time.perf_counter() - t0
        digest, rows = hashlib.sha256(), 0
        for s in range(0, len(groups), 65536):
            for g in groups[s:s + 65536]:
                digest.update(np.asarray(g, np.int64).tobytes() + b"|")
                rows += len(g)
    print(json.dumps({"seconds": seconds, "groups": len(groups), "rows": rows, "digest": digest.hexdigest()[:12]}))


def make_lists(rows: int, intrinsic: int, lists: Path) -> None:
    from imgfeat.tools.autoindex import build_index
    from imgfeat.tools.dedup import neighbour_lists

    scale.make(rows, lists, intrinsic)
    X = np.load(lists / "f.npy", mmap_mode="r")
    knn = build_index(X, "auto", 10, memory=None, what="dedup", graph=True)
    out = lambda shape, dtype: np.lib.format.open_memmap(lists / ("D.npy" if dtype == np.float32 else "I.npy"),
                                                         "w+", dtype, shape)
    D, I = neighbour_lists(X, 10, knn=knn, out=out)
    D.flush(), I.flush()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--intrinsic", type=int, default=32)
    ap.add_argument("--lists", type=Path, help="a folder with D.npy and I.npy (made there when missing)")
    ap.add_argument("--threshold", type=float, default=0.95)
    ap.add_argument("--skip-baseline", action="store_true", help="the streamed grouping alone")
    ap.add_argument("--run", choices=["one pass", "streamed"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.run:
        return run(args.run, args.lists, args.threshold)
    with tempfile.TemporaryDirectory(prefix="imgfeat-grouping-") as tmp:
        lists = args.lists or Path(tmp)
        if not (lists / "I.npy").exists():
            lists.mkdir(parents=True, exist_ok=True)
            t0 = time.perf_counter()
            make_lists(args.rows, args.intrinsic, lists)
            print(f"neighbour lists of {args.rows:,} rows made in {time.perf_counter() - t0:.0f} s", flush=True)
        n, entries = np.load(lists / "I.npy", mmap_mode="r").shape
        print(f"\n| grouping at {args.threshold} of {n:,} x {entries} lists | wall | peak RssAnon | groups | rows in "
              f"groups | digest | ratio |\n|---|---|---|---|---|---|---|")
        base = None
        for which in ["streamed"] + ([] if args.skip_baseline else ["one pass"]):
            wall, peak, out = scale.measured([sys.executable, __file__, "--run", which, "--lists", str(lists),
                                              "--threshold", str(args.threshold)])
            r = json.loads(out)
            base = base or r
            ratio = "" if r is base else f"x{r['seconds'] / base['seconds']:.2f} the time" + (
                "" if r["digest"] == base["digest"] else "; **groups differ**")
            print(f"| {which} | {r['seconds']:.1f} s | {peak:,.0f} MB | {r['groups']:,} | {r['rows']:,} | "
                  f"{r['digest']} | {ratio} |", flush=True)


if __name__ == "__main__":
    main()
