"""Near-duplicate groups: each vector's k nearest neighbours (cosine, blocks of queries), then groups whose
every member is within the threshold of the group's representative. Memory is the index plus N x k (which may be
memory-mapped files), never N x N.

The neighbour lists are computed once (``neighbour_lists``) and grouped at any threshold (``groups_at``: 3.4 s
at 1M image-like rows, 2 minutes at 10M, on 2 cores at 0.95), which is what a threshold slider needs. The grouping
streams: 12 bytes a row and a batch of pairs, whatever the number of pairs."""

from __future__ import annotations

import os
import tempfile
from typing import Callable, Iterator, Optional, Sequence

import numpy as np

from ..errors import bad_param
from .exact import check_rows
from .knn import KNNIndex

THRESHOLD_RANGE = (-1.0, 1.0)  # cosine similarity
ROW_BLOCK = 65536  # rows of the neighbour lists read at a time while grouping
PAIR_BATCH = 8 * 2**20  # pairs above the threshold sorted and taken at a time (about 32 bytes each while sorted)
PAIR_BYTES = 32
_KEY_SHIFT = 12  # a batch's bounds are sims' order keys in steps of 2^12 (a similarity step of 2.4e-4 near 1)


def check_threshold(threshold: float) -> float:
    lo, hi = THRESHOLD_RANGE
    if not lo <= threshold <= hi:
        raise bad_param("threshold", f"a cosine similarity in [{lo:g}, {hi:g}]", threshold)
    return float(threshold)


def neighbour_lists(X, k: int = 10, index: str = "exact", knn: Optional[KNNIndex] = None,
                    progress: Optional[Callable[[int], None]] = None,
                    block: Optional[int] = None, out: Optional[Callable] = None) -> tuple[np.ndarray, np.ndarray]:
    """(D, I): the cosine similarities and rows of each vector's ``k`` nearest others (-1 where fewer
    exist). ``knn``: an already fitted cosine index over X to reuse, or a ``CellJoin`` over it (its graph: k others);
    ``progress(rows_done)`` is called after each block of ``block`` queries (default: the index's block).
    ``out(shape, dtype)``: where the two arrays are made (e.g. memory maps of files: 88 bytes a row at k=10 that
    need not be held; default: in memory)."""
    check_rows(len(X), "the neighbour lists")
    knn = knn or KNNIndex(metric="cosine", index=index).fit(X)
    n, kk = len(X), min(k + 1, len(X))
    block = block or knn.block
    out = out or np.empty
    D, I = out((n, kk), np.float32), out((n, kk), np.int32)
    if not hasattr(knn, "search"):  # a CellJoin: its graph, a group of cells at a time (each row's own entry out)
        D[:, -1], I[:, -1], done = -np.inf, -1, 0
        for rows, Dc, Ic in knn.iter_graph(X, kk - 1, block):
            D[rows, :-1], I[rows, :-1] = Dc, Ic
            done += len(rows)
            if progress is not None:
                progress(done)
        return D, I
    for s in range(0, n, block):
        D[s:s + block], I[s:s + block] = knn.search(X[s:s + block], kk)
        if progress is not None:
            progress(min(n, s + block))
    return D, I


class Groups(Sequence):
    """Duplicate groups as two arrays, no Python object per group: ``rows`` (int32), group after group, each
    representative first then its members ascending, and ``starts`` (the offset of each group, then the end).
    ``groups[i]`` is an array of rows; slices and iteration give arrays as well."""

    def __init__(self, rows: np.ndarray, starts: np.ndarray) -> None:
        self.rows, self.starts = rows, starts

    def __len__(self) -> int:
        return len(self.starts) - 1

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"group {i} of {len(self)}")
        return self.rows[self.starts[i]:self.starts[i + 1]]

    @property
    def duplicates(self) -> int:
        """Rows beyond each group's representative: those a user could drop."""
        return len(self.rows) - len(self)


def _order_key(sim: np.ndarray) -> np.ndarray:
    """uint32 keys in the order of the float32 similarities (finite ones)."""
    u = np.ascontiguousarray(sim, np.float32).view(np.uint32)
    return np.where(u >> 31, ~u, u | np.uint32(0x80000000))


