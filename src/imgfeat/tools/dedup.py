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
    other, in one group). Representatives are taken greedily, the row with the most pairs above the threshold
    first (ties: the lower row); each takes its not yet grouped neighbours above the threshold. Groups are
    arrays of rows, representative first then ascending, largest group first, ties by representative."""
    from scipy.sparse import coo_matrix

    check_threshold(threshold)
    n = len(D)
    src, col = np.nonzero((D >= threshold) & (I >= 0))
    dst = I[src, col].astype(np.int64)
    keep = dst != src
    src, dst = src[keep], dst[keep]
    # symmetric: a pair found from either side links both (the lists are k-limited and may be one-sided)
    adj = coo_matrix((np.ones(2 * len(src), np.int8), (np.concatenate([src, dst]), np.concatenate([dst, src]))),
                     shape=(n, n)).tocsr()
    adj.sum_duplicates()
    degree = np.diff(adj.indptr)
    order = np.lexsort((np.arange(n), -degree))
    grouped = np.zeros(n, bool)
    groups = []
    for r in order[: int((degree > 0).sum())]:
        if grouped[r]:
            continue
        members = adj.indices[adj.indptr[r]:adj.indptr[r + 1]]
        members = np.sort(members[~grouped[members]])
        if len(members) == 0:
            continue
        grouped[r] = True
        grouped[members] = True
        groups.append(np.concatenate([[r], members]).astype(np.int64))
    return sorted(groups, key=lambda g: (-len(g), int(g[0])))


def duplicate_groups(X, ids: list[str], *, threshold: float = 0.95, k: int = 10,
                     index: str = "exact", knn: Optional[KNNIndex] = None) -> list[list[str]]:
    """Groups (size >= 2) of ids, representative first, each member's cosine to it >= ``threshold``.

    ``X`` may be a memory map or a store's matrix: it is read in blocks. ``knn``: a fitted cosine index over X."""
    check_threshold(threshold)
    D, I = neighbour_lists(X, k, index, knn=knn)
    return [[ids[i] for i in g] for g in groups_at(D, I, threshold)]
