"""Exact neighbours streamed in row blocks: the reference every approximate index is scored against (recall@k on a
seeded sample of rows, at O(sample x k) memory whatever N is), and the row-block and normalisation helpers that
``knn`` shares with it."""

from __future__ import annotations

from typing import Callable, Iterator, Optional

import numpy as np

from ..errors import ImgfeatError, require

RECALL_SAMPLE = 1000  # rows whose exact neighbours score a non-exact graph (audit's and diffuse's graph_recall)


MAX_ROWS = 2**31 - 1  # row numbers are int32 in neighbour lists, graphs and cells (the low-shot code's files)


def check_rows(n: int, what: str) -> None:
    """Refuse, before any work, a collection whose row numbers int32 cannot hold (they would wrap, silently)."""
    if n > MAX_ROWS:
        raise ImgfeatError(f"{what}: {n:,} vectors are more than the {MAX_ROWS:,} rows its int32 row numbers can "
                           "name; split the collection (--start/--stop of its stores) and build one graph or index "
                           "a part")


def row_blocks(X, block: int, normalise: bool = False) -> Iterator[np.ndarray]:
    """Contiguous float32 row blocks of an ndarray, a memory map or a store's StoreMatrix
    (L2-normalised one block at a time if asked: never a normalised copy of all of X)."""
    for s in range(0, len(X), block):
        b = np.ascontiguousarray(X[s:s + block], dtype=np.float32)
        yield l2_normalise(b) if normalise else b


def random_access(X):
    """``X`` for reads of scattered rows (re-ranking a search's candidates): a memory map of the same file mapped
    again with ``MADV_RANDOM``, so that a row read from disk costs its own page, not the kernel's read-around of up to
    128 KB about it (32 x the bytes, and the page cache filled with rows nobody asked for: a store larger than the
    page cache, as in a container, is then read at random at the disk's speed). A store's matrix gets the same for
    each shard; anything else is returned as it is."""
    if isinstance(X, np.memmap):
        from ..files import remapped_random

        return remapped_random(X)
    return X.random_access() if hasattr(X, "random_access") else X  # a store's matrix remaps each shard


class RowView:
    """Some rows of a matrix (sorted row numbers), read only when asked: ``len``, ``shape``, ``dtype``, slices and
    integer arrays of its own rows, each turned into a read of the matrix's rows in increasing order. The labelled
    part of a collection, audited without a copy of it in memory."""

    def __init__(self, X, rows: np.ndarray) -> None:
        self.X, self.rows = X, np.asarray(rows, np.int64)
        self.shape, self.dtype, self.ndim = (len(self.rows), X.shape[1]), X.dtype, 2

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key):
        if isinstance(key, (int, np.integer)):
            return self.X[int(self.rows[key])]
        wanted = self.rows[key]
        order = np.argsort(wanted, kind="stable")
        out = np.empty((len(wanted), self.shape[1]), self.dtype)
        out[order] = self.X[wanted[order]]
        return out

    def __array__(self, dtype=None, copy=None):
        full = self[:]
        return full.astype(dtype, copy=False) if dtype is not None else full


class Stacked:
    """Two matrices of the same width as one (``diffuse --background``: the features, then the background's), read
    only when asked: slices and integer arrays turned into reads of each part."""

    def __init__(self, first, second) -> None:
        self.parts, self.split = (first, second), len(first)
        self.shape, self.ndim = (len(first) + len(second), first.shape[1]), 2
        self.dtype = np.result_type(first.dtype, second.dtype)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key):
        if isinstance(key, (int, np.integer)):
            key = int(key) + (len(self) if key < 0 else 0)
            return self.parts[0][key] if key < self.split else self.parts[1][key - self.split]
        if isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            if step == 1:
                a = self.parts[0][min(start, self.split):min(stop, self.split)]
                b = self.parts[1][max(start, self.split) - self.split:max(stop, self.split) - self.split]
                return np.concatenate([np.asarray(a, self.dtype), np.asarray(b, self.dtype)])
            key = np.arange(start, stop, step)
        rows = np.asarray(key)
        out = np.empty((len(rows), self.shape[1]), self.dtype)
        low = rows < self.split
        if low.any():
            out[low] = self.parts[0][rows[low]]
        if (~low).any():
            out[~low] = self.parts[1][rows[~low] - self.split]
        return out

    def __array__(self, dtype=None, copy=None):
        full = self[:]
        return full.astype(dtype, copy=False) if dtype is not None else full


