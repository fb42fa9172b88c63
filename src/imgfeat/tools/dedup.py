"""Near-duplicate groups: each vector's k nearest neighbours (cosine, blocks of queries),
pairs above a threshold joined by union-find. Memory is the index plus N x k, never N x N."""

from __future__ import annotations

import numpy as np

from .knn import KNNIndex


def duplicate_groups(X, ids: list[str], *, threshold: float = 0.95, k: int = 10,
                     index: str = "exact") -> list[list[str]]:
    """Groups (size >= 2) of ids whose cosine similarity chains above ``threshold``.

    ``X`` may be a memory map or a store's matrix: it is read in blocks."""
    knn = KNNIndex(metric="cosine", index=index).fit(X)
    parent = np.arange(len(ids))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    D, I = knn.search(X, min(k + 1, len(ids)))
    for i, j in zip(*np.nonzero((D >= threshold) & (I >= 0))):
        a, b = root(i), root(int(I[i, j]))
        if a != b:
            parent[max(a, b)] = min(a, b)
    groups: dict[int, list[str]] = {}
    for i in range(len(ids)):
        groups.setdefault(root(i), []).append(ids[i])
    return sorted((g for g in groups.values() if len(g) > 1), key=lambda g: (-len(g), g[0]))
