"""``StringColumn.take`` (how ``IdIndex.rows`` confirms its hits and ``dedup --out`` names its groups) over the ids of
an ``.ids.txt`` read by ``read_lines`` (Arrow chunks): chunk by chunk (now) against Arrow's ``take`` on the chunked
array (before: it joins the chunks into one copy first), 65,536 random rows a call, as ``dedup``'s ``group_lines``
asks; seconds a call, the ratio to the baseline of the same run, and RssAnon after (Arrow's allocator keeps the
joined copy it freed).

    python benchmarks/string_take.py --rows 10000000
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from imgfeat.outputs.idindex import read_lines

sys.path.insert(0, str(Path(__file__).parent))
from scale import self_anon_mb  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--calls", type=int, default=30)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="imgfeat-take-") as tmp:
        path = Path(tmp) / "f.ids.txt"
        with open(path, "w", encoding="utf-8") as fh:
            for s in range(0, args.rows, 1_000_000):
                fh.writelines(f"img{i:09d}\n" for i in range(s, min(args.rows, s + 1_000_000)))
        ids = read_lines(path)
    rng = np.random.default_rng(0)
    calls = [rng.integers(0, len(ids), 65_536) for _ in range(args.calls)]
    chunks = getattr(ids._values, "num_chunks", 1)
    print(f"| take, {len(ids):,} ids in {chunks} Arrow chunk(s), {args.calls} calls of 65,536 rows "
          f"| s a call | ratio | RssAnon after |\n|---|---|---|---|")
    base = None
    for name, take in (("Arrow's take on the chunked array (before)",
                        lambda r: ids._values.take(pa.array(r)).to_pylist()),
                       ("StringColumn.take, chunk by chunk (now)", ids.take)):
        take(calls[0])  # warm: the first call of either pays for what the process has not touched yet
        t0 = time.perf_counter()
        for rows in calls:
            take(rows)
        sec = (time.perf_counter() - t0) / len(calls)
        base = base or sec
        print(f"| {name} | {sec:.3f} | x{base / sec:.1f} | {self_anon_mb():,.0f} MB |", flush=True)
        pa.default_memory_pool().release_unused()


if __name__ == "__main__":
    main()
