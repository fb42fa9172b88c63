"""The kNN graph of a large collection against itself by joining k-means cells: the rows are split into cells (an
IVF's coarse quantizer), and the rows of each cell are searched exactly (faiss's BLAS brute force) against the rows
whose nearest or second-nearest centroid is one of the ``nprobe`` centroids nearest to their own cell's (so that two
near rows on either side of a border still meet). No vector codes are held and none re-ranked: each cell reads its
candidates from the memory-mapped vectors, so memory is 12 bytes a row of assignment, the centroids and one cell's
candidates whatever N is, and the work is one matrix product a cell (about ``N x 2 nprobe x N/nlist x d``
multiply-adds, linear in N; a PQ index scans codes one query at a time and re-ranks them from disk).

``tune`` widens ``nprobe`` until recall@k on sampled rows reaches the target, as ``KNNIndex.tune`` does for an index.
Rows come out a group of cells at a time (``iter_graph`` yields their row numbers), which ``graph.save_graph`` writes
in place.

Reads in storage order: the cells are numbered so that near cells have near numbers (``locality_order``), and a
group of consecutive cells gathers the candidates of all its cells once, their rows sorted, in one pass along the
file (``_gathered``). A store larger than the page cache (a container's limit, a 100M collection) is then read
sequentially a group at a time, never a page at random for each cell: 3M x 256 in a 1.5 GiB cgroup took 591,000
major page faults in 50 minutes without it (BENCHMARKS.md)."""

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
GROUP_BYTES = 2**30  # the candidates of a group of cells gathered in one pass (more where the store is larger)


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


