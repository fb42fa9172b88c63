"""Near-duplicate groups: each vector's k nearest neighbours (cosine, blocks of queries), then groups whose
every member is within the threshold of the group's representative. Memory is the index plus N x k, never
N x N.

The neighbour lists are computed once (``neighbour_lists``) and grouped at any threshold
(``groups_at``) in a fraction of a second, which is what a threshold slider needs."""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np

from ..errors import bad_param
from .knn import KNNIndex

THRESHOLD_RANGE = (-1.0, 1.0)  # cosine similarity


def check_threshold(threshold: float) -> float:
    lo, hi = THRESHOLD_RANGE
    if not lo <= threshold <= hi:
        raise bad_param("threshold", f"a cosine similarity in [{lo:g}, {hi:g}]", threshold)
    return float(threshold)


def neighbour_lists(X, k: int = 10, index: str = "exact", knn: Optional[KNNIndex] = None,
                    progress: Optional[Callable[[int], None]] = None,
                    block: Optional[int] = None) -> tuple[np.ndarray, np.ndarray]:
    """(D, I): the cosine similarities and rows of each vector's ``k`` nearest others (-1 where fewer
    exist). ``knn``: an already fitted cosine index over X to reuse, or a ``CellJoin`` over it (its graph: k others);
    ``progress(rows_done)`` is called after each block of ``block`` queries (default: the index's block)."""
    knn = knn or KNNIndex(metric="cosine", index=index).fit(X)
    n, kk = len(X), min(k + 1, len(X))
    block = block or knn.block
    D, I = np.empty((n, kk), np.float32), np.empty((n, kk), np.int32)
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


def groups_at(D: np.ndarray, I: np.ndarray, threshold: float) -> list[np.ndarray]:
    """Groups (size >= 2) in which every member's similarity to the group's representative, its first row, is
    >= ``threshold`` (not chains: single linkage would put two images that share a neighbour, but not each
    other, in one group). Pairs above the threshold are taken closest first: a pair of rows not yet grouped
    starts a group, represented by the one with more pairs above the threshold (ties: the lower row); a row not
    yet grouped joins a group when it pairs with its representative. Closest first, a near-exact copy is
    grouped with its original even in a dense collection where both are near many others (taking the rows with
    the most pairs first left copies ungrouped or apart from their original there). Groups are arrays of rows,
    representative first then ascending, largest group first, ties by representative."""
    check_threshold(threshold)
    n = len(D)
    src, col = np.nonzero((D >= threshold) & (I >= 0))
    dst = I[src, col].astype(np.int64)
    sim = D[src, col]
    keep = dst != src
    a, b, sim = np.minimum(src, dst)[keep], np.maximum(src, dst)[keep], sim[keep]
    # a pair found from both sides is one pair (the lists are k-limited and may be one-sided), at its best figure
    order = np.lexsort((-sim, a * n + b))
    a, b, sim = a[order], b[order], sim[order]
    first = np.ones(len(a), bool)
    first[1:] = (a[1:] != a[:-1]) | (b[1:] != b[:-1])
    a, b, sim = a[first], b[first], sim[first]
    order = np.lexsort((b, a, -sim))  # closest first; ties by the pair's rows
    a, b = a[order], b[order]
    degree = np.bincount(np.concatenate([a, b]), minlength=n)
    swap = (degree[b] > degree[a])  # the first of each pair is its representative should it start a group
    a, b = np.where(swap, b, a), np.where(swap, a, b)
    # a pair alone (each row in no other pair) is a group of its own; the rest are taken in order, one at a time
    alone = (degree[a] == 1) & (degree[b] == 1)
    rep_of: dict[int, int] = {}
    for r, m in zip(a[~alone].tolist(), b[~alone].tolist()):
        rr, rm = rep_of.get(r), rep_of.get(m)
        if rr is None and rm is None:
            rep_of[r] = rep_of[m] = r
        elif rm is None and rr == r:
            rep_of[m] = r
        elif rr is None and rm == m:
            rep_of[r] = m
    rows = np.concatenate([np.fromiter(rep_of.keys(), np.int64, len(rep_of)), a[alone], b[alone]])
    reps = np.concatenate([np.fromiter(rep_of.values(), np.int64, len(rep_of)), a[alone], a[alone]])
    order = np.lexsort((rows, rows != reps, reps))  # by group, representative first, then ascending
    rows, reps = rows[order], reps[order]
    groups = np.split(rows, np.flatnonzero(reps[1:] != reps[:-1]) + 1) if len(rows) else []
    return sorted(groups, key=lambda g: (-len(g), int(g[0])))


def duplicate_groups(X, ids: list[str], *, threshold: float = 0.95, k: int = 10,
                     index: str = "exact", knn: Optional[KNNIndex] = None) -> list[list[str]]:
    """Groups (size >= 2) of ids, representative first, each member's cosine to it >= ``threshold``.

    ``X`` may be a memory map or a store's matrix: it is read in blocks. ``knn``: a fitted cosine index over X."""
    check_threshold(threshold)
    D, I = neighbour_lists(X, k, index, knn=knn)
    return [[ids[i] for i in g] for g in groups_at(D, I, threshold)]
