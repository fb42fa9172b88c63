"""A store update's diff (input listing against the store's inventory): ``engines.update.diff`` (one DuckDB
out-of-core join) against the code it replaced (issue 30), copied below as the baseline: one Arrow join in memory up
to 2M records a side, a grace hash join on disk above. Each method runs in a fresh process, in the same run.

    python benchmarks/diff_join.py --rows 1000000 5000000

A synthetic collection of N records (ids like ``folder/000001234.jpg``, a fingerprint each), written as the listing
and inventory Parquet files ``engines.update`` reads: against the store, 1% of the input is new, 1% changed, 1% of
the store removed, and 0.1% of the input repeats an id (the first occurrence counts). Every method must give the
same counts, positions to extract and dead (shard, position) pairs (checked). Peak anonymous memory (RssAnon) of
the process is sampled every 20 ms.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from imgfeat.engines.update import Update
from imgfeat.files import writer_tag
from imgfeat.outputs.store import empty_inventory

SHARD = 10_000


# ----------------------------------------------------------------------------- the previous code (baseline)
PARTITION_RECORDS = 2_000_000  # above this many records a side, the diff runs partition by partition


def old_diff(store, listing: Path, append: bool = False,
             partition_records: int = PARTITION_RECORDS) -> tuple[Update, np.ndarray]:
    """The difference between the listing and the store's published state: the Update's counts and dead
    inputs, and the listing positions to extract (sorted: input order). Up to ``partition_records`` records a
    side it is one Arrow join in memory (about 0.6 KB per record at its peak); above, both sides are first
    split by a hash of the id into partitions of about that size on disk and joined one partition at a time,
    so memory stays bounded whatever the collection's size (a grace hash join)."""
    import pyarrow.parquet as pq

    n_input = pq.ParquetFile(listing).metadata.num_rows
    parts = -(-max(n_input, store.live_inputs()) // partition_records)
    upd = Update(inputs=n_input)
    if parts <= 1:
        inp = _listing_table(listing)
        pending, dead = _diff_tables(inp, store.inventory(), append, upd)
    else:
        pending, dead = _diff_partitioned(store, listing, append, upd, parts)
    order = np.lexsort((dead[1], dead[0]))
    ds, dp = dead[0][order], dead[1][order]
    for s in np.unique(ds):
        upd.dead[int(s)] = dp[ds == s]
    pending = np.sort(pending)
    upd.pending = len(pending)
    if upd.duplicates:
        pass
    return upd, pending


def _listing_table(listing: Path, group: int = 0, pf=None, start: int = 0):
    """(id, fp, pos) of the whole listing (pf None) or of one row group, whose first row is ``start``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    t = pq.read_table(listing, columns=["id", "fp"]) if pf is None else pf.read_row_group(group, columns=["id", "fp"])
    return pa.table({"id": t.column("id"), "fp": t.column("fp"),
                     "pos": pa.array(np.arange(start, start + t.num_rows, dtype=np.int64))})


def _id_partition(ids, parts: int) -> np.ndarray:
    """A partition number per id from a hash of its UTF-8 bytes (vectorised over the Arrow buffers)."""
    import pyarrow as pa

    arr = ids.combine_chunks() if isinstance(ids, pa.ChunkedArray) else ids
    arr = arr.cast(pa.large_string()) if arr.type != pa.large_string() else arr
    n = len(arr)
    if n == 0:
        return np.zeros(0, np.int64)
    offsets = np.frombuffer(arr.buffers()[1], np.int64)[arr.offset:arr.offset + n + 1]
    data = np.frombuffer(arr.buffers()[2], np.uint8) if arr.buffers()[2] is not None else np.zeros(0, np.uint8)
    lo, hi = int(offsets[0]), int(offsets[-1])
    data = data[lo:hi].astype(np.uint64)
    starts = offsets[:-1] - lo
    lengths = np.diff(offsets)
    within = np.arange(hi - lo, dtype=np.int64) - np.repeat(starts, lengths)
    weights = np.random.default_rng(20).integers(1, 2**61, 64, dtype=np.uint64) | np.uint64(1)
    mixed = (data + np.uint64(1)) * weights[within % 64] + (within // 64).astype(np.uint64)
    sums = np.zeros(n, np.uint64)
    nonempty = lengths > 0
    if nonempty.any():
        sums[nonempty] = np.add.reduceat(mixed, starts[nonempty])
    sums ^= sums >> np.uint64(29)
    return (sums % np.uint64(parts)).astype(np.int64)


def _spill(tables, parts: int, folder: Path, name: str) -> list[Path]:
    import pyarrow.parquet as pq

    paths = [folder / f"{name}.{p:04d}.{writer_tag()}.parquet" for p in range(parts)]
    writers: list = [None] * parts
    try:
        for t in tables:
            part = _id_partition(t.column("id"), parts)
            for p in np.unique(part):
                sel = t.filter(part == p)
                if writers[p] is None:
                    writers[p] = pq.ParquetWriter(paths[p], sel.schema)
                writers[p].write_table(sel)
    finally:
        for w in writers:
            if w is not None:
                w.close()
    return paths


def _diff_partitioned(store, listing: Path, append: bool, upd: Update,
                      parts: int) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = listing.parent
    pf = pq.ParquetFile(listing)
    starts = np.cumsum([0] + [pf.metadata.row_group(g).num_rows for g in range(pf.num_row_groups)])
    inputs = _spill((_listing_table(listing, g, pf, int(starts[g])) for g in range(pf.num_row_groups)), parts,
                    folder, "in")
    stored = _spill(store.iter_inventory(), parts, folder, "st")
    empty_in = pa.table({"id": pa.array([], pa.string()), "fp": pa.array([], pa.string()),
                         "pos": pa.array([], pa.int64())})
    pending, dead_s, dead_p = [], [], []
    try:
        for p in range(parts):
            inp = pq.read_table(inputs[p]) if inputs[p].is_file() else empty_in
            st = pq.read_table(stored[p]) if stored[p].is_file() else empty_inventory()
            got, (ds, dp) = _diff_tables(inp, st, append, upd)
            pending.append(got)
            dead_s.append(ds)
            dead_p.append(dp)
    finally:
        for path in inputs + stored:
            path.unlink(missing_ok=True)
    return np.concatenate(pending), (np.concatenate(dead_s), np.concatenate(dead_p))


def _diff_tables(inp, inv, append: bool, upd: Update) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """One join of input (id, fp, pos) with inventory (id, sfp, shard, spos): adds to ``upd``'s counts; returns
    the positions to extract (unsorted) and the dead (shard, position) pairs."""
    import pyarrow.compute as pc

    n = inp.num_rows
    firsts = inp.group_by("id", use_threads=False).aggregate([("pos", "min")])
    if firsts.num_rows < n:  # duplicate ids: the first occurrence is the record
        keep = firsts.column("pos_min")
        upd.duplicates += n - len(keep)
        inp = inp.filter(pc.is_in(inp.column("pos"), value_set=keep))
    if inp.column("id").type != inv.column("id").type:
        inv = inv.set_column(0, "id", inv.column("id").cast(inp.column("id").type))
    joined = inp.join(inv, keys="id", join_type="full outer", use_threads=False)
    pos, shard = joined.column("pos"), joined.column("shard")
    in_input, in_store = pc.is_valid(pos), pc.is_valid(shard)
    both = pc.and_(in_input, in_store)
    fp, sfp = pc.fill_null(joined.column("fp"), ""), pc.fill_null(joined.column("sfp"), "")
    differs = pc.and_(pc.and_(pc.not_equal(fp, ""), pc.not_equal(sfp, "")), pc.not_equal(fp, sfp))
    changed = pc.and_(both, differs)
    added = pc.and_(in_input, pc.invert(in_store))
    removed = pc.and_(in_store, pc.invert(in_input))
    n_changed = int(pc.sum(changed).as_py() or 0)
    upd.added += int(pc.sum(added).as_py() or 0)
    upd.changed += n_changed
    upd.unchanged += int(pc.sum(both).as_py() or 0) - n_changed
    n_removed = int(pc.sum(removed).as_py() or 0)
    if append:
        upd.kept += n_removed
    else:
        upd.removed += n_removed
    pending = pc.filter(pos, pc.or_(added, changed)).to_numpy().astype(np.int64)
    dead = joined.filter(pc.or_(changed, removed) if not append else changed).select(["shard", "spos"])
    return pending, (dead.column("shard").to_numpy().astype(np.int64),
                     dead.column("spos").to_numpy().astype(np.int64))


# ----------------------------------------------------------------------------- the benchmark


def make(rows: int, folder: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    n_new, n_changed, n_removed, n_dup = rows // 100, rows // 100, rows // 100, rows // 1000
    stored = np.arange(rows - n_new + n_removed)  # ids 0.. in the store; the input drops n_removed, adds n_new
    removed = set(rng.choice(len(stored), n_removed, replace=False).tolist())
    inp_ids = np.array([i for i in range(len(stored)) if i not in removed] + list(range(len(stored), len(stored) + n_new)))
    dup = rng.choice(len(inp_ids), n_dup, replace=False)
    inp_ids = np.insert(inp_ids, np.sort(rng.choice(len(inp_ids), n_dup)), inp_ids[dup])
    changed = set(rng.choice(len(stored), n_changed, replace=False).tolist())

    def ids(a):
        return pa.array([f"folder/{i:09d}.jpg" for i in a.tolist()])

    fps = np.array([f"{i:x}-{'b' if i in changed else 'a'}" for i in inp_ids.tolist()])
    with pq.ParquetWriter(folder / "listing.parquet", pa.schema([("id", pa.string()), ("fp", pa.string())])) as w:
        for s in range(0, len(inp_ids), SHARD):
            w.write_table(pa.table({"id": ids(inp_ids[s:s + SHARD]), "fp": pa.array(fps[s:s + SHARD])}))
    schema = pa.schema([("id", pa.string()), ("sfp", pa.string()), ("shard", pa.int64()), ("spos", pa.int64())])
    with pq.ParquetWriter(folder / "inventory.parquet", schema) as w:
        for s in range(0, len(stored), SHARD):
            part = stored[s:s + SHARD]
            w.write_table(pa.table({"id": ids(part), "sfp": pa.array([f"{i:x}-a" for i in part.tolist()]),
                                    "shard": pa.array(np.full(len(part), s // SHARD, np.int64)),
                                    "spos": pa.array(np.arange(len(part), dtype=np.int64))}))


class InventoryStore:
    """What ``update.diff`` reads of a store, from the inventory file (block by block, or whole)."""

    def __init__(self, path: Path) -> None:
        import pyarrow.parquet as pq

        self.pf = pq.ParquetFile(path)

    def live_inputs(self) -> int:
        return self.pf.metadata.num_rows

    def iter_inventory(self):
        for g in range(self.pf.num_row_groups):
            yield self.pf.read_row_group(g)

    def inventory(self):
        return self.pf.read()


def run_imgfeat(folder: Path, method: str) -> dict:
    from imgfeat.engines import update

    store = InventoryStore(folder / "inventory.parquet")
    if method == "duckdb":
        upd, pending = update.diff(store, folder / "listing.parquet")
    else:
        records = 1_000_000 if method == "grace" else 10**12
        upd, pending = old_diff(store, folder / "listing.parquet", partition_records=records)
    dead = sorted((s, int(p)) for s, ps in upd.dead.items() for p in ps.tolist())
    return {"counts": [upd.added, upd.changed, upd.removed, upd.unchanged, upd.duplicates],
            "pending": pending.tolist(), "dead": dead}


def child(method: str, folder: Path, out: Path) -> None:
    t = time.perf_counter()
    got = run_imgfeat(folder, method)
    got["seconds"] = time.perf_counter() - t
    out.write_text(json.dumps(got))


def measured(method: str, folder: Path) -> tuple[dict, float]:
    """The method's result and its peak RssAnon in MB (the child process, sampled every 20 ms)."""
    out = folder / f"{method}.json"
    proc = subprocess.Popen([sys.executable, __file__, "--child", method, str(folder), str(out)])
    peak = 0.0
    while proc.poll() is None:
        try:
            for line in open(f"/proc/{proc.pid}/status"):
                if line.startswith("RssAnon:"):
                    peak = max(peak, int(line.split()[1]) / 1024)
        except OSError:
            pass
        time.sleep(0.02)
    if proc.returncode != 0:
        raise SystemExit(f"{method} failed")
    return json.loads(out.read_text()), peak


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[1_000_000])
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.child[0], Path(args.child[1]), Path(args.child[2]))
    print("| records | method | seconds | ratio | peak RssAnon MB | same result |\n|---|---|---|---|---|---|")
    for rows in args.rows:
        with tempfile.TemporaryDirectory(prefix="imgfeat-diff-") as tmp:
            folder = Path(tmp)
            make(rows, folder)
            results = {}
            for method in ("arrow", "grace", "duckdb"):
                results[method] = measured(method, folder)
            base, _ = results["grace"]
            for method, (got, peak) in results.items():
                same = all(got[k] == base[k] for k in ("counts", "pending", "dead"))
                label = {"arrow": "before: one Arrow join in memory", "grace": "before: grace hash join (1M a partition)",
                         "duckdb": "now: `update.diff`, DuckDB (memory limit 1GB)"}[method]
                print(f"| {rows:,} | {label} | {got['seconds']:.1f} | {got['seconds'] / base['seconds']:.2f} | "
                      f"{peak:,.0f} | {'yes' if same else 'NO'} |", flush=True)


if __name__ == "__main__":
    main()