def locality_order(centroids: np.ndarray, seed: int = 0) -> np.ndarray:
    """An order of the cells in which near cells come close together: the centroids clustered into about sqrt(nlist)
    super-cells, those chained nearest to nearest, the cells of each super-cell together. A group of consecutive
    cells then shares most of its candidates (the cells near it are mostly its own)."""
    faiss = require("faiss", "science", "kNN graphs")
    nlist = len(centroids)
    if nlist <= 16:
        return np.arange(nlist)
    supers = int(np.sqrt(nlist))
    kmeans = faiss.Kmeans(centroids.shape[1], supers, niter=10, seed=seed, verbose=False)
    kmeans.cp.min_points_per_centroid = 1
    kmeans.train(centroids)
    _, owner = kmeans.index.search(centroids, 1)
    centre = kmeans.centroids
    chain, left = [0], np.ones(supers, bool)
    left[0] = False
    while left.any():  # each next super-cell the nearest one not yet taken
        d = ((centre[left] - centre[chain[-1]]) ** 2).sum(axis=1)
        chain.append(int(np.flatnonzero(left)[np.argmin(d)]))
        left[chain[-1]] = False
    rank = np.empty(supers, np.int64)
    rank[chain] = np.arange(supers)
    return np.lexsort((np.arange(nlist), rank[owner[:, 0]]))


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
                 candidate_bytes: int = CANDIDATE_BYTES, group_bytes: int = GROUP_BYTES) -> None:
        self.metric, self.nlist, self.nprobe, self.seed = metric, nlist, nprobe, seed
        self.train_rows, self.block, self.candidate_bytes = train_rows, block, candidate_bytes
        self.group_bytes = group_bytes

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
        # near cells numbered near each other, so that a group of consecutive cells reads few others' rows
        self.centroids_ = np.ascontiguousarray(kmeans.centroids[locality_order(kmeans.centroids, self.seed)],
                                               np.float32)
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

    def _batches(self, cells: np.ndarray, near: list[np.ndarray], block: Optional[int] = None) -> Iterator[list]:
        """``(cell, probes)`` of ``cells`` in batches whose candidates together (the members of every cell probed)
        fit ``group_bytes`` as float32, and whose own rows are at most ``block`` (None: any): the unit one pass of
        ``_gathered`` reads. A cell's own cell is always among its probes (its rows are the queries)."""
        sizes = np.diff(self.bounds_) + np.diff(self.second_bounds_)
        own = np.diff(self.bounds_)
        limit = max(1, self.group_bytes // (self.dim_ * 4))
        batch, held, rows, taken = [], 0, 0, np.zeros(self.nlist_, bool)
        for c, probes in zip(cells, near):
            probes = probes[probes >= 0]
            if not (probes == c).any():
                probes = np.append(probes, c)
            if batch and (held + int(sizes[probes[~taken[probes]]].sum()) > limit or
                          (block is not None and rows + own[c] > block)):
                yield batch
                batch, held, rows = [], 0, 0
                taken[:] = False
            held += int(sizes[probes[~taken[probes]]].sum())
            taken[probes] = True
            rows += int(own[c])
            batch.append((int(c), probes))
        if batch:
            yield batch

    def _gathered(self, X, rows: np.ndarray) -> np.ndarray:
        """The vectors of ``rows`` (sorted), float32 and normalised for cosine, read in storage order a slice of
        rows at a time (one pass along the file: sequential reads where it is not in the page cache)."""
        Y = np.empty((len(rows), self.dim_), np.float32)
        for s in range(0, len(rows), self.block):
            Y[s:s + self.block] = X[rows[s:s + self.block]]
        if self.normalise_:
            l2_normalise(Y, out=Y)
        return Y

    def _search_batch(self, X, batch: list, queries_of, k: int) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """(cell, queries, D, I) of each cell of ``batch``, its candidates gathered once for the whole batch."""
        union = self._members(np.unique(np.concatenate([p for _, p in batch])))
        Y = self._gathered(X, union)
        for c, probes in batch:
            queries = queries_of(c)
            if len(queries):
                cand = self._members(probes)
                yield (c, queries, *self._search_cell(Y[np.searchsorted(union, cand)], cand, queries, k))

    def _search_cell(self, Y: np.ndarray, cand: np.ndarray, queries: np.ndarray,
                     k: int) -> tuple[np.ndarray, np.ndarray]:
        """The k neighbours (self removed) of ``queries`` (rows of one cell) among the candidate rows ``cand`` (their
        vectors ``Y``, normalised): one exact search."""
        faiss = require("faiss", "science", "kNN graphs")
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

    def groups(self, block: Optional[int] = None, k: int = 1) -> list[tuple[int, int]]:
        """The cells ``c0 .. c1`` of each block of output: consecutive, their candidates within ``group_bytes`` and
        their rows at most ``block`` (the unit ``iter_graph`` yields and a Ray task computes); cells without rows at
        the end belong to none."""
        cells = np.arange(self.nlist_)
        out = []
        for batch in self._batches(cells, self._near(cells, k), block):
            out.append((batch[0][0], batch[-1][0] + 1))
        while out and not np.diff(self.bounds_)[out[-1][0]:out[-1][1]].any():
            out.pop()
        return out

    def search_cells(self, X, c0: int, c1: int, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(rows, D, I) of the rows of cells ``c0 .. c1``: each row's k neighbours, its own entry removed."""
        self._check_k(k)
        cells = np.arange(c0, c1)
        found = [part[1:] for batch in self._batches(cells, self._near(cells, k))
                 for part in self._search_batch(X, batch, lambda c: self.order_[self.bounds_[c]:self.bounds_[c + 1]],
                                                k)]
        if not found:
            return self.order_[:0], np.empty((0, k), np.float32), np.empty((0, k), np.int32)
        return tuple(np.concatenate(part) for part in zip(*found))

    def iter_graph(self, X, k: int, block: Optional[int] = None) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """The graph, as (rows, D, I) blocks of whole cells (``groups``): each row's k neighbours, its own entry
        removed; the rows of a block are not consecutive (write them in place)."""
        self._check_k(k)
        for c0, c1 in self.groups(block, k):
            yield self.search_cells(X, c0, c1, k)

    def graph(self, X, k: int, block: Optional[int] = None,
              rows: Optional[np.ndarray] = None) -> tuple[np.ndarray, np.ndarray]:
        """(D, I) of ``rows`` (all when None), in the order given."""
        self._check_k(k)
        rows = np.arange(self.n_) if rows is None else np.asarray(rows)
        D, I = np.empty((len(rows), k), np.float32), np.empty((len(rows), k), np.int32)
        cells = self.cell_[rows]
        used = np.unique(cells)
        by_cell = np.argsort(cells, kind="stable")
        starts = np.searchsorted(cells[by_cell], used)
        at = {int(c): by_cell[s:e] for c, s, e in zip(used, starts, np.append(starts[1:], len(rows)))}
        for batch in self._batches(used, self._near(used, k)):
            for c, _, Dc, Ic in self._search_batch(X, batch, lambda c: rows[at[c]], k):
                D[at[c]], I[at[c]] = Dc, Ic
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
