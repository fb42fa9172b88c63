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
from typing import TYPE_CHECKING, Optional, Sequence

import numpy as np

from ..data.sources import Source, fingerprint
from ..errors import ImgfeatError
from ..files import commit, create_atomic, partial_path, write_atomic, writer_tag
from ..options import Job, UpdatePart, available_cores
from ..outputs.store import FeatureStore
from .result import ExtractResult

if TYPE_CHECKING:
    from ..options import ExtractOptions
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
    # a repair (see ``prepare``): the damaged shards re-extracted each as one shard of the plan, in this order,
    # ahead of its other shards; those with nothing left to extract (dropped); those whose inventory is lost
    repair: list = field(default_factory=list)
    emptied: list = field(default_factory=list)
    lost: list = field(default_factory=list)
    sizes: tuple = ()  # the record counts of the plan's repair shards (ShardPlan.sizes)
    repaired: int = 0  # records re-extracted in place of damaged shards
    dropped: int = 0  # inputs of damaged shards whose images are gone from the input

    def counts(self) -> dict:
        counts = {"added": self.added, "changed": self.changed, "removed": self.removed, "unchanged": self.unchanged,
                  "duplicates": self.duplicates, "kept": self.kept, "converted": self.converted}
        shards = len(self.repair) + len(self.emptied) + len(self.lost)
        if shards:  # a run that healed damaged shards says so
            counts.update(repaired=self.repaired, dropped=self.dropped, shards_repaired=shards)
        return counts

    def repairs(self) -> dict:
        """{damaged shard: the plan's shard that replaces it, or None where nothing of it is left}."""
        return {**{s: self.base + i for i, s in enumerate(self.repair)}, **{s: None for s in self.emptied}}

    def done_of(self, done) -> list[int]:
        """The plan's shards among ``done`` (a resumed plan's finished part)."""
        return [k for k in done if self.base <= k < self.base + self.shards]

    @property
    def nothing_to_do(self) -> bool:
        return self.pending == 0 and not self.dead and not self.emptied and not self.lost


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