def faiss_metric(faiss, metric: str):
    return faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT


def drop_self(D: np.ndarray, I: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """From k + 1 neighbours of each of ``rows``, drop the row itself where found, else the last
    neighbour (exact duplicates may outrank a point's own entry)."""
    own = I == rows.astype(I.dtype)[:, None]
    drop = np.where(own.any(axis=1), own.argmax(axis=1), k)
    keep = np.ones_like(own)
    keep[np.arange(len(rows)), drop] = False
    return D[keep].reshape(len(rows), k), I[keep].reshape(len(rows), k)


def exact_graph_rows(X, rows: np.ndarray, k: int, metric: str = "ip",
                     block: int = 65536) -> tuple[np.ndarray, np.ndarray]:
    """Exact k neighbours (self removed) of the ``rows`` of X, streaming X in blocks: the
    reference for an approximate graph's recall, at O(len(rows) x k) memory whatever N is."""
    faiss = require("faiss", "science", "kNN graphs")
    from faiss.contrib.exhaustive_search import knn_ground_truth

    rows = np.asarray(rows)
    cosine = metric == "cosine"
    Q = next(row_blocks(X[rows], max(1, len(rows)), cosine))
    D, I = knn_ground_truth(Q, row_blocks(X, block, cosine), k + 1, metric_type=faiss_metric(faiss, metric))
    return drop_self(D.astype(np.float32), I.astype(np.int32), rows, k)


def exact_search(X, Q, k: int, metric: str = "cosine", block: int = 65536) -> tuple[np.ndarray, np.ndarray]:
    """The exact ``k`` nearest rows of X for the queries Q (D float32: similarities, or squared L2 for "l2"; I
    int64), X streamed in row blocks through faiss's ``knn_ground_truth``: what ``search`` asks of a collection, in
    O(len(Q) x k) memory and a block of rows whatever N is (an index of all of X would hold N x D floats: 102 GB at
    100M x 256), and each row read once, in the order it is stored."""
    faiss = require("faiss", "science", "kNN graphs")
    from faiss.contrib.exhaustive_search import knn_ground_truth

    cosine = metric == "cosine"
    Q = np.ascontiguousarray(Q, dtype=np.float32)
    Q = l2_normalise(Q) if cosine else Q
    D, I = knn_ground_truth(Q, row_blocks(X, block, cosine), k, metric_type=faiss_metric(faiss, metric))
    return D.astype(np.float32), I.astype(np.int64)


def recall_at_k(approx_I: np.ndarray, exact_I: np.ndarray) -> float:
    """Mean fraction of the exact k neighbours that the approximate search also returned."""
    hits = [len(set(a) & set(e)) / len(e) for a, e in zip(approx_I.tolist(), exact_I.tolist())]
    return float(np.mean(hits)) if hits else 0.0


def l2_normalise(X: np.ndarray, out: Optional[np.ndarray] = None) -> np.ndarray:
    """X's rows scaled to unit length (a new array, or into ``out``: ``out=X`` normalises in place)."""
    return np.divide(X, np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12), out=out)


def sample_rows(n: int, count: int, seed: int) -> np.ndarray:
    """``count`` distinct rows of ``n`` (all where fewer), drawn with ``seed``, in increasing order (a store reads
    them front to back): the one seeded sample of index training, tuning and recall. Above 2^24 rows the draw holds
    the sample only (numpy's ``choice`` without replacement), not a permutation of every row (800 MB at 100M)."""
    rng = np.random.default_rng(seed)
    if n <= 1 << 24:
        return np.sort(rng.permutation(n)[:count])
    return np.sort(rng.choice(n, min(count, n), replace=False))


def sampled_recall(X, approx_rows: Callable[[np.ndarray], np.ndarray], k: int, metric: str, n_sample: int,
                   seed: int = 0) -> tuple[float, int]:
    """recall@k of an approximate graph on a seeded sample of ``n_sample`` rows, against exact neighbours
    computed for those rows only (X streamed). Returns (recall, sample size)."""
    sample = sample_rows(len(X), n_sample, seed)
    _, exact_I = exact_graph_rows(X, sample, k, metric)
    return recall_at_k(approx_rows(sample), exact_I), len(sample)
