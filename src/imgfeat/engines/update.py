"""A feature store that follows its input: the difference between the input and the store's published state,
frozen as a plan, extracted into new shards, then published as the next generation.

One operation for a first run, a resumed run and an update after the input changed:

1. **Listing.** The input is read once, lazily, into ``update/input.*.parquet`` (id, path, offset, size,
   error, and a fingerprint: size and mtime of a file, plus offset and size of an archive member), one row
   group per shard.
2. **Diff.** The listing's ids and fingerprints are joined (DuckDB, out of core) with the store's inventory (each
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
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import numpy as np

from ..data.sources import Source, fingerprint
from ..errors import ImgfeatError
from ..files import commit, create_atomic, partial_path, write_atomic, writer_tag
from ..options import Job, UpdatePart, available_cores
from ..outputs.store import FeatureStore
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
DIFF_MEMORY = "1GB"  # DuckDB's memory limit for the diff; beyond it the join spills to the update folder


def diff(store: FeatureStore, listing: Path, append: bool = False,
         memory_limit: str = DIFF_MEMORY) -> tuple[Update, np.ndarray]:
    """The difference between the listing and the store's published state: the Update's counts and dead
    inputs, and the listing positions to extract (sorted: input order). One DuckDB full outer join of the
    listing's Parquet file (id, fp, its row number) with the store's inventory (streamed to DuckDB as Arrow, shard
    by shard), out of core: within ``memory_limit`` whatever the collection's size, spilling to the update folder
    (``benchmarks/diff_join.py``: 6x faster than the grace hash join it replaced, at the same bounded memory).
    Only the answers come back to Python: the positions to extract and the dead (shard, position) pairs."""
    import duckdb
    import pyarrow as pa

    spill = listing.parent / f"spill.{writer_tag()}"
    con = duckdb.connect(config={"memory_limit": memory_limit, "threads": available_cores(),
                                 "temp_directory": str(spill), "preserve_insertion_order": False})
    try:
        schema = pa.schema([("id", pa.string()), ("sfp", pa.string()), ("shard", pa.int64()), ("spos", pa.int64())])
        inventory = pa.RecordBatchReader.from_batches(schema, (
            b for t in store.iter_inventory() for b in t.cast(schema).to_batches()))
        con.register("inventory", inventory)
        con.execute("""CREATE TEMP TABLE joined AS
            WITH input AS (SELECT id, arg_min(fp, file_row_number) AS fp, min(file_row_number) AS pos,
                                  count(*) AS n
                           FROM read_parquet(?, file_row_number = true) GROUP BY id)
            SELECT input.pos, input.n, s.shard, s.spos,
                   input.pos IS NOT NULL AND s.shard IS NOT NULL AND coalesce(input.fp, '') <> ''
                   AND coalesce(s.sfp, '') <> '' AND input.fp <> s.sfp AS changed
            FROM input FULL OUTER JOIN inventory s USING (id)""", [str(listing)])
        added, changed, removed, both, dups, n_input = con.execute("""SELECT
            count(*) FILTER (WHERE pos IS NOT NULL AND shard IS NULL), count(*) FILTER (WHERE changed),
            count(*) FILTER (WHERE pos IS NULL), count(*) FILTER (WHERE pos IS NOT NULL AND shard IS NOT NULL),
            coalesce(sum(n - 1), 0), coalesce(sum(n), 0) FROM joined""").fetchone()
        pending = con.execute("SELECT pos FROM joined WHERE (pos IS NOT NULL AND shard IS NULL) OR changed "
                              "ORDER BY pos").fetchnumpy()["pos"]
        dead = con.execute("SELECT shard, spos FROM joined WHERE changed" + ("" if append else " OR pos IS NULL")
                           + " ORDER BY shard, spos").fetchnumpy()
    finally:
        con.close()
        shutil.rmtree(spill, ignore_errors=True)
    upd = Update(inputs=int(n_input), added=int(added), changed=int(changed), unchanged=int(both) - int(changed),
                 duplicates=int(dups))
    if append:
        upd.kept = int(removed)
    else:
        upd.removed = int(removed)
    ds, dp = (np.asarray(dead[c], np.int64) for c in ("shard", "spos"))
    for s in np.unique(ds):
        upd.dead[int(s)] = dp[ds == s]
    pending = np.asarray(pending, np.int64)
    upd.pending = len(pending)
    if upd.duplicates:
        log.warning("%d record(s) repeat an id seen earlier in the input and are skipped (the first is kept)",
                    upd.duplicates)
    return upd, pending


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
    upd.converted = store.converted  # a store written before generations, converted when the writer opened it
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