def recipe(job: Job) -> dict:
    """The extract options that make this store's vectors again from its input, as ``ExtractOptions`` fields:
    recorded in the manifest (``extract``), what ``imgfeat repair`` runs. Paths are made absolute; an input that is
    not a path (a Python list) is None, and a repair asks for ``--data``."""
    data = job.input.data
    data = (os.path.abspath(data) if os.path.exists(data) else data) if isinstance(data, (str, os.PathLike)) else None
    m, e, d = job.model, job.execution, job.decode
    return {"data": None if data is None else str(data), "image_column": job.input.image_column,
            "id_column": job.input.id_column, "start": job.input.start, "stop": job.input.stop, "model": m.model,
            "layer": m.layer, "pool": m.pool, "weights": os.path.abspath(m.weights) if m.weights else None,
            "random_weights": m.random_weights, "relu": job.post.relu, "l2": job.post.l2, "dtype": job.post.dtype,
            "precision": e.precision, "backend": e.backend, "device": e.device, "batch_size": e.batch_size,
            "max_pixels": d.max_pixels, "min_fidelity": job.check.min_fidelity, "calibrate": job.check.calibrate,
            "shard_size": job.update.shard_size}


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
         memory_limit: str = DIFF_MEMORY, segments: Optional[list] = None) -> tuple[Update, np.ndarray]:
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
            b for t in store.iter_inventory(segments) for b in t.cast(schema).to_batches()))
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
    store: beyond PRUNE_SHARE of its inputs, a removal needs ``--prune``. The inputs of damaged shards whose images
    are gone too do not count: nothing readable of them is lost."""
    removed = upd.removed - upd.dropped
    if prune or removed <= PRUNE_FLOOR or removed <= PRUNE_SHARE * live:
        return
    raise ImgfeatError(
        f"this run would remove {removed:,} of the store's {live:,} inputs ({removed / max(live, 1):.0%}): "
        f"their ids are no longer in the input. If the input is only partly there (an unmounted drive, a network "
        f"share that timed out), fix that and rerun; if they were really deleted, rerun with --prune; to add new "
        f"images without removing any, use --append")


# ----------------------------------------------------------------------------- plan
def _digest(plan, dead: dict, generation: int, repair: tuple = ((), (), ())) -> str:
    """What the plan will do: its records' ids and fingerprints (hashed as written), the dead inputs and the
    shards it repairs."""
    h = plan if plan is not None else hashlib.sha256()
    h.update(f"g{generation}\n".encode())
    if any(repair):
        h.update(f"repair {list(repair[0])} emptied {list(repair[1])} lost {list(repair[2])}\n".encode())
    for s in sorted(dead):
        h.update(f"dead {s}:".encode() + np.asarray(dead[s], np.int64).tobytes())
    return h.hexdigest()


def write_plan(listing: Path, positions: np.ndarray, path: Path, shard_size: int, groups: Sequence = ()):
    """The listing's rows at ``positions`` (sorted), one row group per shard, after ``groups`` (a repair's tables
    of listing rows, each a shard of its own); returns a sha256 of the plan's ids and fingerprints (streamed: a
    first run of 100M images never holds them in Python)."""
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
        for group in groups:
            for i, f in zip(group.column("id").to_pylist(), group.column("fp").to_pylist()):
                digest.update(f"{i}\t{f}\n".encode())
            writer.write_table(group, row_group_size=max(1, group.num_rows))
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
    lock, except ``--shard I/N`` parts, which share one plan and never drop another's work.

    A store heals here: every published file is checked (``outputs.store.integrity``: once per file state), and
    each damaged shard is re-extracted from its images. Its live inputs (its inventory, less its dead inputs and
    what this diff finds changed or removed) are found by id in the listing and become one shard of the plan, ahead
    of the new and changed records, which replaces the damaged one in place when the plan is published: the store
    reads in the same order as before, every vector made again from its image. Inputs whose images are gone from
    the input are dropped, counted. A shard whose inventory itself is damaged cannot say what it held: it is left
    out of the diff, so its inputs still in the input are extracted as new, in its place."""
    folder = store.update_dir
    folder.mkdir(parents=True, exist_ok=True)
    upd = Update()
    upd.converted = store.converted  # a store written before generations, converted when the writer opened it
    listing = folder / f"input.{writer_tag()}.parquet"
    try:
        write_listing(source, listing, plan.shard_size)
        damage = store.damage()
        lost = sorted({d.shard for d in damage if d.inventory_lost})
        damaged = sorted({d.shard for d in damage} - set(lost))
        for d in damage:
            log.warning("%s %s: shard %06d is re-extracted from its images", store.shard_dir / d.name, d.what,
                        d.shard)
        segments = [seg for seg in store.segments() if seg["shard"] not in lost]
        found, positions = diff(store, listing, append=plan.append, segments=segments)
        found.converted = upd.converted
        upd = found
        upd.lost = lost
        groups = _repair_groups(store, listing, damaged, upd) if damaged else []
        check_removals(upd, store.live_inputs(), plan.prune)
        generation = store.generation or 0
        plan_path = folder / "plan.parquet"
        meta_path = folder / "plan.json"
        regular = len(positions)
        upd.pending = regular + upd.repaired
        if upd.pending:
            fresh = folder / f"plan.{writer_tag()}.parquet"
            plan_hash = write_plan(listing, positions, fresh, plan.shard_size, groups)
        else:
            fresh, plan_hash = None, None
        upd.digest = _digest(plan_hash, upd.dead, generation, (upd.repair, upd.emptied, upd.lost))
        upd.shards = len(upd.sizes) + -(-regular // plan.shard_size)
        held = _read_json(meta_path)
        if held is not None and held.get("digest") == upd.digest and plan_path.is_file() == bool(upd.pending):
            upd.base = held["base"]  # the same work as an interrupted run: resume it
            if fresh is not None:
                fresh.unlink(missing_ok=True)
            _redo_damaged(store, upd)
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
                    "generation": generation, "counts": upd.counts(), "repair": upd.repair, "lost": upd.lost,
                    "emptied": upd.emptied, "sizes": list(upd.sizes)}
            if part:
                if not create_atomic(meta_path, json.dumps(meta).encode()):
                    return prepare(plan, source, store, part=part)  # another part froze it first: compare again
            else:
                write_atomic(meta_path, json.dumps(meta).encode())
        upd.plan = str(plan_path) if upd.pending else None
        return upd
    finally:
        listing.unlink(missing_ok=True)


def _redo_damaged(store: FeatureStore, upd: Update) -> None:
    """The resumed plan's done shards that are damaged since (a file or the marker itself) are removed, so the run
    extracts them again instead of publishing them."""
    from ..outputs.store import StoreDamagedError
    from ..outputs.store.layout import segment_of

    for shard in upd.done_of(store.done_shards()):
        try:
            found = store.damage(segments=[segment_of(store.read_marker(shard))])
            what = f"{found[0].name} {found[0].what}" if found else None
        except StoreDamagedError as exc:
            what = str(exc).split(":")[0] + " is damaged"
        if what:
            log.warning("%s: shard %06d of the interrupted run is extracted again", what, shard)
            store.remove_shard_files(shard)


