"""The feature store: a directory of fixed-size shards for jobs too large for one file.

    features/
      manifest.json              identity of the run + the shard list (refreshed after each run)
      shards/000012.npy          vectors of input records 12*S .. 13*S-1 that decoded
      shards/000012.ids.parquet  their ids and paths
      shards/000012.errors.tsv   id<TAB>path<TAB>reason of the records that did not
      shards/000012.done.json    row counts and sha256 of the three files, written LAST

A shard's files are written under temporary names and renamed; the done-marker goes last,
so after ``kill -9`` at any moment a shard is either complete (marker present, checksums
match) or absent and redone. Rerunning the same command skips done shards; a run whose
identity (model, layer, weights, preprocessing, input, shard size...) differs is refused.
Several writers (``--shard I/N``, Ray actors) may fill one store: each shard is written by
exactly one of them and the manifest's shard list is recomputed from the markers.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from contextlib import contextmanager
from typing import Iterator, Optional, Sequence

import numpy as np

from .._version import __version__
from ..errors import ImgfeatError
from ..files import commit, create_atomic, error_row, fsync_path, npy_header, partial_path, sha256, \
    stale_partials, write_atomic, writer_tag
from .identity import VectorIdentity, identity_keys

FORMAT = "imgfeat-store"
MANIFEST = "manifest.json"
# Fields that must match for a rerun to resume into an existing store: the vectors' identity and the job's scope.
IDENTITY = identity_keys()
DEFAULT_SHARD_SIZE = 10_000


def query_weights(manifest: dict, weights: Optional[str], random_weights: Optional[bool]) -> bool:
    """The store records how its weights were chosen; queries use the same unless told (the weights hash is
    checked either way). ``random_weights`` None: as recorded."""
    source = manifest.get("weights_source")
    if weights is not None and random_weights:
        raise ImgfeatError("give --weights FILE or --random-weights, not both")
    if weights is None and source == "file" and not random_weights:
        raise ImgfeatError(f"{manifest['model']} vectors of this store were extracted with --weights "
                           f"{manifest.get('weights_file') or 'FILE'}: pass the same --weights FILE to query it")
    if random_weights is None:
        return weights is None and source == "random"
    return bool(random_weights)


class StoreMismatchError(ImgfeatError):
    """The store was written by a different job."""


class StoreLockedError(ImgfeatError):
    """Another process is writing the store."""


LOCK = ".lock"


def _alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, TypeError, ValueError):
        return True
    return True


def is_store_path(path: str | os.PathLike) -> bool:
    """An output with no file extension (or an existing store directory) is a feature store."""
    p = Path(path)
    return str(path).endswith(("/", os.sep)) or (p / MANIFEST).is_file() or p.suffix == ""


class ShardWriter:
    """Streams one shard's vectors to a temporary .npy; ``commit`` makes the shard visible."""

    def __init__(self, store: "FeatureStore", index: int) -> None:
        self.store, self.index = store, index
        self.name = f"{index:06d}"
        folder = store.shard_dir
        for stale in stale_partials(folder, f"{self.name}."):  # left by a killed writer of this shard
            stale.unlink(missing_ok=True)
        tag = writer_tag()
        self.final = {"vectors": folder / f"{self.name}.npy", "ids": folder / f"{self.name}.ids.parquet",
                      "errors": folder / f"{self.name}.errors.tsv", "inputs": folder / f"{self.name}.inputs.parquet"}
        self.tmp = {k: partial_path(p, tag) for k, p in self.final.items()}
        self.dim, self.dtype = store.manifest["dim"], np.dtype(store.manifest["dtype"])
        self._vec = open(self.tmp["vectors"], "wb")
        self._vec.write(npy_header(0, self.dim, self.dtype))
        self._err = open(self.tmp["errors"], "w", encoding="utf-8", newline="\n")
        self.ids: list[str] = []
        self.paths: list[str] = []
        self.error_ids: list[str] = []
        self.n_errors = 0
        self.n_inputs = 0
        # (id, fingerprint) of every input record of this shard in input order, when the run knows them (an
        # update plan); written as NNNNNN.inputs.parquet, the store's inventory for the next diff
        self.inputs: Optional[list[tuple[str, str]]] = None

    def write(self, ids: Sequence[str], paths: Sequence[str], features: np.ndarray) -> None:
        self._vec.write(np.ascontiguousarray(features, dtype=self.dtype).tobytes())
        self.ids.extend(ids)
        self.paths.extend(paths)

    def errors(self, rows: Sequence[tuple[str, str, str]]) -> None:
        self._err.write("".join(error_row(row) for row in rows))
        self.error_ids.extend(str(row[0]) for row in rows)
        self.n_errors += len(rows)

    def commit(self) -> dict:
        import pyarrow as pa
        import pyarrow.parquet as pq

        self._vec.seek(0)
        self._vec.write(npy_header(len(self.ids), self.dim, self.dtype))
        for fh in (self._vec, self._err):
            fh.flush()
            os.fsync(fh.fileno())
            fh.close()
        pq.write_table(pa.table({"id": pa.array(self.ids, pa.string()), "path": pa.array(self.paths, pa.string())}),
                       self.tmp["ids"])
        fsync_path(self.tmp["ids"])
        keys = ["vectors", "ids", "errors"]
        if self.inputs is not None:
            keys.append("inputs")
            write_inputs(self.tmp["inputs"], self.inputs, self.ids)
        files = {}
        for key in keys:
            files[key] = {"name": self.final[key].name, "sha256": sha256(self.tmp[key]),
                          "bytes": self.tmp[key].stat().st_size}
            commit(self.tmp[key], self.final[key])
        marker = {"shard": self.index, "rows": len(self.ids), "errors": self.n_errors,
                  "inputs": self.n_inputs, "first_input": self.index * self.store.manifest["shard_size"],
                  "files": files}
        write_atomic(self.store.marker(self.index), json.dumps(marker, indent=1).encode())
        return marker

    def abort(self) -> None:
        for fh in (self._vec, self._err):
            fh.close()
        for p in self.tmp.values():
            p.unlink(missing_ok=True)


