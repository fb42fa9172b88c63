"""Near-duplicate groups: each vector's k nearest neighbours (cosine, blocks of queries), pairs above a
threshold joined into connected components. Memory is the index plus N x k, never N x N.

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
                    progress: Optional[Callable[[int], None]] = None) -> tuple[np.ndarray, np.ndarray]:
    """(D, I): the cosine similarities and rows of each vector's ``k`` nearest others (-1 where fewer
    exist). ``knn``: an already fitted cosine index over X to reuse; ``progress(rows_done)`` is called
    after each block of queries."""
    knn = knn or KNNIndex(metric="cosine", index=index).fit(X)
    n, kk = len(X), min(k + 1, len(X))
    D, I = np.empty((n, kk), np.float32), np.empty((n, kk), np.int32)
    for s in range(0, n, knn.block):
        D[s:s + knn.block], I[s:s + knn.block] = knn.search(X[s:s + knn.block], kk)
        if progress is not None:
            progress(min(n, s + knn.block))
    return D, I


def groups_at(D: np.ndarray, I: np.ndarray, threshold: float) -> list[np.ndarray]:
    """Rows grouped by chains of similarity >= ``threshold``: arrays of rows (size >= 2), largest first,
    ties by first row."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    check_threshold(threshold)
    n = len(D)
    src, col = np.nonzero((D >= threshold) & (I >= 0))
    dst = I[src, col]
    keep = dst != src
    graph = coo_matrix((np.ones(int(keep.sum()), np.int8), (src[keep], dst[keep])), shape=(n, n))
    _, comp = connected_components(graph, directed=False)
    sizes = np.bincount(comp)
    order = np.argsort(comp, kind="stable")  # rows grouped by component, ascending within each
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    groups = [order[starts[c]:starts[c] + sizes[c]] for c in np.flatnonzero(sizes > 1)]
    return sorted(groups, key=lambda g: (-len(g), int(g[0])))


def duplicate_groups(X, ids: list[str], *, threshold: float = 0.95, k: int = 10,
                     index: str = "exact") -> list[list[str]]:
    """Groups (size >= 2) of ids whose cosine similarity chains above ``threshold``.

    ``X`` may be a memory map or a store's matrix: it is read in blocks."""
    check_threshold(threshold)
    D, I = neighbour_lists(X, k, index)
    return [[ids[i] for i in g] for g in groups_at(D, I, threshold)]
