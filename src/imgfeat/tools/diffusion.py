"""Label propagation over a kNN graph (low-shot learning with large-scale diffusion, Douze et
al., CVPR'18): a few labelled points, many unlabelled (and optional background) points."""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from ..errors import ImgfeatError
from ._base import Params
from .knn import KNNIndex


class LabelDiffusion(Params):
    """Build a k-NN graph (cosine), weight edges by ``max(sim, 0) ** gamma``, symmetrise,
    normalise ``D^-1/2 W D^-1/2`` and iterate ``F <- alpha S F + (1 - alpha) Y`` with the
    labelled rows as sources. Fitted (as ``sklearn.semi_supervised.LabelSpreading``): ``classes_``,
    ``label_distributions_``, ``transduction_`` (the label of every row)."""

    def __init__(self, *, k: int = 30, iterations: int = 20, alpha: float = 0.99, gamma: float = 3.0,
                 index: str = "exact") -> None:
        self.k, self.iterations, self.alpha, self.gamma, self.index = k, iterations, alpha, gamma, index

    def fit(self, X: np.ndarray, y: Sequence[Optional[str]]) -> "LabelDiffusion":
        """``y[i]`` is the label of row i, or None for unlabelled (and background) rows."""
        from scipy import sparse

        y = np.asarray(y, dtype=object)
        labelled = np.array([v is not None for v in y])
        self.classes_ = np.array(sorted({v for v in y if v is not None}))
        if len(self.classes_) < 2:
            raise ImgfeatError(f"diffusion needs labels of at least 2 classes, got {self.classes_.tolist()}")
        n = len(X)
        D, I = KNNIndex(metric="cosine", index=self.index).fit(X).graph(X, min(self.k, n - 1))
        W = sparse.csr_matrix((np.maximum(D, 0).ravel() ** self.gamma, (np.repeat(np.arange(n), I.shape[1]),
                                                                         I.ravel())), shape=(n, n))
        W = W + W.T
        deg = np.asarray(W.sum(axis=1)).ravel()
        inv = 1.0 / np.sqrt(np.maximum(deg, 1e-12))
        S = sparse.diags(inv) @ W @ sparse.diags(inv)
        index = {c: j for j, c in enumerate(self.classes_)}
        Y = np.zeros((n, len(self.classes_)), np.float32)
        rows = np.flatnonzero(labelled)
        Y[rows, [index[v] for v in y[rows]]] = 1.0
        F = Y.copy()
        for _ in range(self.iterations):
            F = self.alpha * (S @ F) + (1 - self.alpha) * Y
        self.label_distributions_ = F
        self.transduction_ = self.classes_[F.argmax(axis=1)]
        return self

    def predict(self) -> np.ndarray:
        """The label of every row (the argmax of its diffused scores)."""
        return self.transduction_
