"""kNN graphs and search with faiss: exact (brute force) or approximate (IVF, HNSW),
queried block by block; the graph format is the low-shot diffusion code's (int32 I, float32 D)."""

from __future__ import annotations

from typing import Iterable, Optional

import numpy as np

from .._errors import ImgfeatError, bad_param, require

METRICS = ("ip", "l2")
INDEXES = ("exact", "ivf", "hnsw")


class KNNIndex:
    """``metric`` "ip" (inner product; cosine on L2-normalised features) or "l2"; ``index``
    "exact", "ivf" (``nlist`` cells, ``nprobe`` visited) or "hnsw" (``M``, ``ef_search``)."""

    def __init__(self, *, metric: str = "ip", index: str = "exact", nlist: Optional[int] = None, nprobe: int = 16,
                 M: int = 32, ef_search: int = 128, seed: int = 0) -> None:
        self.metric, self.index, self.nlist, self.nprobe, self.M, self.ef_search, self.seed = \
            metric, index, nlist, nprobe, M, ef_search, seed

    def fit(self, X: np.ndarray | Iterable[np.ndarray]) -> "KNNIndex":
        faiss = require("faiss", "science", "kNN graphs")
        if self.metric not in METRICS:
            raise bad_param("metric", f"one of {METRICS}", self.metric)
        if self.index not in INDEXES:
            raise bad_param("index", f"one of {INDEXES}", self.index)
        blocks = [X] if isinstance(X, np.ndarray) else list(X)
        d = blocks[0].shape[1]
        mt = faiss.METRIC_INNER_PRODUCT if self.metric == "ip" else faiss.METRIC_L2
        n = sum(len(b) for b in blocks)
        if self.index == "exact":
            idx = faiss.IndexFlatIP(d) if self.metric == "ip" else faiss.IndexFlatL2(d)
        elif self.index == "hnsw":
            idx = faiss.IndexHNSWFlat(d, self.M, mt)
            idx.hnsw.efSearch = self.ef_search
        else:
            nlist = self.nlist or max(1, min(int(4 * np.sqrt(n)), n // 39 or 1))
            quantizer = faiss.IndexFlatIP(d) if self.metric == "ip" else faiss.IndexFlatL2(d)
            idx = faiss.IndexIVFFlat(quantizer, d, nlist, mt)
            rng = np.random.default_rng(self.seed)
            sample = np.concatenate(blocks)[rng.permutation(n)[: max(nlist * 39, 1000)]]
            idx.train(np.ascontiguousarray(sample, dtype=np.float32))
            idx.nprobe = min(self.nprobe, nlist)
        for b in blocks:
            idx.add(np.ascontiguousarray(b, dtype=np.float32))
        self.index_, self.n_ = idx, n
        return self

    def search(self, Q: np.ndarray, k: int, block: int = 16384) -> tuple[np.ndarray, np.ndarray]:
        """(D float32, I int32), each len(Q) x k, computed ``block`` queries at a time."""
        if k > self.n_:
            raise bad_param("k", f"an integer <= the number of indexed vectors ({self.n_})", k)
        Ds, Is = [], []
        for s in range(0, len(Q), block):
            D, I = self.index_.search(np.ascontiguousarray(Q[s:s + block], dtype=np.float32), k)
            Ds.append(D.astype(np.float32))
            Is.append(I.astype(np.int32))
        return np.concatenate(Ds), np.concatenate(Is)

    def graph(self, X: np.ndarray, k: int, block: int = 16384,
              rows: Optional[np.ndarray] = None) -> tuple[np.ndarray, np.ndarray]:
        """The kNN graph of the indexed set ``X`` against itself, each point's own entry removed;
        only the rows ``rows`` (indices into X) when given."""
        if k >= self.n_:
            raise bad_param("k", f"an integer < the number of vectors ({self.n_})", k)
        rows = np.arange(len(X)) if rows is None else np.asarray(rows)
        D, I = self.search(X[rows], k + 1, block)
        own = I == rows.astype(np.int32)[:, None]
        # Drop the self match where found, else the last neighbour (exact duplicates may outrank self).
        drop = np.where(own.any(axis=1), own.argmax(axis=1), k)
        keep = np.ones_like(own)
        keep[np.arange(len(rows)), drop] = False
        return D[keep].reshape(len(rows), k), I[keep].reshape(len(rows), k)


def recall_at_k(approx_I: np.ndarray, exact_I: np.ndarray) -> float:
    """Mean fraction of the exact k neighbours that the approximate search also returned."""
    hits = [len(set(a) & set(e)) / len(e) for a, e in zip(approx_I.tolist(), exact_I.tolist())]
    return float(np.mean(hits)) if hits else 0.0


def l2_normalise(X: np.ndarray) -> np.ndarray:
    return X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)


def check_nonempty(X: np.ndarray) -> None:
    if len(X) == 0:
        raise ImgfeatError("no feature vectors to index")
