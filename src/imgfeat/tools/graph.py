"""A kNN graph as the label diffusion uses it, in bounded memory: the symmetric, degree-normalised weight matrix
``S = D^-1/2 (W + W^T) D^-1/2`` (``W_ij = max(sim_ij, 0) ** gamma`` for each of row i's k neighbours j) written
once as a CSR matrix on disk (``indptr`` int64, ``indices`` int32, ``data`` float32) and multiplied with dense
column blocks of class scores, the CSR memory-mapped and read a block of rows at a time.

The input is the graph ``knn --raw`` writes (``PREFIX.int32`` and ``PREFIX.float32``, row-major N x k, and
``PREFIX.ids.txt``), or the same arrays in memory. The transpose is built out of core: every edge and its reverse
go to the bucket of its row (a contiguous range of rows, sized to the memory budget) on disk, then each bucket is
summed (an edge found from both ends counts twice, as ``W + W^T`` does) and appended to the CSR. Memory: the
degree vector (8 bytes a row) and one bucket; never N x k edges at once.

Rows may be renumbered for locality (``locality_order``: rows of one k-means cell made consecutive), so that a row's
neighbours' class scores lie close together in memory: the product then reads them from the cache rather than from
anywhere in an N x classes array (8.7x faster at 1M rows; 14x with the row blocks shared among the cores,
BENCHMARKS.md).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional, Sequence

import numpy as np

from ..errors import DamagedFileError, ImgfeatError, bad_param, require
from ..files import atomic_paths, mapped_for_writing
from ..outputs.idindex import read_lines, write_lines
from .autoindex import build_index
from .exact import RECALL_SAMPLE, check_rows, sampled_recall
from .memory import release_freed_heap
from .names import RAW_SUFFIXES

EDGE_BYTES = 12  # a bucket's edge on disk: int32 row, int32 column, float32 weight
BLOCK_ROWS = 65_536  # rows of the raw graph read at a time
ORDER_CELL_ROWS = 2_000  # locality_order: about this many rows a cell (2,000 x 100 classes of float32: 800 KB)
ORDER_CELLS_MAX = 1_024  # ... and no more cells (assigning 10M rows to 1,024 centroids: about a minute on 2 cores)




def write_raw(paths: Sequence, blocks: Iterable[tuple], ids: Sequence[str], n: Optional[int] = None) -> None:
    """The one writer of a raw graph (``knn --raw``, ``knn --engine ray``, ``diffuse``): ``(D, I)`` blocks in row order,
    or ``(rows, D, I)`` blocks of any rows (a ``CellJoin``'s cells, written in place through a memory map), to
    ``paths[0]`` (int32 I) and ``paths[1]`` (float32 D), row-major, and the ids to ``paths[2]``; the caller's
    ``atomic_paths`` gives them their final names. ``ids`` None: ``n`` rows, no ids file (a graph kept only while a
    command runs)."""
    n, at, files = len(ids) if ids is not None else n, 0, None
    try:
        for block in blocks:
            rows, D, I = block if len(block) == 3 else (slice(at, at + len(block[1])), *block)
            if files is None:  # sized by the first block's k; pages of a file, not the program's memory
                files = [mapped_for_writing(paths[0], (n, I.shape[1]), np.int32),
                         mapped_for_writing(paths[1], (n, D.shape[1]), np.float32)]
            files[0][rows], files[1][rows] = I, D
            at += len(I)
    finally:
        for f in files or ():
            f.flush()
    if files is None:  # no rows: empty files
        for path in paths[:2]:
            open(path, "wb").close()
    if ids is not None:
        write_lines(paths[2], ids)


@dataclass
class BuiltGraph:
    """A kNN graph built and written by ``build_graph``: the fitted ``index`` (an index or a join), the ``rows``
    function reading neighbour rows back from what was written, and ``recall`` (``recall_at_k``, ``sampled_rows``:
    against exact neighbours of a seeded sample; None for an exact graph)."""

    index: object
    rows: Callable[[np.ndarray], np.ndarray]
    recall: Optional[dict]

    @property
    def description(self) -> str:
        return self.index.description


def build_graph(X, ids: Sequence[str], k: int, *, index: str = "auto", memory: Optional[int] = None,
                metric: str = "cosine", nprobe: int = 16, nlist: Optional[int] = None, what: str = "a kNN graph",
                raw: Optional[str] = None, npz: Optional[str] = None, recall_sample: int = RECALL_SAMPLE,
                write: Optional[Callable] = None) -> BuiltGraph:
    """The one way ``knn``, ``diffuse`` and ``audit`` make a graph of ``X`` against itself: ``build_index`` (``auto``
    within ``memory``: exact, PCA, IVF, then the join of cells), the graph written block by block (``save_graph``'s
    ``raw`` and/or ``npz``; or ``write(index, X, ids, k, npz=, raw=)``, the Ray engine's), and what an approximate
    graph cost in recall, measured on the user's own data."""
    knn = build_index(X, index, k, memory=memory, metric=metric, nprobe=nprobe, nlist=nlist, what=what, graph=True)
    rows = (write or save_graph)(knn, X, ids, k, npz=npz, raw=raw)
    recall = None
    if knn.index != "exact":
        found, sampled = sampled_recall(X, rows, k, metric, recall_sample)
        recall = {"recall_at_k": round(found, 4), "sampled_rows": sampled}
    return BuiltGraph(knn, rows, recall)


def save_graph(index, X, ids: Sequence[str], k: int, *, npz: Optional[str] = None,
               raw: Optional[str] = None) -> Callable[[np.ndarray], np.ndarray]:
    """Compute the k-NN graph of ``X`` with the fitted ``index`` (a ``KNNIndex`` or a ``CellJoin``) block by block and
    write it: ``raw`` (``write_raw``: memory stays flat whatever N is) and/or ``npz`` (I, D and ids, copied into the
    archive from the raw files a chunk at a time: a temporary raw graph beside it when no ``raw`` is asked). Every
    file appears under its final name only when all are complete. Returns a function that reads rows of I back (to
    score an approximate graph's recall)."""
    if not npz and not raw:
        raise bad_param("out", "a .npz path, a raw PREFIX, or both", None)
    suffixes = RAW_SUFFIXES if ids is not None else RAW_SUFFIXES[:2]  # no ids: the graph of a command's own use
    finals = [f"{raw}{ext}" for ext in suffixes] if raw else []
    n = len(X)

    def blocks() -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        at = 0
        for block in index.iter_graph(X, k):
            rows, D, I = block if len(block) == 3 else (slice(at, at + len(block[1])), *block)
            at += len(I)
            yield rows, D, I

    with atomic_paths(finals + ([npz] if npz else [])) as partials:
        work = None if raw else tempfile.mkdtemp(prefix=".imgfeat-graph-", dir=os.path.dirname(os.path.abspath(npz)))
        try:
            files = partials[:len(finals)] if raw else [os.path.join(work, f"graph{ext}") for ext in RAW_SUFFIXES]
            write_raw(files, blocks(), ids, n)
            if npz:
                write_npz(partials[-1], files, n, k, ids)
        finally:
            if work:
                shutil.rmtree(work, ignore_errors=True)
    if not raw:
        return lambda rows: npz_member(npz, "I")[rows]
    return raw_rows(raw, n, k)


def npz_member(path: str, name: str) -> np.ndarray:
    """An array of an uncompressed .npz (``write_npz``'s, ``np.savez``'s) memory-mapped where it lies in the file."""
    import struct
    import zipfile

    from numpy.lib import format as npformat

    with zipfile.ZipFile(path) as z:
        info = z.getinfo(f"{name}.npy")
    if info.compress_type != zipfile.ZIP_STORED:
        with np.load(path) as z:
            return z[name]
    with open(path, "rb") as fh:
        fh.seek(info.header_offset)
        local = fh.read(30)
        name_len, extra_len = struct.unpack("<HH", local[26:30])
        fh.seek(info.header_offset + 30 + name_len + extra_len)
        version = npformat.read_magic(fh)
        read = npformat.read_array_header_1_0 if version == (1, 0) else npformat.read_array_header_2_0
        shape, fortran, dtype = read(fh)
        offset = fh.tell()
    return np.memmap(path, dtype, "r", offset=offset, shape=shape, order="F" if fortran else "C")


def write_npz(path: str, raw_files: Sequence[str], n: int, k: int, ids: Sequence[str], chunk: int = 65_536) -> None:
    """``knn --out``: the .npz (I int32, D float32, ids as a fixed-width string array, as ``np.savez`` writes them)
    copied from a raw graph's files a chunk of rows at a time, never the graph or the ids whole in memory."""
    import zipfile

    from numpy.lib import format as npformat

    width = max((len(i) for i in ids), default=1)
    with open(path, "wb") as fh, zipfile.ZipFile(fh, "w", zipfile.ZIP_STORED, allowZip64=True) as z:
        for name, source, dtype in (("I", raw_files[0], np.int32), ("D", raw_files[1], np.float32)):
            mapped = np.memmap(source, dtype, "r", shape=(n, k)) if n else np.empty((0, k), dtype)
            with z.open(f"{name}.npy", "w", force_zip64=True) as out:
                npformat.write_array_header_2_0(out, {"descr": npformat.dtype_to_descr(np.dtype(dtype)),
                                                      "fortran_order": False, "shape": (n, k)})
                for s in range(0, n, chunk):
                    out.write(np.ascontiguousarray(mapped[s:s + chunk]).tobytes())
            del mapped
        text = np.dtype(f"<U{width}")
        with z.open("ids.npy", "w", force_zip64=True) as out:
            npformat.write_array_header_2_0(out, {"descr": npformat.dtype_to_descr(text), "fortran_order": False,
                                                  "shape": (n,)})
            for s in range(0, n, chunk):
                out.write(np.array(list(ids[s:s + chunk]), text).tobytes())


def raw_rows(raw: str, n: int, k: int) -> Callable[[np.ndarray], np.ndarray]:
    """The neighbour rows of a ``--raw`` graph's ``raw.int32`` (n x k), read from the file when asked."""
    return lambda rows: np.memmap(raw + RAW_SUFFIXES[0], np.int32, "r", shape=(n, k))[rows]


@dataclass
class RawGraph:
    """A kNN graph: I (N x k int32 neighbour rows, -1 where none) and D (N x k float32 similarities), in memory or
    memory-mapped from ``knn --raw`` files, with the ids of its rows (None: not known)."""

    I: np.ndarray
    D: np.ndarray
    ids: Optional[Sequence[str]] = None

    @property
    def n(self) -> int:
        return int(self.I.shape[0])

    @property
    def k(self) -> int:
        return int(self.I.shape[1])

    @classmethod
    def open(cls, prefix: str, ids: Optional[Sequence[str]] = None) -> "RawGraph":
        """The files of ``knn --raw PREFIX``, memory-mapped (nothing is read until used). ``ids``: the rows' ids as
        the caller holds them (a graph it has just written): kept, and ``PREFIX.ids.txt`` not read into a second
        copy (10M ids: 190 MB)."""
        paths = [Path(f"{prefix}{ext}") for ext in RAW_SUFFIXES]
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise ImgfeatError(f"--graph {prefix}: {', '.join(missing)} not found (write them with imgfeat knn "
                               f"--raw {prefix})")
        ids = read_lines(paths[2]) if ids is None else ids
        n = len(ids)
        size = paths[0].stat().st_size
        if n == 0 or size % (4 * n) or paths[1].stat().st_size != size:
            raise ImgfeatError(f"--graph {prefix}: the .int32 and .float32 files do not hold {n} rows of the same k "
                               f"(the .ids.txt's rows): a graph written by another run, or cut short")
        k = size // (4 * n)
        graph = cls(np.memmap(paths[0], np.int32, "r", shape=(n, k)),
                    np.memmap(paths[1], np.float32, "r", shape=(n, k)), ids)
        graph.check(f"--graph {prefix}")
        return graph

    def check(self, what: str) -> None:
        """Every neighbour is a row of the graph (or -1) and every similarity a number: a damaged or foreign file
        is one line naming it, before any work, never an IndexError or a silent wrong answer half-way (read a block
        at a time: bounded memory)."""
        for s, I, D in self.blocks():
            if len(I) and (int(I.min()) < -1 or int(I.max()) >= self.n):
                bad = int(np.flatnonzero((I < -1).any(axis=1) | (I >= self.n).any(axis=1))[0]) + s
                raise DamagedFileError(f"{what}: row {bad} names neighbour rows outside the graph's {self.n:,} rows "
                                   "(the .int32 file is damaged, or belongs to another graph): write it again with "
                                   "imgfeat knn --raw")
            if not np.isfinite(D).all():
                bad = int(np.flatnonzero(~np.isfinite(D).all(axis=1))[0]) + s
                raise DamagedFileError(f"{what}: row {bad} holds similarities that are not numbers (the .float32 "
                                   "file is damaged): write it again with imgfeat knn --raw")

    def blocks(self, rows: int = BLOCK_ROWS) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        for s in range(0, self.n, rows):
            yield s, np.asarray(self.I[s:s + rows]), np.asarray(self.D[s:s + rows])


def _weights(D: np.ndarray, gamma: float) -> np.ndarray:
    return np.maximum(D, 0).astype(np.float32) ** np.float32(gamma)


@dataclass
class DiskCSR:
    """A square CSR matrix whose arrays may be memory-mapped; ``matmul`` multiplies it with a dense block."""

    indptr: np.ndarray
    indices: np.ndarray
    data: np.ndarray
    folder: Optional[Path] = None  # its files, removed by ``close`` (None: arrays in memory)

    @property
    def n(self) -> int:
        return len(self.indptr) - 1

    def matmul(self, F: np.ndarray, out: np.ndarray, rows: int = BLOCK_ROWS) -> np.ndarray:
        """``out = self @ F`` (F: N x c), a block of rows at a time, the blocks shared among threads, one a core
        (scipy's CSR product lets go of the GIL: 2.4x on 2 cores; torch's is no faster and costs 260 MB to load)."""
        from concurrent.futures import ThreadPoolExecutor

        from scipy import sparse

        def block(s: int) -> None:
            e = min(self.n, s + rows)
            a, b = int(self.indptr[s]), int(self.indptr[e])
            out[s:e] = sparse.csr_matrix((self.data[a:b], self.indices[a:b], self.indptr[s:e + 1] - a),
                                         shape=(e - s, self.n)) @ F

        starts = range(0, self.n, rows)
        with ThreadPoolExecutor(max(1, min(len(starts), len(os.sched_getaffinity(0))))) as pool:
            for _ in pool.map(block, starts):  # an error in a block is raised here
                pass
        return out

    def close(self) -> None:
        self.indptr = self.indices = self.data = None
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)


def locality_order(X, cells: Optional[int] = None, block: int = BLOCK_ROWS, seed: int = 0) -> Optional[np.ndarray]:
    """A renumbering of the rows of ``X`` (int32: the old row at each new position) that makes the rows of each of
    ``cells`` k-means cells (default: one per ``ORDER_CELL_ROWS`` rows, at most ``ORDER_CELLS_MAX``) consecutive,
    in their old order within a cell: near neighbours then get near numbers. None where one cell would hold all.
    Trained on a seeded sample (``TRAIN_PER_CELL`` rows a cell), assigned a block at a time: memory of 4 bytes a row
    beyond that."""
    from .exact import l2_normalise, row_blocks, sample_rows
    from .knn import TRAIN_PER_CELL

    n = len(X)
    cells = int(cells or min(ORDER_CELLS_MAX, n // ORDER_CELL_ROWS))
    if cells < 2:
        return None
    faiss = require("faiss", "science", "label diffusion")
    sample = np.array(X[sample_rows(n, TRAIN_PER_CELL * cells, seed)], dtype=np.float32, order="C")
    l2_normalise(sample, out=sample)
    kmeans = faiss.Kmeans(sample.shape[1], cells, niter=10, seed=seed, spherical=True)
    kmeans.train(sample)
    del sample
    cell = np.empty(n, np.int32)
    s = 0
    for b in row_blocks(X, block, True):
        cell[s:s + len(b)] = kmeans.index.search(b, 1)[1][:, 0]
        s += len(b)
    return np.argsort(cell, kind="stable").astype(np.int32)


def ranks(order: np.ndarray) -> np.ndarray:
    """The inverse of a renumbering: the new number (int32) of each old row, where ``order`` lists the old row at each
    new position."""
    rank = np.empty(len(order), np.int32)
    rank[order] = np.arange(len(order), dtype=np.int32)
    return rank


def normalized_graph(graph: RawGraph, gamma: float, memory: int, folder: Optional[str] = None,
                     order: Optional[np.ndarray] = None) -> DiskCSR:
    """``S = D^-1/2 (W + W^T) D^-1/2`` of ``graph`` as a :class:`DiskCSR`. With all of its 2Nk edges fitting in
    ``memory`` bytes (about 3 x 12 bytes an edge while it is summed) it is built in memory; else on disk in
    ``folder`` (a temporary folder by default), one bucket of rows at a time, and memory-mapped. With ``order``
    (``locality_order``'s renumbering) S is that of the renumbered graph: its row i is the old row ``order[i]``."""
    check_rows(graph.n, "the diffusion graph")
    n = graph.n
    rank = None if order is None else ranks(order)
    deg = np.zeros(n, np.float64)
    for r, _, v in _directed_edges(graph, gamma, rank):  # row sums of W + W^T
        deg += np.bincount(r, weights=v, minlength=n)
    inv = (1.0 / np.sqrt(np.maximum(deg, 1e-12))).astype(np.float32)
    del deg
    edges = 2 * n * graph.k
    per_bucket = max(1, memory // (3 * EDGE_BYTES))
    buckets = max(1, -(-edges // per_bucket))
    if buckets == 1:
        rows, cols, vals = (np.concatenate(a) for a in zip(*_directed_edges(graph, gamma, rank)))
        S = DiskCSR(*_summed(rows, cols, vals, inv, 0, n))
        del rows, cols, vals
    else:
        S = _on_disk(graph, gamma, inv, buckets, folder, rank)
    # the buckets' and the degrees' temporaries, freed: glibc keeps freed blocks below its (growing) mmap threshold,
    # which the class scores allocated next cannot reuse (10M rows: 174 MB held through the diffusion, measured)
    release_freed_heap()
    return S


def _directed_edges(graph: RawGraph, gamma: float,
                    rank: Optional[np.ndarray] = None) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The edges of ``W + W^T``, a block of the raw graph at a time: (rows, cols, weights) of each neighbour edge,
    then of its reverse (a missing neighbour, -1, left out); rows renumbered by ``rank`` (old row -> new) if given."""
    for s, I, D in graph.blocks():
        w = _weights(D, gamma)
        src = np.arange(s, s + len(I), dtype=np.int32)
        ok = I >= 0
        if rank is not None:
            src, I = rank[src], np.where(ok, rank[np.maximum(I, 0)], -1)
        src = np.broadcast_to(src[:, None], I.shape)
        for r, c in ((src, I), (I, src)):
            yield r[ok], c[ok], w[ok]


def _summed(rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, inv: np.ndarray, lo: int, hi: int):
    """The CSR arrays of rows [lo, hi) (indptr from 0), duplicate edges summed, scaled by inv[row] * inv[col]."""
    from scipy import sparse

    m = sparse.coo_matrix((vals, (rows - lo, cols)), shape=(hi - lo, len(inv))).tocsr()
    m.sum_duplicates()
    data = m.data.astype(np.float32) * inv[lo:hi][np.repeat(np.arange(hi - lo), np.diff(m.indptr))] * \
        inv[m.indices]
    return m.indptr.astype(np.int64), m.indices.astype(np.int32), data.astype(np.float32)


def _on_disk(graph: RawGraph, gamma: float, inv: np.ndarray, buckets: int, folder: Optional[str],
             rank: Optional[np.ndarray]) -> DiskCSR:
    n = graph.n
    work = Path(tempfile.mkdtemp(prefix="imgfeat-graph-", dir=folder))
    bounds = np.linspace(0, n, buckets + 1).astype(np.int64)
    files = [open(work / f"bucket.{b:05d}", "wb") for b in range(buckets)]
    try:
        for r, c, v in _directed_edges(graph, gamma, rank):
            which = np.searchsorted(bounds, r, side="right") - 1
            order = np.argsort(which, kind="stable")
            r, c, v, which = r[order], c[order], v[order], which[order]
            cuts = np.searchsorted(which, np.arange(buckets + 1))
            for b in np.flatnonzero(np.diff(cuts)):
                sl = slice(cuts[b], cuts[b + 1])
                rec = np.empty(sl.stop - sl.start, [("r", "<i4"), ("c", "<i4"), ("v", "<f4")])
                rec["r"], rec["c"], rec["v"] = r[sl], c[sl], v[sl]
                files[b].write(rec.tobytes())
    finally:
        for fh in files:
            fh.close()
    nnz = 0
    with open(work / "indices", "wb") as fi, open(work / "data", "wb") as fd:
        indptr = np.zeros(n + 1, np.int64)
        for b in range(buckets):
            lo, hi = int(bounds[b]), int(bounds[b + 1])
            rec = np.fromfile(work / f"bucket.{b:05d}", [("r", "<i4"), ("c", "<i4"), ("v", "<f4")])
            os.unlink(work / f"bucket.{b:05d}")
            ptr, idx, data = _summed(rec["r"], rec["c"], rec["v"], inv, lo, hi)
            del rec
            indptr[lo + 1:hi + 1] = ptr[1:] + nnz
            nnz += len(idx)
            fi.write(idx.tobytes())
            fd.write(data.tobytes())
    np.save(work / "indptr.npy", indptr)
    del indptr
    return DiskCSR(np.load(work / "indptr.npy", mmap_mode="r"),
                   np.memmap(work / "indices", np.int32, "r", shape=(nnz,)) if nnz else np.zeros(0, np.int32),
                   np.memmap(work / "data", np.float32, "r", shape=(nnz,)) if nnz else np.zeros(0, np.float32), work)


def propagate(S: DiskCSR, sources: tuple[np.ndarray, np.ndarray, np.ndarray], n_classes: int, iterations: int,
              alpha: float, columns: int, each=None) -> Iterator[tuple[int, np.ndarray]]:
    """``F <- alpha S F + (1 - alpha) Y`` for ``iterations`` steps from ``F = Y``, where Y is zero but at the
    ``sources`` (rows, class columns, values), on ``columns`` classes at a time: yields (first class, F block N x
    columns) after the last step, valid until the next is asked for (the blocks share two buffers). ``each(t, first
    class, F block)`` is called after every step t (1-based)."""
    rows, cols, vals = sources
    n = S.n
    width = min(n_classes, columns)
    # two buffers for every block (the last, narrower one uses their fronts): a block yielded and still held by the
    # caller while the next is set up never makes it four (3M rows in 1 GiB: 2.1 GB measured before, BENCHMARKS.md)
    buffers = np.empty(n * width, np.float32), np.empty(n * width, np.float32)
    for c0 in range(0, n_classes, columns):
        c1 = min(n_classes, c0 + columns)
        sel = (cols >= c0) & (cols < c1)
        r, c, v = rows[sel], cols[sel] - c0, vals[sel].astype(np.float32)
        F, out = (b[:n * (c1 - c0)].reshape(n, c1 - c0) for b in buffers)
        F.fill(0)
        F[r, c] = v
        for t in range(1, iterations + 1):
            S.matmul(F, out)
            out *= np.float32(alpha)
            out[r, c] += np.float32(1 - alpha) * v
            F, out = out, F
            if each is not None:
                each(t, c0, F)
        yield c0, F