def _pairs(D, I, s: int, e: int, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The pairs above ``threshold`` that rows s..e own: (a, b, sim), a < b (int32), each pair of the lists once
    at the best of its two figures. A pair is owned by its lower row when the lower row's list holds it above the
    threshold, else by its higher row; a row listed twice in one list is one pair."""
    Db, Ib = np.asarray(D[s:e]), np.asarray(I[s:e])
    r, c = np.nonzero((Db >= threshold) & (Ib >= 0) & (Ib != np.arange(s, e, dtype=Ib.dtype)[:, None]))
    j, sim = Ib[r, c].astype(np.int32), Db[r, c]
    r = (r + s).astype(np.int32)
    order = np.argsort(j, kind="stable")  # the other side's lists read in row order
    back = np.empty_like(order)
    back[order] = np.arange(len(order))
    Ij, Dj = np.asarray(I[j[order]])[back], np.asarray(D[j[order]])[back]
    rev = np.where(Ij == r[:, None], Dj, -np.inf).max(axis=1) if len(r) else np.empty(0, np.float32)
    lower = r < j
    keep = lower | ~(rev >= threshold)  # the higher row owns a pair the lower row's list does not hold above it
    sim = np.where(lower, np.maximum(sim, rev), sim).astype(np.float32)[keep]
    a, b = np.minimum(r, j)[keep], np.maximum(r, j)[keep]
    if len(a):  # a row listed twice: one pair, at its best figure
        order = np.lexsort((-sim, b, a))
        a, b, sim = a[order], b[order], sim[order]
        first = np.ones(len(a), bool)
        first[1:] = (a[1:] != a[:-1]) | (b[1:] != b[:-1])
        a, b, sim = a[first], b[first], sim[first]
    return a, b, sim


def groups_at(D: np.ndarray, I: np.ndarray, threshold: float, *, block: int = ROW_BLOCK,
              batch: int = PAIR_BATCH, folder: Optional[str] = None) -> Groups:
    """Groups (size >= 2) in which every member's similarity to the group's representative, its first row, is
    >= ``threshold`` (not chains: single linkage would put two images that share a neighbour, but not each
    other, in one group). Pairs above the threshold are taken closest first: a pair of rows not yet grouped
    starts a group, represented by the one with more pairs above the threshold (ties: the lower row); a row not
    yet grouped joins a group when it pairs with its representative. Closest first, a near-exact copy is
    grouped with its original even in a dense collection where both are near many others (taking the rows with
    the most pairs first left copies ungrouped or apart from their original there). Largest group first, ties by
    representative.

    Memory is O(N) small whatever the number of pairs: D and I (which may be memory maps) are read ``block`` rows
    at a time, each pair found once and written to a file in ``folder`` (default: the system's temporary folder;
    12 bytes a pair) while each row's pairs and a histogram of their similarities are counted; then the pairs are
    taken in batches of about ``batch``, from the closest down (a batch is larger only where more pairs than that
    share a similarity to 2.4e-4), each batch read from the file, sorted and taken in order. Besides the batch:
    12 bytes a row (each row's pair count and group)."""
    check_threshold(threshold)
    n = len(D)
    degree = np.zeros(n, np.int32)
    hist = np.zeros(2 ** (32 - _KEY_SHIFT), np.int64)
    rep = np.full(n, -1, np.int32)
    with tempfile.TemporaryDirectory(prefix="imgfeat-pairs-", dir=folder) as work:
        names = [os.path.join(work, name) for name in ("a.int32", "b.int32", "sim.float32")]
        files = [open(name, "wb") for name in names]
        try:
            for s in range(0, n, block):
                pairs = _pairs(D, I, s, min(n, s + block), threshold)
                a, b, sim = pairs
                np.add.at(degree, a, 1)
                np.add.at(degree, b, 1)
                hist += np.bincount(_order_key(sim) >> _KEY_SHIFT, minlength=len(hist))
                for fh, values in zip(files, pairs):
                    fh.write(values.tobytes())
        finally:
            for fh in files:
                fh.close()
        total = int(hist.sum())
        spilled = [np.memmap(name, dtype, "r", shape=(total,)) if total else np.zeros(0, dtype)
                   for name, dtype in zip(names, (np.int32, np.int32, np.float32))]
        for path in _bucketed(spilled, _batches(hist, batch), work, block * 16):  # closest first
            pairs = np.fromfile(path, PAIR)
            os.unlink(path)
            order = np.lexsort((pairs["b"], pairs["a"], -pairs["sim"]))  # closest first; ties by the pair's rows
            a, b = pairs["a"][order], pairs["b"][order]
            del pairs, order
            _take(a, b, degree, rep)
        del spilled
    return _by_group(rep)


def _batches(hist: np.ndarray, batch: int) -> list[tuple[int, int]]:
    """Ranges [lo, hi) of similarity key steps, from the highest down, each holding about ``batch`` pairs."""
    steps = np.flatnonzero(hist)[::-1]
    out, hi, held = [], None, 0
    for step in steps.tolist():
        if hi is None:
            hi = step + 1
        held += int(hist[step])
        if held >= batch:
            out.append((step, hi))
            hi, held = None, 0
    if hi is not None:
        out.append((int(steps[-1]), hi))
    return out


PAIR = np.dtype([("a", "<i4"), ("b", "<i4"), ("sim", "<f4")])
OPEN_BUCKETS = 256  # bucket files written at once (more batches: one more pass over the pairs per 256)


def _bucketed(spilled, ranges: list[tuple[int, int]], work: str, chunk: int) -> Iterator[str]:
    """A file of the pairs of each batch of ``ranges`` (similarity key steps, closest first), in that order (the
    caller reads and removes it): the pair files are read once (per ``OPEN_BUCKETS`` batches) and each pair appended
    to its batch's file, so the pairs are read twice in all, never once per batch (pairs x batches)."""
    a_all, b_all, sim_all = spilled
    step_batch = np.full(2 ** (32 - _KEY_SHIFT), -1, np.int32)
    for j, (lo, hi) in enumerate(ranges):
        step_batch[lo:hi] = j
    for first in range(0, len(ranges), OPEN_BUCKETS):
        last = min(len(ranges), first + OPEN_BUCKETS)
        paths = [os.path.join(work, f"batch-{j}.pairs") for j in range(first, last)]
        files = [open(path, "wb") for path in paths]
        try:
            for s in range(0, len(a_all), chunk):
                which = step_batch[_order_key(sim_all[s:s + chunk]) >> _KEY_SHIFT]
                inside = np.flatnonzero((which >= first) & (which < last))
                if not len(inside):
                    continue
                rec = np.empty(len(inside), PAIR)
                rec["a"], rec["b"], rec["sim"] = a_all[s:s + chunk][inside], b_all[s:s + chunk][inside], \
                    sim_all[s:s + chunk][inside]
                which = which[inside]
                order = np.argsort(which, kind="stable")
                rec, which = rec[order], which[order]
                cuts = np.flatnonzero(np.r_[True, which[1:] != which[:-1], True])
                for c0, c1 in zip(cuts[:-1], cuts[1:]):
                    files[int(which[c0]) - first].write(rec[c0:c1].tobytes())
        finally:
            for fh in files:
                fh.close()
        yield from paths


def _take(a: np.ndarray, b: np.ndarray, degree: np.ndarray, rep: np.ndarray) -> None:
    """Takes the pairs (a, b) in order into ``rep`` (each row's representative, -1: in no group)."""
    swap = degree[b] > degree[a]  # the first of each pair is its representative should it start a group
    a, b = np.where(swap, b, a), np.where(swap, a, b)
    # a pair alone (each row in no other pair) is a group of its own; the rest are taken in order, one at a time
    alone = (degree[a] == 1) & (degree[b] == 1)
    rep[a[alone]] = rep[b[alone]] = a[alone]
    a, b = a[~alone], b[~alone]
    view = memoryview(rep)  # Python ints in and out without numpy scalars
    for s in range(0, len(a), ROW_BLOCK):  # a block of pairs as Python ints at a time (36 bytes each)
        for r, m in zip(a[s:s + ROW_BLOCK].tolist(), b[s:s + ROW_BLOCK].tolist()):
            rr, rm = view[r], view[m]
            if rr < 0 and rm < 0:
                view[r] = view[m] = r
            elif rm < 0 and rr == r:
                view[m] = r
            elif rr < 0 and rm == m:
                view[r] = m


def _by_group(rep: np.ndarray) -> Groups:
    rows = np.flatnonzero(rep >= 0).astype(np.int32)
    reps = rep[rows]
    order = np.lexsort((rows != reps, reps))  # by group, representative first, then ascending (rows ascend)
    rows, reps = rows[order], reps[order]
    del order
    starts = np.flatnonzero(np.r_[True, reps[1:] != reps[:-1]]) if len(rows) else np.zeros(0, np.int64)
    del reps
    sizes = np.diff(np.r_[starts, len(rows)])
    by = np.lexsort((rows[starts], -sizes))  # largest group first, ties by representative
    sizes = sizes[by]
    new_starts = np.r_[0, np.cumsum(sizes)]
    take = np.arange(len(rows)) - np.repeat(new_starts[:-1] - starts[by], sizes)
    return Groups(rows[take], new_starts.astype(np.int64))


def grouping_bytes(n: int, batch: int = PAIR_BATCH) -> int:
    """What ``groups_at`` holds over n rows: 12 bytes a row and a batch of pairs while it is sorted."""
    return 12 * n + PAIR_BYTES * batch


def group_lines(groups: Groups, ids: Sequence[str], rows: int = ROW_BLOCK) -> Iterator[str]:
    """``group<TAB>id`` lines (``imgfeat dedup --out``), each group's representative first, as text chunks of about
    ``rows`` lines: the ids are read a chunk at a time (a ``StringColumn``'s ``take``), never all as objects."""
    for s in range(0, len(groups.rows), rows):
        chunk = groups.rows[s:s + rows]
        names = ids.take(chunk) if hasattr(ids, "take") else [ids[i] for i in chunk.tolist()]
        numbers = np.searchsorted(groups.starts, np.arange(s, s + len(chunk)), side="right") - 1
        yield "".join(f"{g}\t{i}\n" for g, i in zip(numbers.tolist(), names))


def duplicate_groups(X, ids: list[str], *, threshold: float = 0.95, k: int = 10,
                     index: str = "exact", knn: Optional[KNNIndex] = None) -> list[list[str]]:
    """Groups (size >= 2) of ids, representative first, each member's cosine to it >= ``threshold``.

    ``X`` may be a memory map or a store's matrix: it is read in blocks. ``knn``: a fitted cosine index over X."""
    check_threshold(threshold)
    D, I = neighbour_lists(X, k, index, knn=knn)
    return [[ids[i] for i in g.tolist()] for g in groups_at(D, I, threshold)]
