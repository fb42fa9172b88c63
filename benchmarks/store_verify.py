"""What checking a store on read costs: a full read of every vector of an N x D float32 store through
``imgfeat.load`` (the matrix read a block at a time and summed), with and without the check each reader now makes,
each in its own process, wall time and peak RssAnon, with the page cache warm (the store fits in RAM) and dropped
before the run (every byte from the disk: the case of a store larger than RAM; needs root for
``/proc/sys/vm/drop_caches``, else said and skipped). Rows:

- no check: the matrix over the published shard files, as readers opened it before (the baseline);
- first check: a store whose file states were never checked (a copy, another machine): every file's xxh3 read;
- remembered: the usual case (the writer, or an earlier read, checked this state): one stat a file;
- ``imgfeat info --full``: every checksum read (xxh3), as ``info`` checked sha256 before (also timed here).

    python benchmarks/store_verify.py --rows 1000000 --dim 512
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from scale import measured  # noqa: E402

IDENTITY = dict(model="generated", layer=None, pool=None, weights="0" * 16, preprocess={}, dtype="float32",
                relu=False, l2=True, precision="fp32", input="generated", start=0, stop=None)

READ = """
import sys, time, numpy as np
import imgfeat
from imgfeat.outputs.store import FeatureStore
if sys.argv[2] == "none":  # the same read as readers made before they checked: the published segments as they are
    FeatureStore.checked_segments = FeatureStore.segments
t = time.perf_counter()
_, X = imgfeat.load(sys.argv[1])
opened = time.perf_counter() - t
total = 0.0
for block in X.iter_blocks(65536):
    total += float(block.sum(dtype=np.float64))
print(f"{opened:.3f}")
"""

SHA = """
import sys
from imgfeat.files import sha256
from imgfeat.outputs.store import FeatureStore
store = FeatureStore(sys.argv[1])
for seg in store.segments():
    for f in seg["files"].values():
        assert sha256(store.shard_dir / f["name"]) == f["sha256"]
"""


def make(store: Path, rows: int, dim: int, shard: int) -> None:
    from imgfeat.outputs.store import FeatureStore

    fs = FeatureStore(store).open({**IDENTITY, "dim": dim, "shard_size": shard})
    rng = np.random.default_rng(0)
    for j, s in enumerate(range(0, rows, shard)):
        n = min(shard, rows - s)
        w = fs.shard_writer(j)
        w.n_inputs = n
        w.write([f"img{i:09d}" for i in range(s, s + n)], [f"/photos/{i:09d}.jpg" for i in range(s, s + n)],
                rng.standard_normal((n, dim), dtype=np.float32))
        w.commit()
    fs.refresh_manifest(total_inputs=rows)


def drop_caches() -> bool:
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--shard-size", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=3, help="runs of each row (the median is shown)")
    ap.add_argument("--workdir", default=None, help="where the store is written (default: a temporary folder)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="imgfeat-verify-", dir=args.workdir) as tmp:
        work = Path(tmp)
        store = work / "store"
        make(store, args.rows, args.dim, args.shard_size)
        gb = sum(p.stat().st_size for p in (store / "shards").iterdir()) / 1e9
        py = sys.executable
        fresh = {**os.environ, "IMGFEAT_CACHE": str(work / "cache-never-checked")}
        rows = []

        def run(label: str, argv, env=None, cold=False):
            walls, peaks = [], []
            for _ in range(args.repeat):  # the median of the runs: one busy moment does not make the row
                if cold and not drop_caches():
                    rows.append((label, None, None))
                    return
                if env is not None:
                    shutil.rmtree(env["IMGFEAT_CACHE"], ignore_errors=True)
                old = dict(os.environ)
                os.environ.update(env or {})
                try:
                    wall, peak, _ = measured(argv)
                finally:
                    os.environ.clear()
                    os.environ.update(old)
                walls.append(wall)
                peaks.append(peak)
            rows.append((label, float(np.median(walls)), max(peaks)))

        for cold in (False, True):
            where = "page cache dropped" if cold else "page cache warm"
            if not cold:
                measured([py, "-c", READ, str(store), "none"])  # warm it
            run(f"full read, no check (baseline), {where}", [py, "-c", READ, str(store), "none"], cold=cold)
            run(f"full read, first check (xxh3 of every file), {where}", [py, "-c", READ, str(store), "check"],
                env=fresh, cold=cold)
            run(f"full read, check remembered (a stat a file), {where}", [py, "-c", READ, str(store), "check"],
                cold=cold)
            run(f"imgfeat info --full (xxh3), {where}", [py, "-m", "imgfeat", "info", str(store), "--full"],
                cold=cold)
            run(f"sha256 of every file (info before), {where}", [py, "-c", SHA, str(store)], cold=cold)
        print(f"{args.rows:,} x {args.dim} float32 store, {gb:.2f} GB in {-(-args.rows // args.shard_size)} shards; "
              f"{os.cpu_count()} cores")
        print(f"| read (median of {args.repeat}) | wall s | x baseline | peak RssAnon MB |")
        print("|---|---:|---:|---:|")
        base = {}
        for label, wall, peak in rows:
            if wall is None:
                print(f"| {label} | not measured (drop_caches needs root) | | |")
                continue
            where = label.rsplit(", ", 1)[1]
            base.setdefault(where, wall)
            print(f"| {label} | {wall:.2f} | {wall / base[where]:.2f} | {peak:.0f} |")


if __name__ == "__main__":
    main()
