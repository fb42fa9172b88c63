"""Ids and paths of a large collection without a Python object per row. ``StringColumn``: strings held as one
Arrow column (their bytes and an offset each: about 25 bytes an id at 10M, against about 80 for a list of str), read
one at a time. ``IdIndex``: the row of an id without a Python dict of every id: the ids' 64-bit hashes sorted beside
their rows (12 bytes an id at up to 2^31 rows, against about 100 bytes a dict entry), a hash hit confirmed against
the id itself, so a collision can never answer the wrong row."""

from __future__ import annotations

from typing import Iterator, Optional, Sequence

import numpy as np

from ..errors import ImgfeatError

ITER_BLOCK = 65536  # strings turned into Python objects at a time when iterating
# bytes of a lines file split at a time: Arrow holds about 4 copies of one while it splits it (10M ids: 0.97 s
# and a 337 MB peak; 2.13 s and 500 MB with 64 MB)
READ_CHUNK = 16 * 2**20


class StringColumn(Sequence):
    """A read-only sequence of ``str`` (or None) over an Arrow string array or chunked array, e.g. a parquet column:
    ``column[row]``, slices (a list), ``len``, iteration (a block of Python strings at a time) and ``==`` against
    another column or a list."""

    def __init__(self, values) -> None:
        import pyarrow as pa

        if isinstance(values, pa.ChunkedArray) and values.num_chunks == 1:
            values = values.chunk(0)
        elif not isinstance(values, (pa.Array, pa.ChunkedArray)):
            values = pa.array(list(values), pa.large_string())
        # chunks are kept as they are (joining them would hold the column twice while it is copied): a row is found
        # by a binary search of the chunks' first rows
        self._values = values
        self._starts = (np.cumsum([0] + [len(c) for c in values.chunks]) if isinstance(values, pa.ChunkedArray)
                        else None)
        self._id_index: Optional[IdIndex] = None

    def id_index(self) -> "IdIndex":
        """The ``IdIndex`` of these strings, built at the first call and kept (the tools look ids up several times
        over one collection; a column is read-only, so it never goes stale)."""
        if self._id_index is None:
            self._id_index = IdIndex(self)
        return self._id_index

    def __len__(self) -> int:
        return len(self._values)

    def __getitem__(self, row):
        if isinstance(row, slice):
            return self._values[row].to_pylist()
        row = int(row)
        if self._starts is None:
            return self._values[row].as_py()
        if row < 0:
            row += len(self._values)
        if not 0 <= row < len(self._values):
            raise IndexError(f"row {row} of a column of {len(self._values)}")
        c = int(np.searchsorted(self._starts, row, side="right")) - 1
        return self._values.chunk(c)[row - int(self._starts[c])].as_py()

    def __iter__(self) -> Iterator[Optional[str]]:
        for s in range(0, len(self._values), ITER_BLOCK):
            yield from self._values.slice(s, ITER_BLOCK).to_pylist()

    def __eq__(self, other) -> bool:
        if isinstance(other, StringColumn):
            a, b = self._chunked(), other._chunked()
            return len(self) == len(other) and a.cast(b.type).equals(b)  # whatever the chunks
        return isinstance(other, (list, tuple)) and len(other) == len(self) and list(self) == list(other)

    def _chunked(self):
        import pyarrow as pa

        return self._values if isinstance(self._values, pa.ChunkedArray) else pa.chunked_array([self._values])

    __hash__ = None  # type: ignore[assignment]

    def take(self, rows) -> list:
        """The strings at ``rows`` (positions, any order), as a list, gathered chunk by chunk: Arrow's ``take`` on a
        chunked array joins its chunks into one first (10M ids: 194 MB more, kept by Arrow's allocator)."""
        import pyarrow as pa

        rows = np.asarray(rows, np.int64).reshape(-1)
        if len(rows) and (rows.min() < 0 or rows.max() >= len(self._values)):
            raise IndexError(f"rows out of a column of {len(self._values)}")
        if self._starts is None:
            return self._values.take(pa.array(rows)).to_pylist()
        chunk = np.searchsorted(self._starts, rows, side="right") - 1
        order = np.argsort(chunk, kind="stable")
        bounds = np.searchsorted(chunk[order], np.arange(len(self._starts)))  # chunk c: order[bounds[c]:bounds[c + 1]]
        found: list = []
        for c in np.unique(chunk).tolist():
            part = rows[order[bounds[c]:bounds[c + 1]]] - int(self._starts[c])
            found += self._values.chunk(c).take(pa.array(part)).to_pylist()
        out = np.empty(len(rows), dtype=object)
        out[order] = found
        return out.tolist()

    @property
    def nbytes(self) -> int:
        return int(self._values.nbytes)


