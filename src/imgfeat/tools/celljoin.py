"""The kNN graph of a large collection against itself by joining k-means cells: the rows are split into cells (an
IVF's coarse quantizer), and the rows of each cell are searched exactly (faiss's BLAS brute force) against the rows
whose nearest or second-nearest centroid is one of the ``nprobe`` centroids nearest to their own cell's (so that two
near rows on either side of a border still meet). No vector codes are held and none re-ranked: each cell reads its
candidates from the memory-mapped vectors, so memory is 12 bytes a row of assignment, the centroids and one cell's
candidates whatever N is, and the work is one matrix product a cell (about ``N x 2 nprobe x N/nlist x d``
multiply-adds, linear in N; a PQ index scans codes one query at a time and re-ranks them from disk).

``tune`` widens ``nprobe`` until recall@k on sampled rows reaches the target, as ``KNNIndex.tune`` does for an index.
Rows come out a group of cells at a time (``iter_graph`` yields their row numbers), which ``graph.save_graph`` writes
in place."""

from __future__ import annotations

import logging
from typing import Iterator, Optional

import numpy as np

from ..errors import ImgfeatError, bad_param, require
from ._base import Params
from .exact import check_rows, drop_self, exact_graph_rows, faiss_metric, l2_normalise, recall_at_k, row_blocks, \
    sample_rows
from .knn import KMEANS_ITERATIONS, METRICS, TARGET_RECALL, TRAIN_PER_CELL, TUNE_SAMPLE

log = logging.getLogger(__name__)

CELL_ROWS = 1_000  # join_cells: about this many rows a cell (10M rows: 8,192 cells; one cell's product, 16 probes,
#                    is 1,200 x 20,000 x 256: a matrix product that runs at the BLAS's full speed)
HNSW_CELLS = 4_096  # from this many cells, an HNSW over the centroids assigns the rows (a flat one compares each row
#                     with every centroid: 10M x 8,192 x 256 is minutes on 2 cores)
GROUP_ROWS = 65_536  # iter_graph: rows of whole cells gathered into one block of output
NPROBE = 4  # the cells each cell's rows are searched in at first (tune widens it): with the rows of their second
#            cells, about as many candidates as 8 cells' own rows
SECOND_CAP = 1.0  # a cell's rows as second cell: at most this many times its own rows (or the mean cell's)
CANDIDATE_BYTES = 256 * 2**20  # the candidate vectors of one cell's search, read and normalised (tune's limit)