INPUTS_SCHEMA = None  # pyarrow schema of NNNNNN.inputs.parquet, made on first use (pyarrow imported lazily)


def empty_inventory():
    """An inventory (``FeatureStore.inventory``) with no record: its columns and types."""
    import pyarrow as pa

    return pa.table({"id": pa.array([], pa.string()), "sfp": pa.array([], pa.string()),
                     "shard": pa.array([], pa.int64()), "spos": pa.array([], pa.int64())})


def inputs_schema():
    global INPUTS_SCHEMA
    if INPUTS_SCHEMA is None:
        import pyarrow as pa

        INPUTS_SCHEMA = pa.schema([("id", pa.string()), ("fp", pa.string()), ("row", pa.int32())])
    return INPUTS_SCHEMA


def write_inputs(path: Path, inputs: Sequence[tuple[str, str]], vector_ids: Sequence[str]) -> None:
    """A shard's inventory: each input record's id and fingerprint in input order, and its vector row (-1: an
    error row). Ids are unique within a shard (an update plan refuses duplicates), so rows map by id."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    row_of = {rid: i for i, rid in enumerate(vector_ids)}
    table = pa.table({"id": pa.array([i for i, _ in inputs], pa.string()),
                      "fp": pa.array([f for _, f in inputs], pa.string()),
                      "row": pa.array([row_of.get(i, -1) for i, _ in inputs], pa.int32())}, schema=inputs_schema())
    pq.write_table(table, path)
    fsync_path(path)


class FeatureStore:
    """A store directory: identity in ``manifest.json``, one marker per finished shard."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.shard_dir = self.path / "shards"
        self.manifest: dict = {}
        if (self.path / MANIFEST).is_file():
            self.manifest = self._read_manifest()

    @classmethod
    def existing(cls, path: str | os.PathLike) -> "FeatureStore":
        """The store at ``path``, which must exist (a clear error otherwise)."""
        if not os.path.exists(path):
            raise ImgfeatError(f"{path} does not exist")
        store = cls(path)
        if not store.manifest:
            raise ImgfeatError(f"{path} is not an imgfeat feature store (no manifest.json)")
        return store

    def _read_manifest(self) -> dict:
        path = self.path / MANIFEST
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise ImgfeatError(
                f"{path} is damaged ({exc}); imgfeat writes it atomically, so something else changed it. "
                "The shards with .done.json markers are intact: restore the manifest, or move the store away "
                "and extract again.") from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise ImgfeatError(f"{self.path} is not an imgfeat feature store")
        return manifest

    # ------------------------------------------------------------------ writing
    def open(self, identity: dict, ignore: Sequence[str] = ()) -> "FeatureStore":
        """Create the store, or check that ``identity`` matches the one it was created with (but for ``ignore``:
        ``--append`` adds images from any input)."""
        if self.manifest:
            held = {k: self.manifest.get(k, VectorIdentity.DEFAULTS.get(k)) for k in IDENTITY}
            if isinstance(held["input"], str) and re.fullmatch(r"list of \d+ items", held["input"]):
                held["input"] = "a Python list"  # how stores written before 0.2 named a list
            diffs = [f"{k}: store has {held[k]!r}, this run {identity.get(k)!r}"
                     for k in IDENTITY if held[k] != identity.get(k) and k not in ignore]
            if diffs:
                raise StoreMismatchError(
                    f"{self.path} holds features of a different job, refusing to mix them:\n  " + "\n  ".join(diffs)
                    + "\nWrite to another --out directory, or delete this one to start over.")
            return self
        self.shard_dir.mkdir(parents=True, exist_ok=True)
        manifest = {"format": FORMAT, "format_version": 2, "imgfeat_version": __version__, **identity,
                    "shards": [], "total_inputs": None, "total_shards": None, "generation": 0, "segments": []}
        if create_atomic(self.path / MANIFEST, json.dumps(manifest, indent=1).encode()):
            self.manifest = manifest
            return self
        self.manifest = self._read_manifest()  # another writer was first: compare with its identity
        return self.open(identity, ignore)

    def check_weights(self, fingerprint: str, model: str, weights: Optional[str] = None) -> None:
        """Refuse to mix in (or compare against) vectors of other weights than the store's."""
        if fingerprint != self.manifest.get("weights"):
            source = self.manifest.get("weights_source")
            was = {"random": "--random-weights", "file": f"--weights {self.manifest.get('weights_file') or 'FILE'}",
                   "pretrained": "the pretrained weights"}.get(source, "other weights")
            raise StoreMismatchError(
                f"{self.path} was extracted with {was} of {model}, not {weights or 'these weights'} "
                "(their hashes differ): refusing to mix or compare their features")

    def annotate(self, key: str, value) -> None:
        """Record ``key`` (not part of the identity, e.g. a precision's measured fidelity) in the manifest."""
        current = self._read_manifest()
        current[key] = value
        write_atomic(self.path / MANIFEST, json.dumps(current, indent=1).encode())
        self.manifest = current

    def marker(self, index: int) -> Path:
        return self.shard_dir / f"{index:06d}.done.json"

    def done_shards(self) -> set[int]:
        if not self.shard_dir.is_dir():
            return set()
        return {int(p.name.split(".")[0]) for p in self.shard_dir.glob("*.done.json")}

    def shard_writer(self, index: int) -> ShardWriter:
        return ShardWriter(self, index)

    def markers(self) -> list[dict]:
        return [json.loads(self.marker(i).read_text()) for i in sorted(self.done_shards())]

    def refresh_manifest(self, total_inputs: Optional[int] = None) -> None:
        """Rewrite the manifest's shard list (and totals, once known) from the done-markers. For a store with
        generations (every store since updates), publish the done shards that are not published yet: the way to
        finish a store written shard by shard through this class (the engines publish through
        ``engines.update``)."""
        if self.generation is not None:
            segments = self.segments()
            published = {seg["shard"] for seg in segments}
            segments += [{"shard": m["shard"], "rows": m["rows"], "errors": m["errors"], "inputs": m["inputs"],
                          "dead": None, "files": m["files"]} for m in self.markers() if m["shard"] not in published]
            self.publish(segments, {})
            return
        current = self._read_manifest()
        if total_inputs is not None:
            size = current["shard_size"]
            current["total_inputs"] = total_inputs
            current["total_shards"] = -(-total_inputs // size)
        current["shards"] = [{k: m[k] for k in ("shard", "rows", "errors", "inputs", "files")} for m in self.markers()]
        write_atomic(self.path / MANIFEST, json.dumps(current, indent=1).encode())
        self.manifest = current

    # ------------------------------------------------------------------ generations
    # A store follows its input (format_version 2): the manifest is a snapshot. ``segments`` lists the published
    # shards and, for each, its dead-inputs file (``NNNNNN.dead.gG.npy``: the input positions of the shard's
    # inventory that were removed or superseded as of generation G; immutable, like the shards). A new state is
    # published by one atomic replace of the manifest after its shards are done, so a reader sees the old state
    # or the new one. Shards done but not yet published (an update in progress) are invisible to readers.
    @property
    def generation(self) -> Optional[int]:
        """The published generation; None for a store written before generations (format_version 1)."""
        return self.manifest.get("generation")

    @property
    def update_dir(self) -> Path:
        return self.path / "update"

    def segments(self) -> list[dict]:
        """The shards readers see, in order: the manifest's list, or every done shard of an old store."""
        if self.generation is not None:
            return [dict(seg) for seg in self.manifest.get("segments", [])]
        return [{"shard": m["shard"], "rows": m["rows"], "errors": m["errors"], "inputs": m["inputs"], "dead": None,
                 "files": m["files"]} for m in self.markers()]

    def _shard_file(self, shard: int, suffix: str) -> Path:
        return self.shard_dir / f"{shard:06d}.{suffix}"

    def inputs_table(self, shard: int):
        """A shard's inventory (id, fp, row) - written with the shard, or converted from an old store's files."""
        import pyarrow.parquet as pq

        return pq.read_table(self._shard_file(shard, "inputs.parquet"), schema=inputs_schema())

    def dead_inputs(self, seg: dict) -> np.ndarray:
        return np.load(self.shard_dir / seg["dead"]) if seg.get("dead") else np.zeros(0, np.int64)

    def live_rows(self, seg: dict) -> Optional[np.ndarray]:
        """The vector rows of a segment that are live (None: all of them)."""
        dead = self.dead_inputs(seg)
        if not len(dead):
            return None
        rows = self.inputs_table(seg["shard"]).column("row").to_numpy()[dead]
        return np.setdiff1d(np.arange(seg["rows"]), rows[rows >= 0])

    def inventory(self):
        """Every live input record of the published state: (id, sfp, shard, spos) as one Arrow table (columnar:
        a few tens of bytes per record, never a Python object per id)."""
        import pyarrow as pa

        parts = list(self.iter_inventory())
        return pa.concat_tables(parts) if parts else empty_inventory()

    def live_inputs(self) -> int:
        return sum(seg["inputs"] - seg.get("dead_inputs", 0) for seg in self.segments())

    def iter_inventory(self):
        """The inventory shard by shard (bounded memory)."""
        import pyarrow as pa

        for seg in self.segments():
            t = self.inputs_table(seg["shard"])
            pos = np.arange(t.num_rows, dtype=np.int64)
            dead = self.dead_inputs(seg)
            keep = np.setdiff1d(pos, dead) if len(dead) else pos
            t = t.take(pa.array(keep)) if len(dead) else t
            yield pa.table({"id": t.column("id"), "sfp": t.column("fp"),
                            "shard": pa.array(np.full(len(keep), seg["shard"], np.int64)), "spos": pa.array(keep)})

    def convert_inputs(self) -> int:
        """Give every done shard of an old store its inventory (ids from its .ids.parquet and .errors.tsv, with
        no fingerprint: taken as unchanged while the id stays in the input). Returns the shards converted."""
        import pyarrow.parquet as pq

        n = 0
        for m in self.markers():
            path = self._shard_file(m["shard"], "inputs.parquet")
            if path.is_file():
                continue
            ids = pq.read_table(self._shard_file(m["shard"], "ids.parquet"), columns=["id"]).column("id").to_pylist()
            errors = [line.split("\t", 1)[0] for line in
                      self._shard_file(m["shard"], "errors.tsv").read_text(encoding="utf-8").splitlines() if line]
            tmp = partial_path(path, writer_tag())
            write_inputs(tmp, [(i, "") for i in ids + errors], ids)
            commit(tmp, path)
            n += 1
        return n

    def write_dead(self, shard: int, positions: np.ndarray, generation: int) -> str:
        """The dead-inputs file of ``shard`` as of ``generation`` (sorted, unique input positions)."""
        path = self._shard_file(shard, f"dead.g{generation}.npy")
        tmp = partial_path(path, writer_tag())
        with open(tmp, "wb") as fh:
            np.save(fh, np.unique(np.asarray(positions, np.int64)))
            fh.flush()
            os.fsync(fh.fileno())
        commit(tmp, path)
        return path.name

    def publish(self, segments: list[dict], run: dict) -> dict:
        """Make ``segments`` the store's state, as the next generation (one atomic replace of the manifest)."""
        import time as _time

        current = self._read_manifest()
        live = sum(seg["rows"] - seg.get("dead_rows", 0) for seg in segments)
        errors = sum(seg["errors"] - seg.get("dead_errors", 0) for seg in segments)
        dead_rows = sum(seg.get("dead_rows", 0) for seg in segments)
        current.update(format_version=2, generation=(current.get("generation") or 0) + 1, segments=segments,
                       updated=_time.strftime("%Y-%m-%dT%H:%M:%S%z"), live_rows=live, live_errors=errors,
                       dead_rows=dead_rows,
                       removed_total=(current.get("removed_total") or 0) + run.get("removed", 0),
                       superseded_total=(current.get("superseded_total") or 0) + run.get("changed", 0))
        if "compacted" in run:  # a compaction: the last extraction's counts stay what info reports as the last run
            current["last_compaction"] = {**run, "at": current["updated"]}
        else:
            current["last_run"] = run
        current["shards"] = [{k: seg[k] for k in ("shard", "rows", "errors", "inputs", "files") if k in seg}
                             for seg in segments]
        current["total_inputs"] = sum(seg["inputs"] - seg.get("dead_inputs", 0) for seg in segments)
        current["total_shards"] = len(segments)
        write_atomic(self.path / MANIFEST, json.dumps(current, indent=1).encode())
        self.manifest = current
        return current

    def unpublished(self) -> list[int]:
        """Done shards no published state refers to (an interrupted update's)."""
        published = {seg["shard"] for seg in self.segments()} if self.generation is not None else self.done_shards()
        return sorted(self.done_shards() - published)

    def next_shard(self) -> int:
        """The index after every shard file there is (published, unpublished or half-written)."""
        if not self.shard_dir.is_dir():
            return 0
        numbers = [int(p.name.split(".")[0]) for p in self.shard_dir.iterdir() if p.name[:6].isdigit()]
        numbers += [int(p.name.split(".")[1]) for p in self.shard_dir.glob(".*.partial") if p.name[1:7].isdigit()]
        return max(numbers, default=-1) + 1

    def remove_shard_files(self, shard: int) -> None:
        """Delete every file of ``shard`` (its marker first, so it is never half-present and marked done)."""
        self.marker(shard).unlink(missing_ok=True)
        for p in self.shard_dir.glob(f"{shard:06d}.*"):
            p.unlink(missing_ok=True)

    @contextmanager
    def writer_lock(self):
        """One writer at a time: ``STORE/.lock`` holds the writer's pid, host and start time. A lock left by a
        process that is gone (same host) is taken over; one from another host is reported with how to clear it."""
        import socket
        import time as _time

        path = self.path / LOCK
        self.path.mkdir(parents=True, exist_ok=True)
        mine = {"pid": os.getpid(), "host": socket.gethostname(), "since": _time.strftime("%Y-%m-%d %H:%M:%S")}
        data = json.dumps(mine).encode()
        while not create_atomic(path, data):
            try:
                held = json.loads(path.read_text())
            except (OSError, ValueError):
                continue  # it went away (or is being replaced): try again
            if held.get("host") == mine["host"] and not _alive(held.get("pid")):
                stale = path.with_name(f"{LOCK}.stale.{os.getpid()}")
                try:
                    os.rename(path, stale)
                except FileNotFoundError:
                    continue
                if json.loads(stale.read_text()) != held:  # another process took it over first: give it back
                    os.rename(stale, path)
                    continue
                stale.unlink()
                continue
            where = "this machine" if held.get("host") == mine["host"] else f"host {held.get('host')}"
            raise StoreLockedError(
                f"{self.path} is being written by another imgfeat extract (pid {held.get('pid')} on {where}, since "
                f"{held.get('since')}); wait for it to finish"
                + ("" if held.get("host") == mine["host"] else
                   f". If that process is gone, delete {path} (a lock from another machine cannot be checked)"))
        try:
            yield
        finally:
            try:
                if json.loads(path.read_text()) == mine:
                    path.unlink()
            except (OSError, ValueError):
                pass

    @contextmanager
    def writing(self, part: bool = False):
        """What a run that writes the store holds: the writer lock, or for a ``--shard I/N`` part (parts share one
        plan and take no lock) the check that no other writer holds it."""
        if not part:
            with self.writer_lock():
                yield
            return
        held = self._held_lock()
        if held:
            raise StoreLockedError(f"{self.path} is being written by another imgfeat extract (pid {held.get('pid')} "
                                   f"on {held.get('host')}, since {held.get('since')}); run the parts after it")
        yield

    def _held_lock(self) -> Optional[dict]:
        """The writer lock's holder when a live process holds it."""
        import socket

        try:
            held = json.loads((self.path / LOCK).read_text())
        except (OSError, ValueError):
            return None
        if held.get("host") == socket.gethostname() and not _alive(held.get("pid")):
            return None
        return held

    def compact(self) -> dict:
        """Rewrite every shard that has dead rows without them (as new shards, in the same place of the order),
        publish that as the next generation, then delete the files no published state refers to. The caller
        holds the writer lock."""
        import pyarrow.parquet as pq

        if self.generation is None:
            raise ImgfeatError(f"{self.path} was written before stores could change; it has no dead rows to drop")
        if (self.update_dir / "plan.json").is_file():
            raise ImgfeatError(f"{self.path} has an update in progress (update/plan.json): finish it (rerun the same "
                               "extract) before compacting")
        segments, rewritten, dropped = [], 0, 0
        for seg in self.segments():
            dead = self.dead_inputs(seg)
            if not len(dead):
                segments.append(seg)
                continue
            inv = self.inputs_table(seg["shard"])
            live = np.setdiff1d(np.arange(inv.num_rows), dead)
            keep = self.live_rows(seg)
            keep = np.arange(seg["rows"]) if keep is None else keep
            t = pq.read_table(self._shard_file(seg["shard"], "ids.parquet"))
            vectors = np.load(self._shard_file(seg["shard"], "npy"), mmap_mode="r")
            live_ids = set(inv.column("id").take(live).to_pylist())
            errors = [line.split("\t") for line in
                      self._shard_file(seg["shard"], "errors.tsv").read_text(encoding="utf-8").splitlines() if line]
            writer = self.shard_writer(self.next_shard())
            writer.inputs = list(zip(inv.column("id").take(live).to_pylist(), inv.column("fp").take(live).to_pylist()))
            ids, paths = t.column("id").to_pylist(), t.column("path").to_pylist()
            for s in range(0, len(keep), 8192):
                part = keep[s:s + 8192]
                writer.write([ids[i] for i in part], [paths[i] for i in part], vectors[part])
            writer.errors([tuple(e) for e in errors if e[0] in live_ids])
            writer.n_inputs = len(live)
            marker = writer.commit()
            segments.append({"shard": marker["shard"], "rows": marker["rows"], "errors": marker["errors"],
                             "inputs": marker["inputs"], "dead": None, "files": marker["files"]})
            rewritten += 1
            dropped += seg.get("dead_rows", 0)
        if rewritten:
            self.publish(segments, {"compacted": rewritten, "dropped_rows": dropped})
        freed = self.remove_unreferenced()
        return {"rewritten": rewritten, "dropped_rows": dropped, "files_removed": freed[0], "bytes_freed": freed[1]}

    def remove_unreferenced(self) -> tuple[int, int]:
        """Delete shard files no published state refers to: superseded shards and old dead-inputs files."""
        keep_shards = {seg["shard"] for seg in self.segments()}
        keep_dead = {seg["dead"] for seg in self.segments() if seg.get("dead")}
        n = size = 0
        for p in list(self.shard_dir.iterdir()) if self.shard_dir.is_dir() else []:
            if not p.name[:6].isdigit():
                continue
            shard = int(p.name[:6])
            if shard in keep_shards and (".dead.g" not in p.name or p.name in keep_dead):
                continue
            size += p.stat().st_size
            p.unlink()
            n += 1
        return n, size

    # ------------------------------------------------------------------ reading
    def verify(self) -> dict:
        """Check every done shard's files against its checksums; report pending shards."""
        bad, missing, rows, errors = [], [], 0, 0
        for m in self.markers():
            for f in m["files"].values():
                p = self.shard_dir / f["name"]
                if not p.is_file():
                    missing.append(f["name"])
                elif p.stat().st_size != f["bytes"] or sha256(p) != f["sha256"]:
                    bad.append(f["name"])
            rows += m["rows"]
            errors += m["errors"]
        done = self.done_shards()
        total = self.manifest.get("total_shards")
        if self.generation is not None:  # the shards of an update in progress that are not done yet
            try:
                plan = json.loads((self.update_dir / "plan.json").read_text())
                pending = sorted(set(range(plan["base"], plan["base"] + plan["shards"])) - done)
            except (OSError, ValueError, KeyError):
                pending = []
        else:
            pending = sorted(set(range(total)) - done) if total is not None else None
        return {"done": len(done), "total_shards": total, "pending": pending, "corrupt": bad + missing,
                "missing": missing, "rows": rows, "errors": errors}

    def load(self) -> tuple[list[str], "StoreMatrix"]:
        """The live ids and a matrix over the live vectors of the published state."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        ids: list[str] = []
        files, keeps = [], []
        for seg in self.segments():
            col = pq.read_table(self._shard_file(seg["shard"], "ids.parquet"), columns=["id"]).column("id")
            keep = self.live_rows(seg)
            ids.extend((col if keep is None else col.take(pa.array(keep))).to_pylist())
            files.append(self._shard_file(seg["shard"], "npy"))
            keeps.append(keep)
        return ids, StoreMatrix(files, self.manifest["dim"], np.dtype(self.manifest["dtype"]), keeps)

    def error_ids(self) -> set[str]:
        """The ids of the published state's error rows (inputs that have no vector: their files failed)."""
        out: set[str] = set()
        for seg in self.segments():
            path = self._shard_file(seg["shard"], "errors.tsv")
            if not seg.get("errors") or not path.is_file():
                continue
            found = [line.split("\t", 1)[0] for line in path.read_text(encoding="utf-8").splitlines() if line]
            dead = self.dead_inputs(seg)
            if len(dead):  # an error row of a removed or changed input is not live
                gone = set(self.inputs_table(seg["shard"]).column("id").take(dead).to_pylist())
                found = [i for i in found if i not in gone]
            out.update(found)
        return out

    def live_keys(self) -> np.ndarray:
        """A stable key per live row, aligned with ``load()``: shard << 32 | row in the shard (a reader that kept
        an index of an earlier state matches its rows to this one's with them)."""
        parts = []
        for seg in self.segments():
            keep = self.live_rows(seg)
            rows = np.arange(seg["rows"], dtype=np.int64) if keep is None else keep.astype(np.int64)
            parts.append((np.int64(seg["shard"]) << 32) | rows)
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)

    def iter_shards(self) -> Iterator[tuple[list[str], list[str], np.ndarray]]:
        """(ids, paths, vectors) of the live rows, shard by shard (memory-mapped where a shard has no dead rows)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        for seg in self.segments():
            t = pq.read_table(self._shard_file(seg["shard"], "ids.parquet"))
            vectors = np.load(self._shard_file(seg["shard"], "npy"), mmap_mode="r")
            keep = self.live_rows(seg)
            if keep is not None:
                t, vectors = t.take(pa.array(keep)), vectors[keep]
            yield t.column("id").to_pylist(), t.column("path").to_pylist(), vectors


class StoreMatrix:
    """A read-only N x D matrix over the store's shard files, memory-mapped, never loaded whole.

    Supports ``len``, ``shape``, ``dtype``, row indexing (int, slice, integer array),
    ``iter_blocks(rows)`` and ``np.asarray`` (which does read everything)."""

    def __init__(self, files: list[Path], dim: int, dtype: np.dtype,
                 keeps: Optional[list[Optional[np.ndarray]]] = None) -> None:
        self._parts = [np.load(f, mmap_mode="r") for f in files]
        # the live rows of each part (None: all): dead rows of an updated store are skipped, never copied
        self._keeps = keeps or [None] * len(self._parts)
        self._offsets = np.cumsum([0] + [len(p) if k is None else len(k) for p, k in zip(self._parts, self._keeps)])
        self.dtype = np.dtype(dtype)
        self.shape = (int(self._offsets[-1]), dim)
        self.ndim = 2

    def __len__(self) -> int:
        return self.shape[0]

    def _range(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` copied once, part by part (no index array of the whole matrix is made)."""
        out = np.empty((max(0, stop - start), self.shape[1]), self.dtype)
        first = int(np.searchsorted(self._offsets, start, side="right")) - 1
        for p in range(max(first, 0), len(self._parts)):
            lo, hi = int(self._offsets[p]), int(self._offsets[p + 1])
            if lo >= stop:
                break
            a, b = max(start, lo) - lo, min(stop, hi) - lo
            if a >= b:
                continue
            keep, dest = self._keeps[p], out[max(start, lo) - start:min(stop, hi) - start]
            if keep is None:
                dest[...] = self._parts[p][a:b]
            else:
                np.take(self._parts[p], keep[a:b], axis=0, out=dest)
        return out

    def _rows(self, idx: np.ndarray) -> np.ndarray:
        out = np.empty((len(idx), self.shape[1]), self.dtype)
        part = np.searchsorted(self._offsets, idx, side="right") - 1
        for p in np.unique(part):
            sel = part == p
            local = idx[sel] - self._offsets[p]
            keep = self._keeps[p]
            out[sel] = self._parts[p][local if keep is None else keep[local]]
        return out

    def __getitem__(self, key):
        if isinstance(key, tuple):
            rows, cols = key[0], key[1:]
            return self[rows][(slice(None), *cols)] if not np.isscalar(rows) else self[rows][cols]
        if isinstance(key, (int, np.integer)):
            i = int(key) + (len(self) if key < 0 else 0)
            if not 0 <= i < len(self):
                raise IndexError(f"row {key} out of range for {len(self)} rows")
            return self._rows(np.array([i]))[0]
        if isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            if step == 1:
                return self._range(start, stop)
            return self._rows(np.arange(start, stop, step))
        idx = np.asarray(key)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        return self._rows(np.where(idx < 0, idx + len(self), idx))

    def iter_blocks(self, rows: int = 65536) -> Iterator[np.ndarray]:
        for start in range(0, len(self), rows):
            yield self[start:start + rows]

    def __array__(self, dtype=None, copy=None):
        full = self._range(0, len(self))  # each live row copied once, straight into the result
        return full.astype(dtype, copy=False) if dtype is not None else full
