"""``imgfeat export STORE --to lance`` (issue 32) against plain pylance writing the same rows in one call.

    python benchmarks/lance_export.py                  # 1M x 512 float32
    python benchmarks/lance_export.py --n 100000

A store of ``--n`` generated unit vectors is written with the project's own shard writer; then, each in a fresh
process (wall time and peak RssAnon over the process tree, sampled every 50 ms):

1. plain pylance: the store's ids, paths and vectors read into one Arrow table, ``lance.write_dataset`` in one call
   (the baseline: no primary key, no identity, no way to follow the store);
2. ``imgfeat export --to lance`` of the whole store into a new dataset;
3. the store gains 1% new rows (a generation appended) and the same command brings the dataset to it;
4. the same command again, with nothing to change.

Prints a Markdown table with each run's rate and its ratio to the baseline.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scale import measured  # noqa: E402

IDENTITY = dict(model="generated", layer=None, pool=None, weights="0" * 16, preprocess={}, dtype="float32",
                relu=False, l2=True, precision="fp32", input="generated", start=0, stop=None)
SHARD = 100_000

BASELINE = """
import sys, lance, numpy as np, pyarrow as pa
from imgfeat.outputs.store import FeatureStore
table, X = FeatureStore(sys.argv[1]).load_columns(("id", "path"))
flat = pa.array(np.asarray(X[:]).reshape(-1))
table = table.append_column("vector", pa.FixedSizeListArray.from_arrays(flat, X.shape[1]))
lance.write_dataset(table, sys.argv[2])
"""


def append(store: Path, start: int, n: int, dim: int) -> None:
    from imgfeat.outputs.store import FeatureStore

    fs = FeatureStore(store)
    fs = fs if (store / "manifest.json").is_file() else fs.open({**IDENTITY, "dim": dim, "shard_size": SHARD})
    rng = np.random.default_rng(start)
    first = fs.next_shard()
    for j, s in enumerate(range(start, start + n, SHARD)):
        rows = min(SHARD, start + n - s)
        X = rng.standard_normal((rows, dim)).astype(np.float32)
        X /= np.linalg.norm(X, axis=1, keepdims=True)
        w = fs.shard_writer(first + j)
        w.n_inputs = rows
        w.write([f"img{i:09d}" for i in range(s, s + rows)], [f"/photos/{i:09d}.jpg" for i in range(s, s + rows)], X)
        w.commit()
    fs.refresh_manifest(total_inputs=start + n)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=512)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="imgfeat-lance-") as tmp:
        work = Path(tmp)
        store = work / "store"
        append(store, 0, args.n, args.dim)
        export = [sys.executable, "-m", "imgfeat", "export", str(store), str(work / "ds.lance"), "--to", "lance"]
        runs = [("plain pylance, one write_dataset call (baseline)", args.n,
                 measured([sys.executable, "-c", BASELINE, str(store), str(work / "plain.lance")]))]
        runs.append(("imgfeat export --to lance, new dataset", args.n, measured(export)))
        added = args.n // 100
        append(store, args.n, added, args.dim)
        runs.append((f"imgfeat export --to lance after +{added:,} rows (1%)", added, measured(export)))
        runs.append(("imgfeat export --to lance, nothing changed", 0, measured(export)))
        shutil.rmtree(store)
    base = runs[0][2][0]
    print(f"\n{args.n:,} x {args.dim} float32 vectors\n")
    print("| run | rows written | wall | rows/s | wall vs baseline | peak RssAnon |\n|---|---|---|---|---|---|")
    for name, rows, (wall, peak, _) in runs:
        rate = f"{rows / wall:,.0f}" if rows else "-"
        print(f"| {name} | {rows:,} | {wall:.1f} s | {rate} | x{wall / base:.2f} | {peak:,.0f} MB |")


if __name__ == "__main__":
    main()