def read_lines(path, what: str = "ids") -> StringColumn:
    """The lines of a UTF-8 text file (one id a line, as ``.ids.txt`` files hold them) as a ``StringColumn``, split by
    Arrow ``READ_CHUNK`` bytes at a time: no Python object per line."""
    import pyarrow as pa

    column = StringColumn(pa.chunked_array(list(_line_pieces(path, what)), pa.large_string()))
    release_arrow_pool()  # the split's intermediates: Arrow's allocator keeps freed memory (10M ids: 300 MB) else
    return column


def lines_equal(path, strings: Sequence[str], what: str = "ids") -> bool:
    """Whether the lines of ``path`` are ``strings``, in order (what ``read_lines`` would read, compared a
    ``READ_CHUNK`` at a time: never a second copy of every line)."""
    import pyarrow as pa

    def same(piece, at: int) -> bool:
        if isinstance(strings, StringColumn):
            return strings._chunked().slice(at, len(piece)).cast(pa.large_string()).equals(pa.chunked_array([piece]))
        return piece.to_pylist() == list(strings[at:at + len(piece)])

    at = 0
    try:
        for piece in _line_pieces(path, what):
            if at + len(piece) > len(strings) or not same(piece, at):
                return False
            at += len(piece)
        return at == len(strings)
    finally:
        release_arrow_pool()


def _line_pieces(path, what: str):
    """The lines of ``path`` as Arrow arrays of ``READ_CHUNK`` bytes or so each (a line never cut)."""
    import pyarrow as pa

    rest = b""
    try:
        with open(path, "rb") as fh:
            while True:
                data = fh.read(READ_CHUNK)
                if not data:
                    break
                data = rest + data
                cut = data.rfind(b"\n") + 1
                if cut:
                    yield _split_lines(data[:cut - 1])
                rest = data[cut:]
            del data
            if rest:
                yield pa.array([rest], pa.large_string())
    except pa.ArrowInvalid:
        raise ImgfeatError(f"the {what} file {path} is not UTF-8 text") from None


def _split_lines(data: bytes):
    """The lines of ``data`` (no final newline) as an Arrow array; CRLF lines as text mode reads them."""
    import pyarrow as pa
    import pyarrow.compute as pc

    return pc.utf8_rtrim(pc.split_pattern(pa.array([data], pa.large_string()), "\n").flatten(), characters="\r")


def release_arrow_pool() -> None:
    """Hand the memory Arrow's allocator (mimalloc or jemalloc) keeps after frees back to the system."""
    import pyarrow as pa

    pa.default_memory_pool().release_unused()