def join_cells(n: int) -> int:
    """The cells of a join over n rows: about ``CELL_ROWS`` rows each, a power of 2, no more than the rows train."""
    cells = 2 ** int(np.round(np.log2(max(1.0, n / CELL_ROWS))))
    return int(max(1, min(cells, n // TRAIN_PER_CELL or 1)))


def join_bytes(n: int, d: int, nlist: Optional[int] = None) -> int:
    """What a fitted join holds: each row's cell, and the rows in the order of their nearest and of their second
    nearest cell (4 bytes each a row), the centroids, and an HNSW's links over them."""
    nlist = nlist or join_cells(n)
    return n * 12 + nlist * d * 4 + (nlist * 32 * 8 if nlist >= HNSW_CELLS else 0)


def _by_cell(cell: np.ndarray, nlist: int) -> tuple[np.ndarray, np.ndarray]:
    """The rows sorted by ``cell`` (int32, in row order within a cell) and where each cell's rows start and end."""
    bounds = np.concatenate([[0], np.cumsum(np.bincount(cell, minlength=nlist))]).astype(np.int64)
    return np.argsort(cell, kind="stable").astype(np.int32), bounds


def _margin(dist: np.ndarray) -> np.ndarray:
    """How far past the border to its second cell each row lies: the ratio of its squared distances to its second
    and its nearest centroid, less 1, in steps of 1/4096 (uint16; 0 on the border)."""
    ratio = dist[:, 1] / np.maximum(dist[:, 0], 1e-12)
    return np.clip(np.nan_to_num((ratio - 1.0) * 4096, nan=65535.0, posinf=65535.0), 0, 65535).astype(np.uint16)


def _second_by_cell(second: np.ndarray, margin: np.ndarray, sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The rows by their second cell, at most ``SECOND_CAP`` times as many a cell as its own rows (or as the mean
    cell's, if more), those nearest the border kept: a centroid in the middle of image-like data is the second of a
    quarter of the rows (1M rows, 1,024 cells: 232,000 rows), and every cell near it would search them all."""
    nlist = len(sizes)
    order = np.lexsort((margin, second)).astype(np.int32)
    counts = np.bincount(second, minlength=nlist)
    cap = np.ceil(SECOND_CAP * np.maximum(sizes, len(second) / nlist)).astype(np.int64)
    kept = np.minimum(counts, cap)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    keep = np.ones(len(order), bool)
    for c in np.flatnonzero(counts > cap):  # the few crowded cells: drop the rows farthest past their border
        keep[starts[c] + cap[c]:starts[c] + counts[c]] = False
    return order[keep], np.concatenate([[0], np.cumsum(kept)]).astype(np.int64)


class CellJoin(Params):
    """The kNN graph of ``X`` against itself, one k-means cell at a time (module docstring). ``metric`` as
    ``KNNIndex``'s ("cosine": rows normalised as they are read); ``nlist`` cells (None: ``join_cells``); each
    cell's rows searched among the members of the ``nprobe`` cells nearest to it (itself first); ``train_rows``:
    at most this many rows train the centroids (a memory budget's sample); ``candidate_bytes``: ``tune`` widens the
    search no further than the largest cell's candidates fit in (``autoindex.plan_index`` sizes both)."""

    index = "join"

    def __init__(self, *, metric: str = "cosine", nlist: Optional[int] = None, nprobe: int = NPROBE, seed: int = 0,
                 train_rows: Optional[int] = None, block: int = 65536,
                 candidate_bytes: int = CANDIDATE_BYTES) -> None:
        self.metric, self.nlist, self.nprobe, self.seed = metric, nlist, nprobe, seed
        self.train_rows, self.block, self.candidate_bytes = train_rows, block, candidate_bytes

    def fit(self, X) -> "CellJoin":
        faiss = require("faiss", "science", "kNN graphs")
        if self.metric not in METRICS:
            raise bad_param("metric", f"one of {METRICS}", self.metric)
        n, d = len(X), X.shape[1]
        check_rows(n, "the join of cells")
        if n == 0:
            raise ImgfeatError("no feature vectors to index")
        self.normalise_ = self.metric == "cosine"
        nlist = int(min(self.nlist or join_cells(n), n))
        want = TRAIN_PER_CELL * nlist
        rows = sample_rows(n, min(want, self.train_rows) if self.train_rows else want, self.seed)
        sample = np.array(X[rows], dtype=np.float32, order="C")
        if self.normalise_:
            l2_normalise(sample, out=sample)
        kmeans = faiss.Kmeans(d, nlist, niter=KMEANS_ITERATIONS, seed=self.seed, verbose=False)
        kmeans.cp.min_points_per_centroid = 1  # fewer rows than TRAIN_PER_CELL a cell is allowed (a small sample)
        kmeans.train(sample)
        del sample
        self.centroids_ = np.ascontiguousarray(kmeans.centroids, np.float32)
        quantizer = faiss.IndexHNSWFlat(d, 32) if nlist >= HNSW_CELLS else faiss.IndexFlatL2(d)
        quantizer.add(self.centroids_)
        if nlist >= HNSW_CELLS:
            quantizer.hnsw.efSearch = 64
        cell, second, margin = np.empty(n, np.int32), np.empty(n, np.int32), np.empty(n, np.uint16)
        for s, b in zip(range(0, n, self.block), row_blocks(X, self.block, self.normalise_)):
            dist, top = quantizer.search(b, 2)
            cell[s:s + len(b)], second[s:s + len(b)] = top[:, 0], np.where(top[:, 1] >= 0, top[:, 1], top[:, 0])
            margin[s:s + len(b)] = _margin(dist)
        del quantizer
        # a row is searched from its nearest cell, and is a candidate in its two nearest: the near pairs that a cell's
        # border splits (a tenth of near-duplicate pairs in isotropic 48-d data) still meet in one cell
        self.order_, self.bounds_ = _by_cell(cell, nlist)
        self.second_, self.second_bounds_ = _second_by_cell(second, margin, np.diff(self.bounds_))
        del second, margin
        self.cell_ = cell
        self.n_, self.dim_, self.nlist_ = n, d, nlist
        return self

    @property
    def description(self) -> str:
        return f"join of {self.nlist_} cells nprobe {self.nprobe}"

    def _near(self, cells: np.ndarray, k: int, nprobe: Optional[int] = None) -> list[np.ndarray]:
        """The ``nprobe`` cells nearest to each of ``cells`` (by centroid; a cell is its own nearest); a cell whose
        probes hold fewer than ``k + 1`` rows (a small cell among small ones) alone is widened until they do."""
        faiss = require("faiss", "science", "kNN graphs")
        sizes = np.diff(self.bounds_)
        probes = min(nprobe or self.nprobe, self.nlist_)
        _, first = faiss.knn(self.centroids_[cells], self.centroids_, probes)
        near = list(first)
        short = np.flatnonzero(sizes[first].sum(axis=1) < k + 1)
        while len(short) and probes < self.nlist_:
            probes = min(self.nlist_, 2 * probes)
            _, wider = faiss.knn(self.centroids_[cells[short]], self.centroids_, probes)
            for i, w in zip(short, wider):
                near[i] = w
            short = short[sizes[wider].sum(axis=1) < k + 1]
        return near

    def _members(self, cells) -> np.ndarray:
        """The candidate rows of ``cells``: those whose nearest or second-nearest cell is one of them, in row order."""
        return np.unique(np.concatenate(
            [rows[bounds[c]:bounds[c + 1]] for c in cells
             for rows, bounds in ((self.order_, self.bounds_), (self.second_, self.second_bounds_))]))

    def _search_cell(self, X, near: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The k neighbours (self removed) of ``queries`` (rows of one cell) among the members of the cells
        ``near``: one exact search, its candidates read from ``X`` in row order."""
        faiss = require("faiss", "science", "kNN graphs")
        cand = self._members(near[near >= 0])
        Y = np.ascontiguousarray(X[cand], dtype=np.float32)
        if self.normalise_:
            l2_normalise(Y, out=Y)
        Q = np.ascontiguousarray(Y[np.searchsorted(cand, queries)])
        fetch = min(k + 1, len(cand))
        D, I = faiss.knn(Q, Y, fetch, faiss_metric(faiss, self.metric))
        I = np.where(I >= 0, cand[np.maximum(I, 0)], -1)
        if fetch < k + 1:  # fewer candidates than k + 1 in every cell (a collection of a few rows)
            missing = k + 1 - fetch
            worst = np.inf if self.metric == "l2" else -np.inf
            D = np.hstack([D, np.full((len(Q), missing), worst, np.float32)])
            I = np.hstack([I, np.full((len(Q), missing), -1, I.dtype)])
        D, I = drop_self(D.astype(np.float32), I.astype(np.int32), queries, k)
        return D, I

    def _check_k(self, k: int) -> None:
        if k >= self.n_:
            raise bad_param("k", f"an integer < the number of vectors ({self.n_})", k)

    def groups(self, block: Optional[int] = None) -> list[tuple[int, int]]:
        """The cells ``c0 .. c1`` of each block of output, consecutive and holding about ``block`` rows together (the
        unit ``iter_graph`` yields and a Ray task computes); cells without rows at the end belong to none."""
        block, out, start, held = block or GROUP_ROWS, [], 0, 0
        for c, size in enumerate(np.diff(self.bounds_).tolist()):
            held += size
            if held >= block:
                out.append((start, c + 1))
                start, held = c + 1, 0
        if held:
            out.append((start, self.nlist_))
        return out

    def search_cells(self, X, c0: int, c1: int, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(rows, D, I) of the rows of cells ``c0 .. c1``: each row's k neighbours, its own entry removed."""
        self._check_k(k)
        rows, Ds, Is = [], [], []
        for c, probes in zip(range(c0, c1), self._near(np.arange(c0, c1), k)):
            queries = self.order_[self.bounds_[c]:self.bounds_[c + 1]]
            if len(queries):
                D, I = self._search_cell(X, probes, queries, k)
                rows.append(queries)
                Ds.append(D)
                Is.append(I)
        if not rows:
            return self.order_[:0], np.empty((0, k), np.float32), np.empty((0, k), np.int32)
        return np.concatenate(rows), np.concatenate(Ds), np.concatenate(Is)

    def iter_graph(self, X, k: int, block: Optional[int] = None) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """The graph, as (rows, D, I) blocks of whole cells (``groups``): each row's k neighbours, its own entry
        removed; the rows of a block are not consecutive (write them in place)."""
        self._check_k(k)
        for c0, c1 in self.groups(block):
            yield self.search_cells(X, c0, c1, k)

    def graph(self, X, k: int, block: Optional[int] = None,
              rows: Optional[np.ndarray] = None) -> tuple[np.ndarray, np.ndarray]:
        """(D, I) of ``rows`` (all when None), in the order given."""
        self._check_k(k)
        rows = np.arange(self.n_) if rows is None else np.asarray(rows)
        D, I = np.empty((len(rows), k), np.float32), np.empty((len(rows), k), np.int32)
        cells = self.cell_[rows]
        used = np.unique(cells)
        near = self._near(used, k)
        for c, probes in zip(used, near):
            at = np.flatnonzero(cells == c)
            D[at], I[at] = self._search_cell(X, probes, rows[at], k)
        return D, I

    def candidates(self, nprobe: int, k: int = 1) -> int:
        """The most candidate rows one cell's search reads at ``nprobe``."""
        near = self._near(np.arange(self.nlist_), k, nprobe)
        sizes = np.diff(self.bounds_) + np.diff(self.second_bounds_)
        return int(max(sizes[probes].sum() for probes in near))

    def tune(self, X, k: int, target: float = TARGET_RECALL, sample: int = TUNE_SAMPLE, seed: int = 1) -> "CellJoin":
        """Double ``nprobe`` until recall@k on ``sample`` seeded rows reaches ``target`` (or every cell is searched,
        or doubling gains nothing); sets ``recall_`` (recall, rows sampled)."""
        rows = sample_rows(self.n_, sample, seed)
        _, exact = exact_graph_rows(X, rows, k, self.metric)
        best = recall_at_k(self.graph(X, k, rows=rows)[1], exact)
        while best < target and self.nprobe < self.nlist_:
            before, wider = self.nprobe, min(self.nlist_, 2 * self.nprobe)
            if self.candidates(wider, k) * self.dim_ * 4 > self.candidate_bytes:
                break  # the largest cell's candidates would not fit the budget
            self.nprobe = wider
            recall = recall_at_k(self.graph(X, k, rows=rows)[1], exact)
            if recall <= best:
                self.nprobe = before
                break
            best = recall
        self.recall_ = (best, len(rows))
        if best < target:
            log.warning("the join of %d cells reaches recall@%d %.3f on %d sampled rows (target %.2f) at nprobe %d: "
                        "these vectors have little cell structure; more memory (--max-memory) lets it search wider",
                        self.nlist_, k, best, len(rows), target, self.nprobe)
        return self
