"""A feature store that follows its input: the difference between the input and the store's published state,
frozen as a plan, extracted into new shards, then published as the next generation.

One operation for a first run, a resumed run and an update after the input changed:

1. **Listing.** The input is read once, lazily, into ``update/input.*.parquet`` (id, path, offset, size,
   error, and a fingerprint: size and mtime of a file, plus offset and size of an archive member), one row
   group per shard.
2. **Diff.** The listing's ids and fingerprints are joined (Arrow, columnar) with the store's inventory (each
   published shard's ``inputs.parquet`` minus its dead inputs): ids only in the input are *added*, ids whose
   fingerprint changed are *changed*, ids only in the store are *removed* (never with ``--append``; refused
   beyond ``PRUNE_SHARE`` of the store without ``--prune``), the rest *unchanged* and never decoded again.
   Duplicate ids in the input keep their first occurrence.
3. **Plan.** The added and changed records, in input order, are written to ``update/plan.parquet`` (one row
   group per shard, shards numbered after every existing one) with ``update/plan.json`` (the generation it
   is based on, a digest of the work, the dead inputs it will record). A rerun that computes the same digest
   resumes the plan (done shards are skipped); a plan made for another state of the input is dropped with its
   unpublished shards. ``--shard I/N`` parts share one plan.
4. **Publish.** When every shard of the plan is done, the superseded and removed inputs are recorded in new
   dead-inputs files and the manifest is replaced in one atomic step (``FeatureStore.publish``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import numpy as np

from ..data.sources import Source, fingerprint
from ..errors import ImgfeatError
from ..files import commit, create_atomic, partial_path, write_atomic, writer_tag
from ..options import Job, UpdatePart
from ..outputs.store import FeatureStore, empty_inventory
from .result import ExtractResult

if TYPE_CHECKING:
    from .pipeline import Pipeline

log = logging.getLogger(__name__)

PRUNE_SHARE = 0.10  # an update may remove at most this share of the store's inputs without --prune ...
PRUNE_FLOOR = 5  # ... unless it removes this many or fewer (a small folder may lose a photo)
LISTING_COLUMNS = ("id", "path", "offset", "size", "error", "fp")


def _schema():
    import pyarrow as pa

    return pa.schema([("id", pa.string()), ("path", pa.string()), ("offset", pa.int64()), ("size", pa.int64()),
                      ("error", pa.string()), ("fp", pa.string())])


@dataclass
class Update:
    """What a run will do to a store: the plan (None when there is nothing to extract) and the counts."""

    base: int = 0  # the plan's first shard
    shards: int = 0  # shards in the plan
    pending: int = 0  # records in the plan
    added: int = 0
    changed: int = 0
    removed: int = 0
    unchanged: int = 0
    duplicates: int = 0
    kept: int = 0  # with --append: ids of the store absent from the input, kept
    inputs: int = 0  # records in the input
    dead: dict = field(default_factory=dict)  # shard -> input positions superseded or removed
    plan: Optional[str] = None
    digest: str = ""
    converted: int = 0
    skipped: dict = field(default_factory=dict)  # files of the input that are not images, by extension

    def counts(self) -> dict:
        return {"added": self.added, "changed": self.changed, "removed": self.removed, "unchanged": self.unchanged,
                "duplicates": self.duplicates, "kept": self.kept, "converted": self.converted}

    def done_of(self, done) -> list[int]:
        """The plan's shards among ``done`` (a resumed plan's finished part)."""
        return [k for k in done if self.base <= k < self.base + self.shards]

    @property
    def nothing_to_do(self) -> bool:
        return self.pending == 0 and not self.dead


def cheap_identity(job: Job, source: Source) -> dict:
    """The options behind a store's identity, as given (no model is built to know them): a rerun that gives the
    same and finds nothing to extract never builds the model. Any difference builds it and compares the full
    identity (weights hash included)."""
    model, post = job.model, job.post
    return {"model": model.model, "layer": model.layer, "pool": model.pool, "relu": post.relu, "l2": post.l2,
            "dtype": post.dtype, "precision": job.execution.precision, "start": job.input.start,
            "input": None if job.update.append else source.describe(),  # --append: images from any input
            "stop": job.input.stop, "shard_size": job.update.shard_size, "random_weights": model.random_weights,
            "weights": _weights_stamp(model.weights)}


VECTOR_OPTIONS = ("model", "layer", "pool", "relu", "l2", "dtype", "precision", "random_weights", "weights")


def embeds_nothing(store: FeatureStore, upd: "Update", cheap: dict) -> bool:
    """Whether a run needs no model: nothing to embed (nothing new, or removals only) and the store's last run
    embedded its vectors as this one would (the input, its range, ``--append`` and the shard size say which
    images, not how they are embedded; any other difference builds the model to compare the full identity)."""
    recorded = store.manifest.get("options")
    return upd.pending == 0 and recorded is not None and all(recorded.get(k) == cheap.get(k) for k in VECTOR_OPTIONS)


def _weights_stamp(path: Optional[str]) -> Optional[str]:
    if path is None:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return os.path.abspath(path)
    return f"{os.path.abspath(path)}:{st.st_size}:{st.st_mtime_ns}"


# ----------------------------------------------------------------------------- listing
def write_listing(source: Source, path: Path, shard_size: int) -> int:
    """Stream the input's records with their fingerprints into a Parquet file, one row group per shard."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = _schema()
    tmp = partial_path(path, writer_tag())
    n = 0
    cols: dict[str, list] = {c: [] for c in LISTING_COLUMNS}

    def flush(writer) -> None:
        if cols["id"]:
            writer.write_table(pa.table({c: pa.array(cols[c], schema.field(c).type) for c in LISTING_COLUMNS}),
                               row_group_size=shard_size)
            for c in LISTING_COLUMNS:
                cols[c].clear()

    with pq.ParquetWriter(tmp, schema) as writer:
        for rec in source.records():
            cols["id"].append(rec.id)
            cols["path"].append(rec.path)
            cols["offset"].append(rec.offset)
            cols["size"].append(rec.size)
            cols["error"].append(rec.error)
            cols["fp"].append(fingerprint(rec))
            n += 1
            if len(cols["id"]) == shard_size:
                flush(writer)
        flush(writer)
    commit(tmp, path)
    return n


