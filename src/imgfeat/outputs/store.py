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
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np

from .._version import __version__
from ..errors import ImgfeatError
from ..files import commit, create_atomic, error_row, fsync_path, npy_header, partial_path, sha256, \
    stale_partials, write_atomic, writer_tag

FORMAT = "imgfeat-store"
MANIFEST = "manifest.json"
# Fields that must match for a rerun to resume into an existing store.
IDENTITY = ("model", "layer", "pool", "weights", "preprocess", "dim", "dtype", "relu", "l2", "input", "start",
            "stop", "shard_size", "precision")
IDENTITY_DEFAULTS = {"precision": "fp32"}  # what a store written before the key existed holds
DEFAULT_SHARD_SIZE = 10_000


class StoreMismatchError(ImgfeatError):
    """The store was written by a different job."""


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
                      "errors": folder / f"{self.name}.errors.tsv"}
        self.tmp = {k: partial_path(p, tag) for k, p in self.final.items()}
        self.dim, self.dtype = store.manifest["dim"], np.dtype(store.manifest["dtype"])
        self._vec = open(self.tmp["vectors"], "wb")
        self._vec.write(npy_header(0, self.dim, self.dtype))
        self._err = open(self.tmp["errors"], "w", encoding="utf-8", newline="\n")
        self.ids: list[str] = []
        self.paths: list[str] = []
        self.n_errors = 0
        self.n_inputs = 0

    def write(self, ids: Sequence[str], paths: Sequence[str], features: np.ndarray) -> None:
        self._vec.write(np.ascontiguousarray(features, dtype=self.dtype).tobytes())
        self.ids.extend(ids)
        self.paths.extend(paths)

    def errors(self, rows: Sequence[tuple[str, str, str]]) -> None:
        self._err.write("".join(error_row(row) for row in rows))
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
        files = {}
        for key in ("vectors", "ids", "errors"):
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
    def open(self, identity: dict) -> "FeatureStore":
        """Create the store, or check that ``identity`` matches the one it was created with."""
        if self.manifest:
            held = {k: self.manifest.get(k, IDENTITY_DEFAULTS.get(k)) for k in IDENTITY}
            diffs = [f"{k}: store has {held[k]!r}, this run {identity.get(k)!r}"
                     for k in IDENTITY if held[k] != identity.get(k)]
            if diffs:
                raise StoreMismatchError(
                    f"{self.path} holds features of a different job, refusing to mix them:\n  " + "\n  ".join(diffs)
                    + "\nWrite to another --out directory, or delete this one to start over.")
            return self
        self.shard_dir.mkdir(parents=True, exist_ok=True)
        manifest = {"format": FORMAT, "format_version": 1, "imgfeat_version": __version__, **identity,
                    "shards": [], "total_inputs": None, "total_shards": None}
        if create_atomic(self.path / MANIFEST, json.dumps(manifest, indent=1).encode()):
            self.manifest = manifest
            return self
        self.manifest = self._read_manifest()  # another writer was first: compare with its identity
        return self.open(identity)

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
        """Rewrite the manifest's shard list (and totals, once known) from the done-markers."""
        current = self._read_manifest()
        if total_inputs is not None:
            size = current["shard_size"]
            current["total_inputs"] = total_inputs
            current["total_shards"] = -(-total_inputs // size)
        current["shards"] = [{k: m[k] for k in ("shard", "rows", "errors", "inputs", "files")} for m in self.markers()]
        write_atomic(self.path / MANIFEST, json.dumps(current, indent=1).encode())
        self.manifest = current

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
        pending = sorted(set(range(total)) - done) if total is not None else None
        return {"done": len(done), "total_shards": total, "pending": pending, "corrupt": bad + missing,
                "missing": missing, "rows": rows, "errors": errors}

    def load(self) -> tuple[list[str], "StoreMatrix"]:
        import pyarrow.parquet as pq

        shards = sorted(self.done_shards())
        ids: list[str] = []
        for i in shards:
            ids.extend(pq.read_table(self.shard_dir / f"{i:06d}.ids.parquet", columns=["id"]).column("id").to_pylist())
        return ids, StoreMatrix([self.shard_dir / f"{i:06d}.npy" for i in shards], self.manifest["dim"],
                                np.dtype(self.manifest["dtype"]))

    def iter_shards(self) -> Iterator[tuple[list[str], list[str], np.ndarray]]:
        """(ids, paths, memory-mapped vectors) shard by shard, in input order."""
        import pyarrow.parquet as pq

        for i in sorted(self.done_shards()):
            t = pq.read_table(self.shard_dir / f"{i:06d}.ids.parquet")
            yield t.column("id").to_pylist(), t.column("path").to_pylist(), \
                np.load(self.shard_dir / f"{i:06d}.npy", mmap_mode="r")


class StoreMatrix:
    """A read-only N x D matrix over the store's shard files, memory-mapped, never loaded whole.

    Supports ``len``, ``shape``, ``dtype``, row indexing (int, slice, integer array),
    ``iter_blocks(rows)`` and ``np.asarray`` (which does read everything)."""

    def __init__(self, files: list[Path], dim: int, dtype: np.dtype) -> None:
        self._parts = [np.load(f, mmap_mode="r") for f in files]
        self._offsets = np.cumsum([0] + [len(p) for p in self._parts])
        self.dtype = np.dtype(dtype)
        self.shape = (int(self._offsets[-1]), dim)
        self.ndim = 2

    def __len__(self) -> int:
        return self.shape[0]

    def _rows(self, idx: np.ndarray) -> np.ndarray:
        out = np.empty((len(idx), self.shape[1]), self.dtype)
        part = np.searchsorted(self._offsets, idx, side="right") - 1
        for p in np.unique(part):
            sel = part == p
            out[sel] = self._parts[p][idx[sel] - self._offsets[p]]
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
            return self._rows(np.arange(len(self))[key])
        idx = np.asarray(key)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        return self._rows(np.where(idx < 0, idx + len(self), idx))

    def iter_blocks(self, rows: int = 65536) -> Iterator[np.ndarray]:
        for start in range(0, len(self), rows):
            yield self[start:start + rows]

    def __array__(self, dtype=None, copy=None):
        full = np.concatenate(self._parts) if self._parts else np.zeros(self.shape, self.dtype)
        return full.astype(dtype) if dtype is not None else full
