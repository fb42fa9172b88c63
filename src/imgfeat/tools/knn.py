"""kNN graphs and search with faiss: exact (brute force) or approximate (IVF, HNSW, any
index_factory string such as IVF-PQ), built and queried block by block; the graph format is
the low-shot diffusion code's (int32 I, float32 D)."""

from __future__ import annotations

import errno
import logging
from contextlib import contextmanager
from typing import Iterator, Optional

import numpy as np

from ..errors import ImgfeatError, bad_param, require
from ..files import atomic_paths
from ._base import Params
from .exact import check_rows, drop_self, exact_graph_rows, faiss_metric, l2_normalise, random_access, recall_at_k, \
    row_blocks, sample_rows
from .names import INDEXES, METRICS
from .subset import Subset

log = logging.getLogger(__name__)

TRAIN_PER_CELL = 39  # faiss asks for at least 39 training points per IVF cell
KMEANS_ITERATIONS = 10  # IVF cells' k-means: 10 iterations instead of faiss's 25 (training was ~40% of dedup at 1M)
RERANK_BYTES = 256 * 2**20  # the candidate vectors of one block of re-ranked queries
TARGET_RECALL = 0.95  # tune: an approximate index's search widened until its sampled recall@k reaches this
TUNE_SAMPLE = 256  # tune: the rows whose exact neighbours score each setting tried
RERANK_MAX = 64.0  # tune: the widest re-ranking tried (64 k candidates a query)


