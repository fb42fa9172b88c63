"""Sink stage: stream (ids, paths, features) batches to a file.

Every sink follows one protocol (``open`` / ``write`` / ``close`` / ``abort``) and writes
to a hidden partial name in the destination folder; ``close`` renames it into place, so a
crash never leaves a truncated file under the final name. Which sink a path gets, and how each
format is read back, is the registry in ``formats``.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Optional, Protocol, Sequence

import numpy as np

from ..files import clean_field, commit, discard, error_row, npy_header, partial_path

Rejected = list[tuple[int, str]]  # (row index in the batch, reason) that a sink refused


class Sink(Protocol):
    """What the runner needs from an output."""

    def open(self, dim: int, dtype: np.dtype) -> None: ...

    def write(self, ids: Sequence[str], paths: Sequence[str], features: np.ndarray) -> Optional[Rejected]: ...

    def close(self) -> None: ...

    def abort(self) -> None: ...


def _close_quietly(owner, *names: str) -> None:
    """Close the open files ``names`` of ``owner`` on the way out of a failed run: closing flushes, which fails
    again on a full disk, and the partial files must still be removed after it."""
    for name in names:
        fh = getattr(owner, name, None)
        if fh is not None:
            try:
                fh.close()
            except Exception:  # noqa: BLE001 - the first error is the one reported; the partial files go anyway
                pass


class _FileSink:
    """Shared partial-file handling for single-file sinks."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.partial = partial_path(self.path)
        self.dim = 0
        self.dtype = np.dtype(np.float32)

    def open(self, dim: int, dtype: np.dtype) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.dim, self.dtype = dim, np.dtype(dtype)

    def abort(self) -> None:
        discard(self.partial)


class TsvSink(_FileSink):
    """``id<TAB>[v1, v2, ...]``: one JSON list per line, the classic extractor's format."""

    def open(self, dim: int, dtype: np.dtype) -> None:
        super().open(dim, dtype)
        # 9 significant digits round-trip float32 exactly, 5 round-trip float16.
        self._fmt = "%.9g" if self.dtype == np.float32 else "%.5g"
        self._fh = open(self.partial, "w", encoding="utf-8", newline="\n")

    def write(self, ids, paths, features):
        fmt = self._fmt
        self._fh.write("".join(
            f"{rid}\t[{', '.join([fmt % v for v in row])}]\n" for rid, row in zip(ids, features.tolist())))

    def close(self) -> None:
        self._fh.close()
        commit(self.partial, self.path)

    def abort(self) -> None:
        _close_quietly(self, "_fh")
        super().abort()


class PickleSink(_FileSink):
    """A dict ``{id: vector}`` pickled at the end (TensorFlow Compute-Features format).

    A dict cannot hold an id twice, so a repeated id is refused as an error row rather
    than silently overwriting the earlier vector. Never unpickle files from untrusted sources.
    """

    def open(self, dim: int, dtype: np.dtype) -> None:
        super().open(dim, dtype)
        self._data: dict[str, np.ndarray] = {}

    def write(self, ids, paths, features):
        rejected: Rejected = []
        for i, rid in enumerate(ids):
            if rid in self._data:
                rejected.append((i, "duplicate id: a .pkl output is a dict keyed by id"))
            else:
                self._data[rid] = features[i].copy()
        return rejected

    def close(self) -> None:
        with open(self.partial, "wb") as fh:
            pickle.dump(self._data, fh, protocol=pickle.HIGHEST_PROTOCOL)
        commit(self.partial, self.path)


