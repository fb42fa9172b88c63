"""``FeatureStore``: a store directory, its manifest (identity and published state) and its readers; the writer
lock and compaction are mixed in from ``lock`` and ``compaction``."""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Optional, Sequence

import numpy as np

from ..._version import __version__
from ...errors import ImgfeatError
from ...files import commit, create_atomic, partial_path, write_atomic, writer_tag
from ..identity import VectorIdentity
from ..parquet import read_table
from .compaction import Compaction
from .integrity import Damage, StoreDamagedError, Verified, damage_message, file_entry, find_damage
from .inventory import empty_inventory, inputs_schema, write_inputs
from .layout import FORMAT, IDENTITY, MANIFEST, StoreMismatchError, segment_of
from .lock import Locking
from .matrix import StoreMatrix

if TYPE_CHECKING:
    import pyarrow as pa
from .writer import ShardWriter

log = logging.getLogger("imgfeat.outputs.store")


class FeatureStore(Locking, Compaction):
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
            raise StoreDamagedError(
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

    def read_marker(self, index: int) -> dict:
        """A done-marker, or one line naming it when it is damaged (a marker of a published shard is not needed:
        the manifest holds what it said)."""
        path = self.marker(index)
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise StoreDamagedError(
                f"{path} is damaged ({type(exc).__name__}): delete it and rerun the extraction, which redoes that "
                "shard") from None

    def markers(self) -> list[dict]:
        return [self.read_marker(i) for i in sorted(self.done_shards())]

    def refresh_manifest(self, total_inputs: Optional[int] = None) -> None:
        """Rewrite the manifest's shard list (and totals, once known) from the done-markers. For a store with
        generations (every store since updates), publish the done shards that are not published yet: the way to
        finish a store written shard by shard through this class (the engines publish through
        ``engines.update``)."""
        if self.generation is not None:
            segments = self.segments()
            published = {seg["shard"] for seg in segments}
            segments += [segment_of(m) for m in self.markers() if m["shard"] not in published]
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
        return [segment_of(m) for m in self.markers()]

    @property
    def verified(self) -> Verified:
        """The file states whose checks passed (``integrity``), read once per store object."""
        if getattr(self, "_verified", None) is None:
            self._verified = Verified(self.path)
        return self._verified

    def damage(self, full: bool = False, segments: Optional[list[dict]] = None) -> list[Damage]:
        """Every damaged file of the published state (``full``: every checksum read again, none remembered)."""
        return find_damage(self.shard_dir, self.segments() if segments is None else segments, self.verified, full)

    def checked_segments(self) -> list[dict]:
        """The published segments, each of whose files holds what its writer wrote (checked once per file state);
        a damaged one is :class:`StoreDamagedError`, never handed on."""
        segments = self.segments()
        found = self.damage(segments=segments)
        if found:
            raise StoreDamagedError(damage_message(self.path, found))
        return segments

    def _shard_file(self, shard: int, suffix: str) -> Path:
        return self.shard_dir / f"{shard:06d}.{suffix}"

    def inputs_table(self, shard: int):
        """A shard's inventory (id, fp, row) - written with the shard, or converted from an old store's files."""
        return read_table(self._shard_file(shard, "inputs.parquet"), schema=inputs_schema())

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

    def iter_inventory(self, segments: Optional[list[dict]] = None):
        """The inventory shard by shard (bounded memory), of ``segments`` (default: the published ones)."""
        import pyarrow as pa

        for seg in self.segments() if segments is None else segments:
            t = self.inputs_table(seg["shard"])
            pos = np.arange(t.num_rows, dtype=np.int64)
            dead = self.dead_inputs(seg)
            keep = np.setdiff1d(pos, dead) if len(dead) else pos
            t = t.take(pa.array(keep)) if len(dead) else t
            yield pa.table({"id": t.column("id"), "sfp": t.column("fp"),
                            "shard": pa.array(np.full(len(keep), seg["shard"], np.int64)), "spos": pa.array(keep)})

    converted = 0  # shards :meth:`upgrade` converted when this writer opened the store

    def upgrade(self) -> int:
        """A store written before generations (format_version 1) converted once, by the writer that opens it (the
        writer lock, or a ``--shard`` part): every done shard gets its inventory and they are published as
        generation 1. Readers read an old store as it is (:meth:`segments`). Returns the shards converted."""
        if not self.manifest or self.generation is not None:
            return 0
        self.converted = self._convert_inputs()
        segments = self.segments()
        self.publish(segments, {"converted": True})
        log.info("converted %s to the updatable store format: its %d shard(s) are generation 1; their images are "
                 "taken as unchanged while their ids stay in the input", self.path, len(segments))
        return self.converted

    def _convert_inputs(self) -> int:
        """Give every done shard of an old store its inventory (ids from its .ids.parquet and .errors.tsv, with
        no fingerprint: taken as unchanged while the id stays in the input). Returns the shards converted."""
        n = 0
        for m in self.markers():
            path = self._shard_file(m["shard"], "inputs.parquet")
            if path.is_file():
                continue
            ids = read_table(self._shard_file(m["shard"], "ids.parquet"), columns=["id"]).column("id").to_pylist()
            errors = [line.split("\t", 1)[0] for line in
                      self._shard_file(m["shard"], "errors.tsv").read_text(encoding="utf-8").splitlines() if line]
            tmp = partial_path(path, writer_tag())
            write_inputs(tmp, [(i, "") for i in ids + errors], ids)
            commit(tmp, path)
            n += 1
        return n

    def write_dead(self, shard: int, positions: np.ndarray, generation: int) -> dict:
        """The dead-inputs file of ``shard`` as of ``generation`` (sorted, unique input positions)."""
        path = self._shard_file(shard, f"dead.g{generation}.npy")
        tmp = partial_path(path, writer_tag())
        with open(tmp, "wb") as fh:
            np.save(fh, np.unique(np.asarray(positions, np.int64)))
            fh.flush()
            os.fsync(fh.fileno())
        entry = {**file_entry(tmp), "name": path.name}
        commit(tmp, path)
        self.verified.remember([path])
        return entry

    def publish_update(self, dead: dict, new_shards: Sequence[int], run: dict, repairs: Optional[dict] = None,
                       lost: Sequence[int] = ()) -> dict:
        """The next generation of an update: the published segments with ``dead`` input positions added ({shard:
        positions}, written as each shard's immutable ``NNNNNN.dead.gG.npy``), then the ``new_shards`` (done), as
        one atomic replace of the manifest. A repair (``engines.update``) replaces each damaged shard in place by its
        re-extraction (``repairs``: {damaged shard: new shard}, which is then not appended), and drops the ``lost``
        shards (whose inventory was damaged: their inputs are among the new shards, which take the first lost
        shard's place in the order)."""
        generation = (self.generation or 0) + 1
        repairs, lost = dict(repairs or {}), set(lost)
        segments = self.segments()
        by_shard = {seg["shard"]: seg for seg in segments}
        for shard, positions in dead.items():
            if shard in repairs or shard in lost:
                continue  # replaced or dropped whole
            seg = by_shard[shard]
            gone = np.union1d(self.dead_inputs(seg), positions)
            entry = self.write_dead(shard, gone, generation)
            seg.update(dead=entry["name"], dead_file=entry)
            rows = self.inputs_table(shard).column("row").to_numpy()[gone]
            seg.update(dead_inputs=int(len(gone)), dead_rows=int((rows >= 0).sum()), dead_errors=int((rows < 0).sum()))
        replaced = {k for k in repairs.values() if k is not None}
        added = [segment_of(self.read_marker(k)) for k in new_shards if k not in replaced]
        out: list[dict] = []
        for seg in segments:
            if seg["shard"] in repairs:
                if repairs[seg["shard"]] is not None:  # None: nothing of it is left in the input
                    out.append(segment_of(self.read_marker(repairs[seg["shard"]])))
            elif seg["shard"] in lost:
                out += added  # the re-extracted inputs of a lost shard (and anything new) where it stood
                added = []
            else:
                out.append(seg)
        return self.publish(out + added, run)

    def drop_shards(self, shards: Sequence[int]) -> int:
        """Publish the next generation without ``shards`` (damaged ones whose images are gone: ``imgfeat repair
        --drop``); returns the live vectors they held. The caller holds the writer lock."""
        segments = self.segments()
        gone = [seg for seg in segments if seg["shard"] in set(shards)]
        rows = sum(seg["rows"] - seg.get("dead_rows", 0) for seg in gone)
        self.publish([seg for seg in segments if seg["shard"] not in set(shards)],
                     {"dropped": rows, "shards_dropped": len(gone)})
        return rows

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

    # ------------------------------------------------------------------ reading
    def verify(self, full: bool = False) -> dict:
        """Check every file of the published state (each shard's files and dead-inputs file) against its size and
        checksum (``full``: read again even where the same file state was checked before); report pending shards."""
        segments = self.segments()
        found = self.damage(full=full, segments=segments)
        missing = [d.name for d in found if d.what == "is missing"]
        bad = [d.name for d in found if d.what != "is missing"]
        rows = sum(seg["rows"] for seg in segments)
        errors = sum(seg["errors"] for seg in segments)
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
                "missing": missing, "rows": rows, "errors": errors, "files": sum(len(s.get("files", {})) +
                                                                                 bool(s.get("dead")) for s in segments),
                "damage": [{"shard": d.shard, "file": d.name, "problem": d.what} for d in found],
                "shards_damaged": sorted({d.shard for d in found})}

    def load_columns(self, columns: Sequence[str] = ("id", "path")) -> tuple["pa.Table", "StoreMatrix"]:
        """The live rows' ``columns`` of the shards' id tables, as one Arrow table (no Python object per row), and a
        matrix over the live vectors of the published state, aligned with it."""
        import pyarrow as pa

        tables, files, keeps = [], [], []
        for seg in self.checked_segments():
            t = read_table(self._shard_file(seg["shard"], "ids.parquet"), columns=columns)
            keep = self.live_rows(seg)
            tables.append(t if keep is None else t.take(pa.array(keep)))
            files.append(self._shard_file(seg["shard"], "npy"))
            keeps.append(keep)
        table = (pa.concat_tables(tables) if tables
                 else pa.table({c: pa.array([], pa.string()) for c in columns}))
        return table, StoreMatrix(files, self.manifest["dim"], np.dtype(self.manifest["dtype"]), keeps)

    def error_ids(self) -> set[str]:
        """The ids of the published state's error rows (inputs that have no vector: their files failed)."""
        out: set[str] = set()
        for seg in self.checked_segments():
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
        """A stable key per live row, aligned with ``load_columns()``: shard << 32 | row in the shard (a reader that kept
        an index of an earlier state matches its rows to this one's with them)."""
        parts = []
        for seg in self.checked_segments():
            keep = self.live_rows(seg)
            rows = np.arange(seg["rows"], dtype=np.int64) if keep is None else keep.astype(np.int64)
            parts.append((np.int64(seg["shard"]) << 32) | rows)
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)

    def iter_shards(self) -> Iterator[tuple[list[str], list[str], np.ndarray]]:
        """(ids, paths, vectors) of the live rows, shard by shard (memory-mapped where a shard has no dead rows)."""
        import pyarrow as pa

        for seg in self.checked_segments():
            t = read_table(self._shard_file(seg["shard"], "ids.parquet"))
            vectors = np.load(self._shard_file(seg["shard"], "npy"), mmap_mode="r")
            keep = self.live_rows(seg)
            if keep is not None:
                t, vectors = t.take(pa.array(keep)), vectors[keep]
            yield t.column("id").to_pylist(), t.column("path").to_pylist(), vectors