class IdIndex:
    """``index[id]``, ``get(id)`` and ``id in index`` over ``ids`` (any sequence of str indexable by row; it is kept, not
    copied). With repeated ids the last row answers, as ``{id: row for row, id in enumerate(ids)}`` would."""

    @staticmethod
    def _hash(rid: str) -> int:
        return hash(rid)

    def __init__(self, ids: Sequence[str]) -> None:
        n = len(ids)
        hashes = np.fromiter((self._hash(i) for i in ids), np.int64, n)
        order = np.argsort(hashes, kind="stable")
        self._hashes = hashes[order]
        self._rows = order.astype(np.int32 if n < 2**31 else np.int64)
        self._ids = ids

    def __len__(self) -> int:
        return len(self._rows)

    def get(self, rid: str, default: Optional[int] = None) -> Optional[int]:
        h = np.int64(self._hash(rid))
        lo = int(np.searchsorted(self._hashes, h, side="left"))
        hi = int(np.searchsorted(self._hashes, h, side="right"))
        for j in range(hi - 1, lo - 1, -1):  # same hash: rows ascending, so the last row first
            row = int(self._rows[j])
            if self._ids[row] == rid:
                return row
        return default

    def rows(self, query: Sequence[str]) -> np.ndarray:
        """The row of each id of ``query`` (-1 where absent), as ``get`` answers, in one vectorised pass: the hashes
        searched together and the hits confirmed with one gather of their ids."""
        q = list(query)
        out = np.full(len(q), -1, np.int64)
        if not q or not len(self._rows):
            return out
        h = np.fromiter((self._hash(i) for i in q), np.int64, len(q))
        lo, hi = np.searchsorted(self._hashes, h, "left"), np.searchsorted(self._hashes, h, "right")
        one = np.flatnonzero(hi - lo == 1)  # the usual case: one row of that hash
        cand = self._rows[lo[one]].astype(np.int64)
        found = (self._ids.take(cand) if isinstance(self._ids, StringColumn)
                 else [self._ids[r] for r in cand.tolist()])
        ok = np.fromiter((a == q[j] for a, j in zip(found, one.tolist())), bool, len(one))
        out[one[ok]] = cand[ok]
        for j in np.flatnonzero(hi - lo > 1).tolist():  # repeated ids or a collision: the last matching row
            out[j] = self.get(q[j], -1)
        return out

    def __getitem__(self, rid: str) -> int:
        row = self.get(rid)
        if row is None:
            raise KeyError(rid)
        return row

    def __contains__(self, rid: object) -> bool:
        return isinstance(rid, str) and self.get(rid) is not None

    @property
    def nbytes(self) -> int:
        return int(self._hashes.nbytes + self._rows.nbytes)


class StableIdIndex(IdIndex):
    """An ``IdIndex`` whose hashes are the same in every process (xxh3-64 of the UTF-8 id, not Python's salted
    ``hash``), so it can be kept on disk and memory-mapped (``cached``): serve's lookup of 100M ids is then pages of
    a file, not 1.2 GB of its memory, and is not rebuilt at each start."""

    @staticmethod
    def _hash(rid: str) -> int:
        import xxhash

        return xxhash.xxh3_64_intdigest(rid.encode("utf-8", "surrogatepass")) - (1 << 63)

    @classmethod
    def cached(cls, ids: Sequence[str], folder) -> "StableIdIndex":
        """The index of ``ids`` kept in ``folder`` (``ids.hashes.npy`` and ``ids.rows.npy``, sealed), memory-mapped;
        built and written there when missing, damaged or of another length; in memory where ``folder`` cannot be
        written (said once)."""
        from pathlib import Path

        from ..errors import best_effort_cache
        from ..files import atomic_paths, seal, seal_broken

        folder = Path(folder)
        files = [folder / "ids.hashes.npy", folder / "ids.rows.npy"]
        if all(f.is_file() and not seal_broken(f) for f in files):
            index = cls.__new__(cls)
            index._hashes, index._rows = (np.load(f, mmap_mode="r") for f in files)
            index._ids = ids
            if len(index._rows) == len(ids):
                return index
        index = cls(ids)
        if not folder.is_dir():  # a cache folder that could not be made (said once by its maker): in memory
            return index
        with best_effort_cache("the id lookup", folder):
            with atomic_paths(files) as partials:
                for partial, values in zip(partials, (index._hashes, index._rows)):
                    with open(partial, "wb") as fh:
                        np.save(fh, values)
            for f in files:
                seal(f)
            index._hashes, index._rows = (np.load(f, mmap_mode="r") for f in files)
        return index


def write_lines(path, strings: Sequence[str]) -> None:
    """``strings`` one a line (UTF-8, ``\\n``), written ``ITER_BLOCK`` at a time: what ``read_lines`` reads back."""
    with open(path, "w", encoding="utf-8", newline="\n") as fh:
        for s in range(0, len(strings), ITER_BLOCK):
            fh.writelines(f"{x}\n" for x in strings[s:s + ITER_BLOCK])


def ids_nbytes(ids: Sequence[str]) -> int:
    """The bytes ``ids`` hold: a ``StringColumn``'s Arrow buffers, or a list's objects."""
    import sys

    if isinstance(ids, StringColumn):
        return ids.nbytes
    return sys.getsizeof(ids) + sum(sys.getsizeof(i) for i in ids)


def id_index(ids: Sequence[str]) -> IdIndex:
    """The ``IdIndex`` of ``ids``: a ``StringColumn``'s own (built once), new for other sequences."""
    return ids.id_index() if isinstance(ids, StringColumn) else IdIndex(ids)
