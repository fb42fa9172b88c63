"""Label propagation over a kNN graph (low-shot learning with large-scale diffusion, Douze et
al., CVPR'18): a few labelled points, many unlabelled (and optional background) points."""

from __future__ import annotations

from typing import Callable, Iterator, Optional, Sequence

import numpy as np

from ..errors import ImgfeatError, bad_param
from ._base import Params
from .knn import KNNIndex


class LabelDiffusion(Params):
    """Build a k-NN graph (cosine), weight edges by ``max(sim, 0) ** gamma``, symmetrise,
    normalise ``D^-1/2 W D^-1/2`` and iterate ``F <- alpha S F + (1 - alpha) Y`` with the
    labelled rows as sources, each class's sources holding the same total mass (so a class with many
    labels does not drown one with few; with the same number per class this is plain one-hot). Fitted (as
    ``sklearn.semi_supervised.LabelSpreading``): ``classes_``,
    ``label_distributions_``, ``transduction_`` (the label of every row)."""

    def __init__(self, *, k: int = 30, iterations: int = 20, alpha: float = 0.99, gamma: float = 3.0,
                 index: str = "exact") -> None:
        self.k, self.iterations, self.alpha, self.gamma, self.index = k, iterations, alpha, gamma, index

    def fit(self, X: np.ndarray, y: Sequence[Optional[str]],
            monitor: Optional[Callable[[int, np.ndarray], None]] = None) -> "LabelDiffusion":
        """``y[i]`` is the label of row i, or None for unlabelled (and background) rows. ``monitor(t, F)`` is
        called after each iteration t (1-based) with the scores so far (to choose ``iterations`` on held-out
        rows in one pass)."""
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
        cols = np.array([index[v] for v in y[rows]])
        # each class starts with the same total mass (1 / its number of sources per source): with all labels of
        # the base classes and a few of the novel ones, unnormalised sources let the base classes flood the graph
        Y[rows, cols] = 1.0 / np.bincount(cols, minlength=len(self.classes_))[cols]
        F = Y.copy()
        for t in range(1, self.iterations + 1):
            F = self.alpha * (S @ F) + (1 - self.alpha) * Y
            if monitor is not None:
                monitor(t, F)
        self.label_distributions_ = F
        self.transduction_ = self.classes_[F.argmax(axis=1)]
        return self

    def predict(self) -> np.ndarray:
        """The label of every row (the argmax of its diffused scores)."""
        return self.transduction_


def topk_hits(scores: np.ndarray, classes: np.ndarray, truth: Sequence[str], k: int) -> np.ndarray:
    """Whether each row's true class is among its ``k`` best-scored classes (ties broken by class order)."""
    k = min(k, scores.shape[1])
    best = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return (classes[best] == np.asarray(truth, dtype=object)[:, None]).any(axis=1)


def _draws(labels: dict[str, str], classes, count: Callable[[str, int], int],
           rng: np.random.Generator) -> Iterator[tuple[str, str, bool]]:
    """(id, class, drawn) for every labelled id of ``classes`` (class by class, ids sorted): ``count(class, n)``
    of each class's n ids are drawn, seeded, without replacement."""
    for c in sorted(classes):
        ids = sorted(i for i, v in labels.items() if v == c)
        n = count(c, len(ids))
        drawn = set(rng.choice(len(ids), n, replace=False).tolist()) if n > 0 else set()
        for j, i in enumerate(ids):
            yield i, c, j in drawn


def lowshot_split(labels: dict[str, str], novel: set[str], shots: int,
                  seed: int = 0) -> tuple[dict[str, str], dict[str, str]]:
    """The low-shot protocol (Hariharan & Girshick; Douze et al. 2018): every label of a base class is kept, and
    ``shots`` labels per novel class are drawn (seeded); returns (kept labels, the novel-class labels not drawn:
    a validation set from the training images, e.g. to choose the number of diffusion iterations)."""
    if shots < 1:
        raise bad_param("shots", "an integer >= 1", shots)
    present = set(labels.values())
    missing = sorted(novel - present)
    if missing:
        raise ImgfeatError(f"novel classes without any label in the training labels: {missing[:5]}")
    if not present - novel:
        raise ImgfeatError("every class of the training labels is novel: the protocol needs base classes too")

    def count(c: str, n: int) -> int:
        if n < shots:
            raise ImgfeatError(f"novel class {c!r} has {n} labelled images, fewer than --shots {shots}")
        return shots

    kept = {i: c for i, c in labels.items() if c not in novel}
    held = {}
    for i, c, drawn in _draws(labels, novel, count, np.random.default_rng(seed)):
        (kept if drawn else held)[i] = c
    return kept, held


def validation_split(labels: dict[str, str], fraction: float,
                     seed: int = 0) -> tuple[dict[str, str], dict[str, str]]:
    """(kept labels, held-out labels): a seeded ``fraction`` of each class held out, every class keeping one."""
    kept, held = {}, {}
    for i, c, drawn in _draws(labels, set(labels.values()), lambda c, n: min(n - 1, int(round(fraction * n))),
                              np.random.default_rng(seed)):
        (held if drawn else kept)[i] = c
    if not held:
        raise ImgfeatError("--iterations auto needs labelled images to hold out for validation: give more than one "
                           "label per class, or --novel-classes (the novel images not drawn validate)")
    return kept, held