def ivf_cells(n: int) -> int:
    """The cells of an ``ivf`` index over n vectors: about 4 sqrt(n), no more than the vectors train."""
    return max(1, min(int(4 * np.sqrt(n)), n // TRAIN_PER_CELL or 1))


@contextmanager
def faiss_threads(n: int):
    """faiss's OpenMP thread count set to ``n`` while inside, then put back (it is process-wide and torch shares
    it): one thread per query in a server answering many at once, every core for a batch job."""
    faiss = require("faiss", "science", "kNN graphs")
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(max(1, int(n)))
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def _set_nprobe(faiss, ivf, nprobe: int) -> None:
    """Visit ``nprobe`` cells of an IVF index; an HNSW quantizer searches at least as wide (its efSearch bounds the
    cells it can name)."""
    ivf.nprobe = int(min(nprobe, ivf.nlist))
    quantizer = faiss.downcast_index(ivf.quantizer)
    if isinstance(quantizer, faiss.IndexHNSW):
        quantizer.hnsw.efSearch = max(quantizer.hnsw.efSearch, 2 * ivf.nprobe)


def scaled_factory(factory: str, n: int) -> str:
    """``factory`` with its IVF cell count lowered to what ``n`` vectors can train (``TRAIN_PER_CELL`` each), with
    a warning: the README's ``IVF65536,PQ32`` run on a sample of a large collection still works."""
    import logging
    import re

    match = re.search(r"IVF(\d+)", factory)
    if not match:
        return factory
    nlist, fits = int(match.group(1)), max(1, n // TRAIN_PER_CELL)
    if nlist <= fits:
        return factory
    scaled = factory[:match.start(1)] + str(fits) + factory[match.end(1):]
    logging.getLogger(__name__).warning(
        "%s needs at least %d vectors to train %d IVF cells (%d per cell); %d vectors: using %s", factory,
        nlist * TRAIN_PER_CELL, nlist, TRAIN_PER_CELL, n, scaled)
    return scaled


class KNNIndex(Params):
    """``metric`` "cosine" (the default of every tool: vectors L2-normalised as they are added and queried,
    block by block; scores are cosine similarities), "ip" (inner product) or "l2"; ``index``
    "exact", "ivf" (``nlist`` cells, ``nprobe`` visited), "hnsw" (``M``, ``ef_search``), "pca" (candidates
    from an exact search in ``pca_dim`` PCA dimensions, ``k_factor`` times k of them, re-ranked on the full
    vectors: faiss's ``IndexRefineFlat``; exact neighbours in practice at a fraction of the cost on
    high-dimensional features, since the brute-force part does ``pca_dim / d`` of the work), or a
    faiss ``index_factory`` string such as ``"IVF65536,PQ32"`` (compressed codes: what makes a
    100M-vector graph fit in memory; ``nprobe`` applies to it too).

    ``rerank`` (r > 1, for compressed codes): each search asks the index for ``r * k`` candidates and ranks them
    again by their exact similarity to the query, read from the fitted ``X`` itself (a memory map or a store's
    matrix: its pages, not the program's memory), so PQ's coarse distances only choose candidates.

    ``fit`` reads ``X`` (an array, a ``np.load(mmap_mode="r")`` map or a store's matrix) in
    blocks of ``block`` rows and trains on a seeded sample (at most ``train_rows`` rows when given), so beyond the
    index itself it needs memory for one block and the sample only; re-ranking reads at most ``rerank_bytes`` of
    candidate vectors at a time (``tools.autoindex.plan_index`` sizes all three within a budget)."""

    def __init__(self, *, metric: str = "cosine", index: str = "exact", nlist: Optional[int] = None, nprobe: int = 16,
                 M: int = 32, ef_search: int = 128, seed: int = 0, block: int = 65536, pca_dim: int = 128,
                 k_factor: float = 3.0, rerank: float = 0.0, train_rows: Optional[int] = None,
                 rerank_bytes: int = RERANK_BYTES) -> None:
        self.metric, self.index, self.nlist, self.nprobe, self.M, self.ef_search, self.seed = \
            metric, index, nlist, nprobe, M, ef_search, seed
        self.block, self.pca_dim, self.k_factor, self.rerank = block, pca_dim, k_factor, rerank
        self.train_rows, self.rerank_bytes = train_rows, rerank_bytes

    def _new_index(self, faiss, d: int, n: int):
        mt = faiss_metric(faiss, self.metric)
        if self.index == "exact":
            return faiss.IndexFlat(d, mt)
        if self.index == "hnsw":
            idx = faiss.IndexHNSWFlat(d, self.M, mt)
            idx.hnsw.efSearch = self.ef_search
            return idx
        if self.index == "pca":
            if self.metric == "ip":
                raise bad_param("index", "exact, ivf, hnsw or a factory string with the ip metric (pca ranks by L2 "
                                         "after centring, which keeps the order of l2 and cosine only)", self.index)
            # L2 throughout: PCA centres the vectors, which keeps L2 distances (and so, on unit vectors, the cosine
            # order); search() turns them back into cosines
            dim = min(self.pca_dim, d)
            base = faiss.IndexPreTransform(faiss.PCAMatrix(d, dim), faiss.IndexFlatL2(dim))
            idx = faiss.IndexRefineFlat(base)
            idx.k_factor = self.k_factor
            return idx
        if self.index == "ivf":
            nlist = self.nlist or ivf_cells(n)
            return faiss.IndexIVFFlat(faiss.IndexFlat(d, mt), d, nlist, mt)
        factory = scaled_factory(self.index, n)
        try:
            return faiss.index_factory(d, factory, mt)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[-1] if str(exc).strip() else ""
            raise bad_param("index", f"one of {INDEXES} or a faiss index_factory string ({first})",
                            self.index) from None

    def fit(self, X) -> "KNNIndex":
        faiss = require("faiss", "science", "kNN graphs")
        if self.metric not in METRICS:
            raise bad_param("metric", f"one of {METRICS}", self.metric)
        if not hasattr(X, "shape"):  # an iterable of blocks
            X = np.concatenate([np.asarray(b, dtype=np.float32) for b in X])
        self.normalise_ = self.metric == "cosine"
        n, d = len(X), X.shape[1]
        check_rows(n, "the kNN index")
        if n == 0:
            raise ImgfeatError("no feature vectors to index")
        idx = self._new_index(faiss, d, n)
        if not idx.is_trained:
            ivf = faiss.try_extract_index_ivf(idx)
            # k-means wants TRAIN_PER_CELL points per centroid: IVF cells, or a PQ's 256 codes
            want = TRAIN_PER_CELL * max(256, ivf.nlist if ivf is not None else 0)
            want = min(want, self.train_rows) if self.train_rows else want  # a sample within a memory budget
            rows = sample_rows(n, want, self.seed)
            sample = np.array(X[rows], dtype=np.float32, order="C")  # a copy of its own: normalised in place
            if self.normalise_:
                l2_normalise(sample, out=sample)
            if ivf is not None:  # faiss's default is 25 k-means iterations; tune() widens nprobe if the cells need it
                ivf.cp.niter = KMEANS_ITERATIONS
                pq = faiss.downcast_index(ivf)
                if getattr(pq, "do_polysemous_training", False):  # the factory's IVF-PQ orders its codes for Hamming
                    pq.do_polysemous_training = False  # filtering, which no search here uses: 8% of diffuse at 1M
            try:
                idx.train(sample)
            except RuntimeError as exc:  # e.g. a PQ's 256 codes from fewer vectors
                last = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
                last = last.split("failed: ")[-1].split("Error: ")[-1].strip()
                raise ImgfeatError(f"the index {self.index!r} cannot be trained on {n} vectors ({last}); "
                                   "use a smaller one (fewer IVF cells, fewer PQ bits) or the exact index") from None
        ivf = faiss.try_extract_index_ivf(idx)
        if ivf is not None:
            _set_nprobe(faiss, ivf, self.nprobe)
        self.source_ = random_access(X) if self.rerank and self.rerank > 1 else None
        # a re-ranked cosine index divides by the rows' norms (4 bytes a row), kept as the rows are normalised
        keep_norms = self.normalise_ and self.source_ is not None
        norms = []
        for b in row_blocks(X, self.block):
            if self.normalise_:
                norm = np.linalg.norm(b, axis=1).astype(np.float32)
                b = b / np.maximum(norm[:, None], 1e-12)
                if keep_norms:
                    norms.append(norm)
            idx.add(b)
        self.norms_ = np.concatenate(norms) if keep_norms and norms else None
        return self._fitted(idx)

    @property
    def description(self) -> str:
        """The index as a report names it: its kind, and the search settings that are not the defaults."""
        ivf = self._ivf()
        return (self.index + (f" nprobe {ivf.nprobe}" if ivf is not None else "")
                + (f" re-ranked x{self.rerank:g}" if getattr(self, "source_", None) is not None else ""))

    def reranking(self, X, factor: float) -> "KNNIndex":
        """Re-rank ``factor`` x k candidates of each search against ``X`` (the rows this index holds, e.g. a
        memory-mapped store), as ``rerank`` does after ``fit``; for an index read from a file."""
        self.rerank = factor
        self.source_ = random_access(X) if factor and factor > 1 else None
        self.norms_ = None
        return self

    def _ivf(self):
        faiss = require("faiss", "science", "kNN graphs")
        return faiss.try_extract_index_ivf(self.index_)

    def tune(self, X, k: int, target: float = TARGET_RECALL, sample: int = TUNE_SAMPLE, seed: int = 1) -> "KNNIndex":
        """Widen the search of a fitted approximate index over ``X`` until its recall@k, measured against the exact
        neighbours of ``sample`` seeded rows, reaches ``target``, as autofaiss tunes nprobe after building: at each
        step the IVF's ``nprobe`` or the re-ranked candidates (``rerank``) double, whichever gains more recall,
        until the target, both limits (every cell; ``RERANK_MAX``) or a step where neither gains. Sets ``recall_``
        (recall, rows sampled)."""
        ivf = self._ivf()
        rows = sample_rows(self.n_, sample, seed)
        _, exact = exact_graph_rows(X, rows, k, self.metric)

        def recall() -> float:
            return recall_at_k(self.graph(X, k, rows=rows)[1], exact)

        def settings() -> tuple[int, float]:
            return (ivf.nprobe if ivf is not None else self.nprobe), self.rerank

        def use(nprobe: int, rerank: float) -> None:
            self.nprobe, self.rerank = nprobe, rerank
            if ivf is not None:
                _set_nprobe(require("faiss", "science", "kNN graphs"), ivf, nprobe)

        def wider(move: str) -> Optional[tuple[int, float]]:
            nprobe, rerank = settings()
            if move == "nprobe" and ivf is not None and nprobe < ivf.nlist:
                return min(ivf.nlist, 2 * nprobe), rerank
            if (move == "rerank" and getattr(self, "source_", None) is not None and rerank < RERANK_MAX
                    and rerank * (k + 1) < self.n_):
                return nprobe, 2 * rerank
            return None

        best = recall()
        while best < target:
            start, tried = settings(), []
            for option in filter(None, (wider("nprobe"), wider("rerank"))):
                use(*option)
                tried.append((recall(), option))
                use(*start)
            if not tried or max(tried)[0] <= best:  # at the limits, or neither gains: wider would cost for nothing
                break
            best, option = max(tried)
            use(*option)
        self.recall_ = (best, len(rows))
        if best < target:
            log.warning("the %s index reaches recall@%d %.3f on %d sampled rows (target %.2f) at nprobe %d, re-ranked "
                        "x%g: these vectors have little neighbour structure for compressed codes; more memory "
                        "(--max-memory) keeps whole vectors", self.index, k, best, len(rows), target,
                        settings()[0], self.rerank)
        return self

    def _fitted(self, idx) -> "KNNIndex":
        """Set every fitted attribute from the faiss index ``idx`` (the one place they are set)."""
        faiss = require("faiss", "science", "kNN graphs")
        self.normalise_ = self.metric == "cosine"
        self.index_, self.n_, self.dim_ = idx, int(idx.ntotal), int(idx.d)
        self._l2_as_cosine = self.normalise_ and idx.metric_type == faiss.METRIC_L2
        return self

    # ------------------------------------------------------------------ updates (what a live collection needs)
    def clone(self) -> "KNNIndex":
        """An independent copy (searches of this one go on while the copy is changed)."""
        faiss = require("faiss", "science", "kNN graphs")
        return type(self)(**self.get_params())._fitted(faiss.clone_index(self.index_))

    @property
    def memory_mapped(self) -> bool:
        """Whether the index's inverted lists are read from its file through a memory map (``load``): pages the
        kernel can reclaim, not the program's heap."""
        faiss = require("faiss", "science", "kNN graphs")
        ivf = self._ivf()
        return ivf is not None and isinstance(faiss.downcast_InvertedLists(ivf.invlists), faiss.OnDiskInvertedLists)

    @property
    def shifts_on_removal(self) -> bool:
        """Whether ``remove_rows`` renumbers the rows after a removed one, as the array they index does: flat indexes
        (row ids are positions) and IVF indexes whose lists are in memory (their stored ids are renumbered); others
        (HNSW, an index memory-mapped from a file) are emptied and refilled instead."""
        faiss = require("faiss", "science", "kNN graphs")
        if isinstance(self.index_, faiss.IndexFlat):
            return True
        ivf = self._ivf()
        return ivf is not None and isinstance(self.index_, faiss.IndexIVF) and isinstance(
            faiss.downcast_InvertedLists(ivf.invlists), (faiss.ArrayInvertedLists, faiss.BlockInvertedLists))

    def remove_rows(self, rows) -> "KNNIndex":
        """Remove ``rows`` (positions); the rows after them move down, as in the array they index. Only for an
        index that ``shifts_on_removal``; empty others with ``emptied`` and ``add`` the rows that stay."""
        faiss = require("faiss", "science", "kNN graphs")
        if not self.shifts_on_removal:
            raise ImgfeatError(f"a {type(self.index_).__name__} keeps row numbers on removal: empty it and add the "
                               "remaining rows instead")
        rows = np.unique(np.asarray(rows, dtype=np.int64))
        if len(rows):
            self.index_.remove_ids(faiss.IDSelectorBatch(rows))
            ivf = self._ivf()
            if ivf is not None:  # an IVF keeps the ids it was given: each list's ids move down past the removed rows
                lists = ivf.invlists
                for cell in range(ivf.nlist):
                    size = lists.list_size(cell)
                    if size:
                        ids = faiss.rev_swig_ptr(lists.get_ids(cell), size)
                        ids -= np.searchsorted(rows, ids)
        self.norms_ = None
        return self._fitted(self.index_)

    def emptied(self) -> "KNNIndex":
        """A copy with no vectors that keeps what training learnt (IVF cells, PQ codebooks, PCA)."""
        copy = self.clone()
        copy.index_.reset()
        return copy._fitted(copy.index_)

    def add(self, X) -> "KNNIndex":
        """Append the rows of ``X`` (normalised as ``fit`` does), block by block, after the indexed ones."""
        for b in row_blocks(X, self.block, self.normalise_):
            self.index_.add(b)
        self.norms_ = None  # the rows changed: re-ranking reads the candidates' norms with them
        return self._fitted(self.index_)

    def subset(self, mask: np.ndarray) -> "Subset":
        """A reusable restriction of searches to the rows where ``mask`` is true (``search(..., subset=)``)."""
        return Subset(self, mask)

    def save(self, path: str) -> None:
        """Write the fitted faiss index to ``path`` (atomically: a half-written index never exists)."""
        faiss = require("faiss", "science", "kNN graphs")
        with atomic_paths([path]) as (partial,):
            try:
                faiss.write_index(self.index_, str(partial))
            except RuntimeError as exc:  # faiss's C++ writer: a full disk is a message in the text
                for code, text in ((errno.ENOSPC, "No space left on device"), (errno.EDQUOT, "Disk quota exceeded")):
                    if text in str(exc):
                        raise OSError(code, text, str(path)) from None
                raise

    @classmethod
    def load(cls, path: str, metric: str = "ip", nprobe: int = 16, mmap: bool = True) -> "KNNIndex":
        """A fitted index read from a faiss index file, memory-mapped where faiss can (IVF lists) unless ``mmap`` is
        false (an index about to be changed: ``remove_rows`` renumbers lists in memory)."""
        faiss = require("faiss", "science", "kNN graphs")
        try:
            if not mmap:
                raise RuntimeError("read into memory")
            idx = faiss.read_index(str(path), faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)
        except RuntimeError:
            try:
                idx = faiss.read_index(str(path))
            except RuntimeError as exc:
                raise ImgfeatError(f"{path} is not a faiss index file ({str(exc).strip().splitlines()[-1]})") from None
        self = cls(metric=metric, index=type(idx).__name__, nprobe=nprobe)
        ivf = faiss.try_extract_index_ivf(idx)
        if ivf is not None:
            _set_nprobe(faiss, ivf, nprobe)
        return self._fitted(idx)

    def search(self, Q, k: int, block: Optional[int] = None,
               subset: Optional["Subset"] = None) -> tuple[np.ndarray, np.ndarray]:
        """(D float32, I int32), each len(Q) x k, computed ``block`` queries at a time; with ``subset`` (from
        ``subset(mask)``) only its rows are candidates (I is -1 where fewer than k exist)."""
        if k > self.n_:
            raise bad_param("k", f"an integer <= the number of indexed vectors ({self.n_})", k)
        Ds, Is = [], []
        source = getattr(self, "source_", None) if subset is None else None
        fetch = min(self.n_, int(np.ceil(k * self.rerank))) if source is not None else k
        if source is not None:  # candidates x dim floats a query: a smaller block keeps that bounded
            block = min(block or self.block, max(64, self.rerank_bytes // max(1, fetch * self.dim_ * 4)))
        for q in row_blocks(Q, block or self.block, self.normalise_):
            D, I = self.index_.search(q, fetch) if subset is None else subset.search(q, k)
            if self._l2_as_cosine:  # squared L2 of unit vectors: 2 - 2 cos
                D = np.where(I >= 0, 1.0 - D / 2.0, -np.inf)
            if source is not None:
                D, I = self._reranked(source, q, I, k)
            Ds.append(D.astype(np.float32))
            Is.append(I.astype(np.int32))
        if not Ds:
            return np.zeros((0, k), np.float32), np.zeros((0, k), np.int32)
        return np.concatenate(Ds), np.concatenate(Is)

    def _reranked(self, source, q: np.ndarray, I: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` best of the candidate rows ``I`` of each query ``q`` by exact similarity (the metric's: cosine
        on normalised rows, inner product, or squared L2), computed by faiss's ``knn_*_by_idx`` straight from a
        float32 array or memory map (its rows never copied), or from the candidates gathered from another source
        (a store's matrix) a block at a time."""
        faiss = require("faiss", "science", "kNN graphs")
        cand = np.ascontiguousarray(I, dtype=np.int64)  # faiss puts a query's missing candidates (-1) last
        if (isinstance(source, np.ndarray) and source.dtype == np.float32 and source.flags["C_CONTIGUOUS"]
                and (not self.normalise_ or getattr(self, "norms_", None) is not None)):
            Y, rows, norms = source, None, getattr(self, "norms_", None)
        else:
            rows = np.unique(cand[cand >= 0])
            Y = (np.ascontiguousarray(source[rows], dtype=np.float32) if len(rows)
                 else np.zeros((1, q.shape[1]), np.float32))
            cand = np.where(cand >= 0, np.searchsorted(rows, cand), -1)
            norms = np.linalg.norm(Y, axis=1) if self.normalise_ else None
        q = np.ascontiguousarray(q, dtype=np.float32)
        nq, fetch = cand.shape
        vals, ids = np.empty((nq, fetch), np.float32), np.empty((nq, fetch), np.int64)
        by_idx = faiss.knn_L2sqr_by_idx if self.metric == "l2" else faiss.knn_inner_products_by_idx
        ptr = faiss.swig_ptr
        by_idx(ptr(q), ptr(Y), ptr(cand), q.shape[1], nq, len(Y), fetch, fetch, ptr(vals), ptr(ids), fetch)
        worst = np.inf if self.metric == "l2" else -np.inf
        if self.normalise_ and norms is not None:  # cosine: the inner products of unit queries over the rows' norms
            vals = np.where(ids >= 0, vals / np.maximum(norms[np.maximum(ids, 0)], 1e-12), worst)
            order = np.argsort(-vals, axis=1, kind="stable")[:, :k]
            vals, ids = np.take_along_axis(vals, order, 1), np.take_along_axis(ids, order, 1)
        D, I = vals[:, :k], ids[:, :k]
        if rows is not None:
            I = np.where(I >= 0, rows[np.maximum(I, 0)], -1)
        return np.where(I >= 0, D, worst), I

    def _check_graph_k(self, k: int) -> None:
        if k >= self.n_:  # a point's own entry is dropped, so k + 1 neighbours must exist
            raise bad_param("k", f"an integer < the number of vectors ({self.n_})", k)

    def iter_graph(self, X, k: int, block: Optional[int] = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """The kNN graph of the indexed set ``X`` against itself, each point's own entry removed,
        as (D, I) blocks of ``block`` consecutive rows: write them out as they come and a
        100M-row graph never has to be held in memory."""
        self._check_graph_k(k)
        block = block or self.block
        for s in range(0, len(X), block):
            D, I = self.search(X[s:s + block], k + 1, block)
            yield drop_self(D, I, np.arange(s, s + len(I)), k)

    def graph(self, X, k: int, block: Optional[int] = None,
              rows: Optional[np.ndarray] = None) -> tuple[np.ndarray, np.ndarray]:
        """The whole graph (see ``iter_graph``) as two arrays; only the rows ``rows`` (indices
        into X) when given."""
        if rows is None:
            Ds, Is = zip(*self.iter_graph(X, k, block))
            return np.concatenate(Ds), np.concatenate(Is)
        self._check_graph_k(k)
        rows = np.asarray(rows)
        D, I = self.search(np.asarray(X[rows]), k + 1, block)
        return drop_self(D, I, rows, k)