# ----------------------------------------------------------------------------- diff
PARTITION_RECORDS = 2_000_000  # above this many records a side, the diff runs partition by partition


def diff(store: FeatureStore, listing: Path, append: bool = False,
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
        log.warning("%d record(s) repeat an id seen earlier in the input and are skipped (the first is kept)",
                    upd.duplicates)
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


def _diff_partitioned(store: FeatureStore, listing: Path, append: bool, upd: Update,
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


def check_removals(upd: Update, live: int, prune: bool) -> None:
    """An input that suddenly reads as mostly gone (an unmounted drive, a share that timed out) must not wipe the
    store: beyond PRUNE_SHARE of its inputs, a removal needs ``--prune``."""
    if prune or upd.removed <= PRUNE_FLOOR or upd.removed <= PRUNE_SHARE * live:
        return
    raise ImgfeatError(
        f"this run would remove {upd.removed:,} of the store's {live:,} inputs ({upd.removed / max(live, 1):.0%}): "
        f"their ids are no longer in the input. If the input is only partly there (an unmounted drive, a network "
        f"share that timed out), fix that and rerun; if they were really deleted, rerun with --prune; to add new "
        f"images without removing any, use --append")


# ----------------------------------------------------------------------------- plan
def _digest(plan, dead: dict, generation: int) -> str:
    """What the plan will do: its records' ids and fingerprints (hashed as written) and the dead inputs."""
    h = plan if plan is not None else hashlib.sha256()
    h.update(f"g{generation}\n".encode())
    for s in sorted(dead):
        h.update(f"dead {s}:".encode() + np.asarray(dead[s], np.int64).tobytes())
    return h.hexdigest()


def write_plan(listing: Path, positions: np.ndarray, path: Path, shard_size: int):
    """The listing's rows at ``positions`` (sorted), one row group per shard; returns a sha256 of the plan's
    ids and fingerprints (streamed: a first run of 100M images never holds them in Python)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(listing)
    tmp = partial_path(path, writer_tag())
    digest = hashlib.sha256()
    buffered: list = []
    rows = 0

    def emit(writer, final: bool) -> None:
        nonlocal buffered, rows
        if not buffered:
            return
        table = pa.concat_tables(buffered)
        while table.num_rows >= shard_size or (final and table.num_rows):
            chunk, table = table.slice(0, shard_size), table.slice(shard_size)
            writer.write_table(chunk, row_group_size=shard_size)
        buffered, rows = ([table] if table.num_rows else []), table.num_rows

    with pq.ParquetWriter(tmp, _schema()) as writer:
        start = 0
        for g in range(pf.num_row_groups):
            size = pf.metadata.row_group(g).num_rows
            lo, hi = np.searchsorted(positions, [start, start + size])
            if hi > lo:
                group = pf.read_row_group(g).take(pa.array(positions[lo:hi] - start))
                for i, f in zip(group.column("id").to_pylist(), group.column("fp").to_pylist()):
                    digest.update(f"{i}\t{f}\n".encode())
                buffered.append(group)
                rows += group.num_rows
                if rows >= shard_size:
                    emit(writer, False)
            start += size
        emit(writer, True)
    commit(tmp, path)
    return digest


def prepare(plan: UpdatePart, source: Source, store: FeatureStore, *, part: bool = False) -> Update:
    """List the input, diff it against the store, and freeze (or resume) the plan. The caller holds the writer
    lock, except ``--shard I/N`` parts, which share one plan and never drop another's work."""
    folder = store.update_dir
    folder.mkdir(parents=True, exist_ok=True)
    upd = Update()
    if store.manifest and store.generation is None:  # a store written before generations: converted once
        upd.converted = store.convert_inputs()
        segs = store.segments()
        store.publish(segs, {"converted": True})
        log.info("converted %s to the updatable store format: its %d shard(s) are generation 1; their images are "
                 "taken as unchanged while their ids stay in the input", store.path, len(segs))
    listing = folder / f"input.{writer_tag()}.parquet"
    try:
        write_listing(source, listing, plan.shard_size)
        found, positions = diff(store, listing, append=plan.append)
        found.converted = upd.converted
        upd = found
        check_removals(upd, store.live_inputs(), plan.prune)
        generation = store.generation or 0
        plan_path = folder / "plan.parquet"
        meta_path = folder / "plan.json"
        if upd.pending:
            fresh = folder / f"plan.{writer_tag()}.parquet"
            plan_hash = write_plan(listing, positions, fresh, plan.shard_size)
        else:
            fresh, plan_hash = None, None
        upd.digest = _digest(plan_hash, upd.dead, generation)
        upd.shards = -(-upd.pending // plan.shard_size)
        held = _read_json(meta_path)
        if held is not None and held.get("digest") == upd.digest and plan_path.is_file() == bool(upd.pending):
            upd.base = held["base"]  # the same work as an interrupted run: resume it
            if fresh is not None:
                fresh.unlink(missing_ok=True)
        else:
            if held is not None and part:
                raise ImgfeatError(
                    f"{store.path} has an update plan for another state of the input (made by another part, or "
                    "before the input changed): run every --shard part again after the input stops changing")
            for shard in store.unpublished():  # an interrupted update of another input state: its work is dropped
                store.remove_shard_files(shard)
            meta_path.unlink(missing_ok=True)
            plan_path.unlink(missing_ok=True)
            upd.base = store.next_shard()
            if fresh is not None:
                os.replace(fresh, plan_path)
            meta = {"digest": upd.digest, "base": upd.base, "shards": upd.shards, "pending": upd.pending,
                    "generation": generation, "counts": upd.counts()}
            if part:
                if not create_atomic(meta_path, json.dumps(meta).encode()):
                    return prepare(plan, source, store, part=part)  # another part froze it first: compare again
            else:
                write_atomic(meta_path, json.dumps(meta).encode())
        upd.plan = str(plan_path) if upd.pending else None
        return upd
    finally:
        listing.unlink(missing_ok=True)


def _read_json(path: Path) -> Optional[dict]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def plan_done(store: FeatureStore, upd: Update) -> bool:
    return len(upd.done_of(store.done_shards())) == upd.shards


def publish(store: FeatureStore, upd: Update) -> dict:
    """Record the plan's shards and the dead inputs as the next generation (one store call, one atomic manifest
    replace), then drop the plan. Run once every shard of the plan is done."""
    manifest = store.publish_update(upd.dead, range(upd.base, upd.base + upd.shards), upd.counts())
    for name in ("plan.json", "plan.parquet"):
        (store.update_dir / name).unlink(missing_ok=True)
    return manifest


def finish(out, store: FeatureStore, upd: Update, pipeline: Optional[Pipeline],
           result: Optional[ExtractResult], cheap: Optional[dict] = None) -> ExtractResult:
    """Publish the update once every shard of its plan is done (the last ``--shard`` part does it)."""
    published = plan_done(store, upd)
    if published and not upd.nothing_to_do:
        publish(store, upd)
    if published and cheap is not None and store.manifest.get("options") != cheap:
        store.annotate("options", cheap)
    if result is None:
        result = ExtractResult(n_done=0, n_failed=0, seconds=0.0, dim=store.manifest.get("dim") or 0,
                               model=pipeline.spec.name if pipeline is not None else None,
                               backend=pipeline.report.get("backend", "") if pipeline is not None else "",
                               out=str(out), shards_written=0, shards_skipped=0)
    result.update, result.generation, result.published = upd.counts(), store.generation, published
    result.skipped = upd.skipped
    if published and store.manifest.get("skipped") != upd.skipped:
        store.annotate("skipped", upd.skipped)  # what the input held that is not an image, by extension
    return result