def _repair_groups(store: FeatureStore, listing: Path, damaged: list, upd: Update) -> list:
    """For each damaged shard (whose inventory is sound), its live inputs that this update keeps as they are, as
    listing rows in the shard's own order: the records that re-extract it. Sets ``upd``'s repair fields."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    by_shard = {seg["shard"]: seg for seg in store.segments()}
    wanted = {}
    for shard in damaged:
        inv = store.inputs_table(shard)
        live = np.setdiff1d(np.arange(inv.num_rows), store.dead_inputs(by_shard[shard]))
        keep = np.setdiff1d(live, upd.dead.get(shard, np.zeros(0, np.int64)))  # changed ones are in the plan already
        wanted[shard] = (inv.column("id").take(pa.array(live)).to_pylist(), set(keep.tolist()), live)
    value_set = pa.array([i for ids, _, _ in wanted.values() for i in ids], pa.string())
    rows: dict = {}
    pf = pq.ParquetFile(listing)
    for g in range(pf.num_row_groups):  # a row group at a time: bounded memory whatever the input's size
        part = pf.read_row_group(g)
        part = part.filter(pc.is_in(part.column("id"), value_set=value_set))
        for i, row in zip(part.column("id").to_pylist(), part.to_pylist()):
            rows.setdefault(i, row)  # an id repeated in the input keeps its first record, as the diff does
    groups = []
    for shard, (ids, keep, live) in wanted.items():
        records = [rows[i] for i, pos in zip(ids, live.tolist()) if pos in keep and i in rows]
        upd.dropped += sum(1 for i in ids if i not in rows)
        if records:
            groups.append(pa.Table.from_pylist(records, schema=_schema()))
            upd.repair.append(shard)
        else:
            upd.emptied.append(shard)
    upd.sizes = tuple(g.num_rows for g in groups)
    upd.repaired = sum(upd.sizes)
    return groups


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
    manifest = store.publish_update(upd.dead, range(upd.base, upd.base + upd.shards), upd.counts(),
                                    repairs=upd.repairs(), lost=upd.lost)
    for name in ("plan.json", "plan.parquet"):
        (store.update_dir / name).unlink(missing_ok=True)
    return manifest


def finish(out, store: FeatureStore, upd: Update, pipeline: Optional[Pipeline],
           result: Optional[ExtractResult], cheap: Optional[dict] = None,
           job: Optional[Job] = None) -> ExtractResult:
    """Publish the update once every shard of its plan is done (the last ``--shard`` part does it)."""
    published = plan_done(store, upd)
    if published and not upd.nothing_to_do:
        publish(store, upd)
    if published and cheap is not None and store.manifest.get("options") != cheap:
        store.annotate("options", cheap)
    if published and job is not None and not job.update.append:
        made = recipe(job)  # how to make its vectors again: what `imgfeat repair` runs, on the backend that ran
        used = (pipeline.report.get("backend") if pipeline is not None else None) or \
            (store.manifest.get("extract") or {}).get("backend")
        if made["backend"] == "auto" and used in ("torch", "onnx", "openvino"):
            made["backend"] = used
        if store.manifest.get("extract") != made:
            store.annotate("extract", made)
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


def repair_options(store: FeatureStore, data: Optional[str], out) -> "ExtractOptions":
    """The extract that repairs ``store``: the options its last run recorded (``recipe``), or for a store written
    before they were, what its manifest says of its vectors and input; ``data`` where the input moved."""
    import dataclasses

    from ..options import ExtractOptions

    m = store.manifest
    recipe = dict(m.get("extract") or {})
    if not recipe:
        recipe = {k: m.get(k) for k in ("model", "layer", "pool", "relu", "l2", "dtype", "precision", "start", "stop",
                                        "shard_size") if m.get(k) is not None}
        recipe["random_weights"] = m.get("weights_source") == "random"
        if m.get("weights_source") == "file":
            raise ImgfeatError(f"{out} was made with --weights {m.get('weights_file')} before stores recorded where "
                               "it lies: rerun the extract command that made the store, which repairs it")
        kind, _, where = str(m.get("input") or "").partition(" ")
        recipe["data"] = where if kind in ("folder", "TSV", "zip", "tar") else None
    if data is not None:
        recipe["data"] = data
    if not recipe.get("data"):
        raise ImgfeatError(f"{out} does not record a path to the images it was made from (input: {m.get('input')}): "
                           "give --data, the input it was extracted from")
    names = {f.name for f in dataclasses.fields(ExtractOptions)}
    return ExtractOptions(**{k: v for k, v in recipe.items() if k in names}, out=str(out), format="store")
