"""What the one-id-one-row rule costs a file output (issue 29.2): ``outputs.targets.SeenIds`` (64-bit string
hashes in sorted NumPy runs) against a plain Python set of the id strings, on N ids of the shape folders give
(``class_042/img_0001234.jpg``) in batches of 256, as the batch loop hands them to the target. Prints ids/s (and
the ratio to the set, measured in the same run) and the memory each holds at the end (tracemalloc: Python and
NumPy allocations).

    python benchmarks/seen_ids.py              # 1M ids
    python benchmarks/seen_ids.py --n 10000000
"""

from __future__ import annotations

import argparse
import time
import tracemalloc

from imgfeat.outputs.targets import SeenIds


class PlainSet:
    def __init__(self) -> None:
        self.seen: set[str] = set()

    def first(self, ids):
        out = []
        for i in ids:
            out.append(i not in self.seen)
            self.seen.add(i)
        return out


def run(kind, n: int, batch: int = 256) -> tuple[float, float]:
    """(ids/s, MB held at the end). Each batch's id strings are made fresh, as the batch loop receives them, and
    dropped after the call, so what stays is what the structure keeps; making them is timed apart and left out."""
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    seen = kind()
    seconds = 0.0
    for s in range(0, n, batch):
        ids = [f"class_{k % 100:03d}/img_{k:07d}.jpg" for k in range(s, min(n, s + batch))]
        t = time.perf_counter()
        seen.first(ids)
        seconds += time.perf_counter() - t
    del ids
    held = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    return n / seconds, held / 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1_000_000)
    args = ap.parse_args()
    rows = [(name, *run(kind, args.n)) for name, kind in (("python set of ids", PlainSet), ("SeenIds", SeenIds))]
    base = rows[0][1]
    print(f"{args.n:,} ids, batches of 256")
    print(f"| {'structure':<18} | {'ids/s':>12} | {'ratio':>6} | {'held MB':>8} |")
    print(f"|{'-' * 20}|{'-' * 14}|{'-' * 8}|{'-' * 10}|")
    for name, rate, mb in rows:
        print(f"| {name:<18} | {rate:>12,.0f} | {rate / base:>6.2f} | {mb:>8.1f} |")


if __name__ == "__main__":
    main()
