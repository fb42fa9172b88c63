"""Streaming PCA: exact mean and covariance accumulated block by block in float64, so a
1M x 2048 matrix never has to be in memory at once (memory is O(D^2))."""

from __future__ import annotations

from typing import Iterable

import numpy as np

from ..errors import ImgfeatError, bad_param
from ._base import Params


class StreamingPCA(Params):
    """PCA with ``partial_fit`` over blocks; ``fit`` takes a matrix or an iterable of blocks.

    Fitted attributes: ``mean_``, ``components_`` (k x D), ``explained_variance_``,
    ``explained_variance_ratio_``, ``n_samples_seen_``."""

    def __init__(self, *, n_components: int, whiten: bool = False) -> None:
        self.n_components = n_components
        self.whiten = whiten

    def partial_fit(self, X: np.ndarray) -> "StreamingPCA":
        X = np.asarray(X, dtype=np.float64)
        if not hasattr(self, "_sum"):
            self._sum = np.zeros(X.shape[1])
            self._outer = np.zeros((X.shape[1], X.shape[1]))
            self.n_samples_seen_ = 0
        if X.shape[1] != self._sum.shape[0]:
            raise bad_param("X", f"blocks of dimension {self._sum.shape[0]}", f"dimension {X.shape[1]}")
        self._sum += X.sum(axis=0)
        self._outer += X.T @ X
        self.n_samples_seen_ += len(X)
        self._solve()
        return self

    def fit(self, X: np.ndarray | Iterable[np.ndarray]) -> "StreamingPCA":
        for attr in ("_sum", "_outer"):
            self.__dict__.pop(attr, None)
        blocks = [X] if isinstance(X, np.ndarray) else X
        for block in blocks:
            self.partial_fit(block)
        if not hasattr(self, "_sum"):
            raise ImgfeatError("PCA got no data")
        return self

    def _solve(self) -> None:
        n, d = self.n_samples_seen_, self._sum.shape[0]
        if not 1 <= self.n_components <= d:
            raise bad_param("n_components", f"an integer in [1, {d}] (the feature dimension)", self.n_components)
        if self.n_components >= n:  # n centred vectors span at most n - 1 directions
            raise bad_param("n_components", f"an integer below the number of vectors fitted ({n}): {n} vectors "
                                            f"have at most {n - 1} directions of variance", self.n_components)
        self.mean_ = self._sum / n
        cov = (self._outer - n * np.outer(self.mean_, self.mean_)) / max(n - 1, 1)
        values, vectors = np.linalg.eigh(cov)
        order = np.argsort(values)[::-1][: self.n_components]
        comps = vectors[:, order].T
        signs = np.sign(comps[np.arange(len(comps)), np.abs(comps).argmax(axis=1)])  # deterministic signs
        self.components_ = comps * signs[:, None]
        self.explained_variance_ = np.maximum(values[order], 0.0)
        self.explained_variance_ratio_ = self.explained_variance_ / max(values.clip(min=0).sum(), 1e-300)

    def transform(self, X: np.ndarray) -> np.ndarray:
        if not hasattr(self, "components_"):
            raise ImgfeatError("this PCA is not fitted yet")
        Y = (np.asarray(X, dtype=np.float64) - self.mean_) @ self.components_.T
        if self.whiten:
            Y /= np.sqrt(self.explained_variance_ + 1e-12)
        return Y.astype(np.float32)

    def inverse_transform(self, Y: np.ndarray) -> np.ndarray:
        Y = np.asarray(Y, dtype=np.float64)
        if self.whiten:
            Y = Y * np.sqrt(self.explained_variance_ + 1e-12)
        return (Y @ self.components_ + self.mean_).astype(np.float32)

    def save(self, path: str) -> None:
        np.savez(path, mean=self.mean_, components=self.components_, explained_variance=self.explained_variance_,
                 explained_variance_ratio=self.explained_variance_ratio_, whiten=self.whiten,
                 n_samples_seen=self.n_samples_seen_)

    @classmethod
    def load(cls, path: str) -> "StreamingPCA":
        try:
            z = np.load(path)
            missing = {"components", "mean", "whiten"} - set(getattr(z, "files", ()))
        except (OSError, ValueError, EOFError) as exc:
            raise ImgfeatError(f"PCA file {path}: {getattr(exc, 'strerror', None) or exc}") from None
        if missing:
            raise ImgfeatError(f"{path} is not a PCA written by `imgfeat pca fit` (no {sorted(missing)})")
        pca = cls(n_components=len(z["components"]), whiten=bool(z["whiten"]))
        pca.mean_, pca.components_ = z["mean"], z["components"]
        pca.explained_variance_, pca.explained_variance_ratio_ = z["explained_variance"], z["explained_variance_ratio"]
        pca.n_samples_seen_ = int(z["n_samples_seen"])
        return pca
