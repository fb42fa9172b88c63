"""Searches of a fitted ``KNNIndex`` restricted to some of its rows (``KNNIndex.subset``, ``search(..., subset=)``):
serve's search within a label or a split."""

from __future__ import annotations

import numpy as np

from ..errors import bad_param, require


class Subset:
    """Searches of a fitted ``KNNIndex`` restricted to the rows of a boolean mask: a faiss ID selector where the index
    takes one, else an over-fetch filtered by the mask (each query asks for more until k are found or all rows
    were seen)."""

    def __init__(self, knn, mask: np.ndarray) -> None:  # knn: a fitted KNNIndex (not imported: knn imports this)
        faiss = require("faiss", "science", "kNN graphs")
        self.knn, self.mask = knn, np.asarray(mask, bool)
        if len(self.mask) != knn.n_:
            raise bad_param("mask", f"a boolean array of the {knn.n_} indexed rows", f"{len(self.mask)} values")
        self._bits = np.packbits(self.mask, bitorder="little")  # kept alive: the selector points into it
        sel = faiss.IDSelectorBitmap(knn.n_, faiss.swig_ptr(self._bits))
        ivf = faiss.try_extract_index_ivf(knn.index_)
        self._params = faiss.SearchParametersIVF(sel=sel, nprobe=ivf.nprobe) if ivf is not None else \
            faiss.SearchParameters(sel=sel)
        self._selector = sel

    def search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Raw faiss (D, I) of the normalised queries ``q`` among the subset's rows."""
        idx = self.knn.index_
        if self._params is not None:
            try:
                return idx.search(q, k, params=self._params)
            except RuntimeError:  # an index type without selectors: over-fetch and filter from now on
                self._params = None
        n, fetch = self.knn.n_, min(self.knn.n_, k * 20)
        while True:
            D, I = idx.search(q, fetch)
            keep = (I >= 0) & self.mask[np.maximum(I, 0)]
            if fetch >= n or (keep.sum(axis=1) >= k).all():
                break
            fetch = min(n, fetch * 4)
        outD = np.full((len(q), k), np.inf if idx.metric_type == 1 else -np.inf, D.dtype)
        outI = np.full((len(q), k), -1, np.int64)
        for j in range(len(q)):
            d, i = D[j][keep[j]][:k], I[j][keep[j]][:k]
            outD[j, :len(d)], outI[j, :len(i)] = d, i
        return outD, outI