class H5Sink(_FileSink):
    """HDF5 datasets ``features`` (N x D, chunked, appended as the run goes), ``ids`` and ``paths``."""

    def open(self, dim: int, dtype: np.dtype) -> None:
        super().open(dim, dtype)
        import h5py

        self._f = h5py.File(self.partial, "w")
        chunk_rows = max(1, min(1024, (1 << 20) // max(1, dim * self.dtype.itemsize)))
        self._feats = self._f.create_dataset("features", shape=(0, dim), maxshape=(None, dim),
                                             dtype=self.dtype, chunks=(chunk_rows, dim))
        text = h5py.string_dtype("utf-8")
        self._ids = self._f.create_dataset("ids", shape=(0,), maxshape=(None,), dtype=text, chunks=(4096,))
        self._paths = self._f.create_dataset("paths", shape=(0,), maxshape=(None,), dtype=text, chunks=(4096,))
        self._n = 0

    def write(self, ids, paths, features):
        n, k = self._n, len(ids)
        for ds in (self._feats, self._ids, self._paths):
            ds.resize(n + k, axis=0)
        self._feats[n:n + k] = features
        self._ids[n:n + k] = list(ids)
        self._paths[n:n + k] = list(paths)
        self._n += k

    def close(self) -> None:
        self._f.close()
        commit(self.partial, self.path)

    def abort(self) -> None:
        _close_quietly(self, "_f")
        super().abort()


def npy_ids_path(path: str | Path) -> Path:
    p = Path(path)
    return p.with_name(p.stem + ".ids.txt")


class NpySink(_FileSink):
    """An N x D ``.npy`` written row by row (the header's N is filled in at the end) plus ``<name>.ids.txt``."""

    def open(self, dim: int, dtype: np.dtype) -> None:
        super().open(dim, dtype)
        self.ids_path = npy_ids_path(self.path)
        self.ids_partial = partial_path(self.ids_path)
        self._fh = open(self.partial, "wb")
        self._fh.write(npy_header(0, dim, self.dtype))
        self._ids_fh = open(self.ids_partial, "w", encoding="utf-8", newline="\n")
        self._n = 0

    def write(self, ids, paths, features):
        self._fh.write(np.ascontiguousarray(features, dtype=self.dtype).tobytes())
        self._ids_fh.write("".join(f"{rid}\n" for rid in ids))
        self._n += len(ids)

    def close(self) -> None:
        self._fh.seek(0)
        self._fh.write(npy_header(self._n, self.dim, self.dtype))
        self._fh.close()
        self._ids_fh.close()
        commit(self.ids_partial, self.ids_path)
        commit(self.partial, self.path)

    def abort(self) -> None:
        _close_quietly(self, "_fh", "_ids_fh")
        super().abort()
        if hasattr(self, "ids_partial"):
            discard(self.ids_partial)


class ParquetSink(_FileSink):
    """Columns ``id``, ``path`` and ``feature`` (fixed-size list), written in row groups."""

    def open(self, dim: int, dtype: np.dtype) -> None:
        super().open(dim, dtype)
        import pyarrow as pa
        import pyarrow.parquet as pq

        self._pa = pa
        value = pa.float32() if self.dtype == np.float32 else pa.float16()
        self._schema = pa.schema([("id", pa.string()), ("path", pa.string()),
                                  ("feature", pa.list_(value, dim))])
        self._writer = pq.ParquetWriter(self.partial, self._schema)
        self._group_rows = max(1024, (64 << 20) // max(1, dim * self.dtype.itemsize))
        self._buf: list = []
        self._buffered = 0

    def write(self, ids, paths, features):
        pa = self._pa
        flat = pa.array(np.ascontiguousarray(features, dtype=self.dtype).reshape(-1))
        self._buf.append(pa.table([pa.array(list(ids), pa.string()), pa.array(list(paths), pa.string()),
                                   pa.FixedSizeListArray.from_arrays(flat, self.dim)], schema=self._schema))
        self._buffered += len(ids)
        if self._buffered >= self._group_rows:
            self._flush()

    def _flush(self) -> None:
        if self._buf:
            self._writer.write_table(self._pa.concat_tables(self._buf), row_group_size=self._group_rows)
            self._buf, self._buffered = [], 0

    def close(self) -> None:
        self._flush()
        self._writer.close()
        commit(self.partial, self.path)

    def abort(self) -> None:
        _close_quietly(self, "_writer")
        super().abort()


class MemorySink:
    """Keeps everything in memory; what ``imgfeat.extract`` returns when no ``out`` is given."""

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.paths: list[str] = []
        self._chunks: list[np.ndarray] = []
        self.dim = 0
        self.dtype = np.dtype(np.float32)

    def open(self, dim: int, dtype: np.dtype) -> None:
        self.dim, self.dtype = dim, np.dtype(dtype)

    def write(self, ids, paths, features):
        self.ids.extend(ids)
        self.paths.extend(paths)
        self._chunks.append(np.array(features, dtype=self.dtype))

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass

    @property
    def features(self) -> np.ndarray:
        if not self._chunks:
            return np.zeros((0, self.dim), self.dtype)
        return np.concatenate(self._chunks)


class ErrorLog:
    """``<out>.errors.tsv`` rows ``id<TAB>path<TAB>reason``, committed like the output itself."""

    def __init__(self, out: Optional[str | Path]) -> None:
        self.path = Path(f"{out}.errors.tsv") if out is not None else None
        self.rows: list[tuple[str, str, str]] = []  # kept in memory only when there is no file
        self.count = 0
        self._fh = None

    def write(self, rows: Sequence[tuple[str, str, str]]) -> None:
        self.count += len(rows)
        if self.path is None:
            self.rows.extend(tuple(clean_field(v) for v in row) for row in rows)
            return
        if not rows:
            return
        if self._fh is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(partial_path(self.path), "w", encoding="utf-8", newline="\n")
        self._fh.write("".join(error_row(row) for row in rows))

    def close(self) -> None:
        if self.path is None:
            return
        if self._fh is not None:
            self._fh.close()
            commit(partial_path(self.path), self.path)
        else:
            discard(self.path)  # a stale list from an earlier run would misdescribe this one

    def abort(self) -> None:
        if self._fh is not None:
            _close_quietly(self, "_fh")
            discard(partial_path(self.path))
