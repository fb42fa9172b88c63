"""The index of a kNN search chosen under a memory budget, once for every tool (``knn --approx auto``, ``dedup``,
``diffuse``, ``audit``, ``serve``), as autofaiss chooses: exact for small sets, a PCA pre-search for
high-dimensional ones, inverted lists over the vectors while they fit, else PQ codes whose candidates are
re-ranked against the vectors on disk. ``plan_index`` says what an index will hold before it is built (the line each
command logs, and the refusal, with the figure, of one that does not fit); ``build_index`` builds it and tunes its
search to the recall target on the user's own vectors."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Optional

import numpy as np

from ..errors import bad_param
from .celljoin import CANDIDATE_BYTES, GROUP_BYTES, NPROBE, CellJoin, join_bytes, join_cells
from .knn import RERANK_BYTES, TARGET_RECALL, TRAIN_PER_CELL, KNNIndex, ivf_cells
from .memory import available_bytes, human, refuse_unless

log = logging.getLogger(__name__)

EXACT_UP_TO = 100_000  # choose_index: an exact search up to this many vectors (n^2: 29 s at 100k x 256)
PCA_FROM = (20_000, 512)  # choose_index: the pca graph from this many vectors of at least this dimension
PCA_UP_TO = 500_000  # choose_index: above, no exact search at all (pca's candidate search is still quadratic)
RERANK = 4.0  # choose_index: a compressed index's candidates, k times this, re-ranked exactly
HNSW_CELLS = 8192  # choose_index: from this many IVF cells, an HNSW quantizer assigns vectors to them (a flat one
#                    compares each with every cell: 10M x 8192 x 320-d is about 8 minutes of adding on 2 cores)
BLOCK = 65536  # query rows a graph searches at a time, fewer where the budget is small
PQ4_TRAIN = TRAIN_PER_CELL * 16  # the fewest rows that train 4-bit PQ codebooks (16 centroids each)
PQ8_TRAIN = TRAIN_PER_CELL * 256  # the fewest rows that train 8-bit PQ codebooks (256 centroids each)
PQ8_MAX = 64  # choose_index: at most this many 8-bit codes a vector (64 bytes: recall@10 0.975 at x16 on 320-d
#               image-like vectors; more codes cost encoding time for little recall)


def choose_index(n: int, d: int, memory: Optional[int] = None, graph: bool = False) -> tuple[str, float]:
    """The index of a kNN search over n vectors of d dimensions within ``memory`` bytes (None: what the machine has
    available), each kind only where its ``index_bytes`` fit half the budget: the one choice of every ``--index auto`` (``knn``, ``dedup``, ``diffuse``, ``audit``), as autofaiss
    chooses: exact for small sets; "pca" for high-dimensional ones up to ``PCA_UP_TO`` (3k candidates from an exact
    search in 128 PCA dimensions, re-ranked on the full vectors: recall@10 0.99 of the exact graph on Fashion-MNIST's
    60k x 1280 in a third of the time; BENCHMARKS.md); above, inverted lists over the full vectors (``ivf``) while
    they fit half the budget, else IVF with 8-bit PQ codes (the most that fit, up to ``PQ8_MAX`` and one per 4
    dimensions; 4-bit fast-scan codes below ``PQ8_TRAIN`` vectors or where not even 8 bytes fit; an HNSW
    quantizer from ``HNSW_CELLS`` cells on, as faiss's guidelines advise from about 1M vectors) whose
    ``RERANK`` x k candidates are re-ranked against the vectors on disk (``build_index`` then widens the search until
    the recall target). For a ``graph`` of the vectors against themselves (``knn``, ``dedup``, ``diffuse``,
    ``audit``), above exact and pca, the ``join`` of k-means cells (``tools.celljoin``) instead of inverted lists or
    compressed codes: 12 bytes a row of cell assignment, the vectors read from disk a cell's neighbourhood at a time,
    one BLAS product a cell (1M image-like rows: 104 s for the graph where IVF-PQ took 192 s, BENCHMARKS.md). Returns (index, rerank factor); refuses a budget that
    not even 1-byte codes fit, with the figure."""
    memory = available_bytes() if memory is None else memory

    def fits(index: str) -> bool:  # half the budget: the rest for training, queries and what the caller holds
        return index_bytes(index, n, d) <= memory / 2

    if n < PCA_FROM[0] and fits("exact"):
        return "exact", 0.0
    if d >= PCA_FROM[1] and PCA_FROM[0] <= n <= PCA_UP_TO and fits("pca"):
        return "pca", 0.0
    if n <= EXACT_UP_TO and fits("exact"):
        return "exact", 0.0
    if graph and fits("join"):  # a graph: cells joined by BLAS products beat inverted lists scanned a query at a time
        return "join", 0.0
    if fits("ivf"):
        return "ivf", 0.0
    # about 4 sqrt(n) cells (a power of 2), no more than the vectors train (TRAIN_PER_CELL each) and than half the
    # budget holds as a training sample (freed before the index holds a vector: IndexPlan.total)
    cap = min(n // TRAIN_PER_CELL, memory / 2 / (TRAIN_PER_CELL * d * 4))
    nlist = int(2 ** min(np.round(np.log2(4 * np.sqrt(n))), np.floor(np.log2(max(cap, 16)))))
    nlist = max(16, nlist)
    # PQ: m codes a vector, at most one per 4 dimensions; 8-bit (m bytes) from PQ8_TRAIN vectors and 8 codes on,
    # else 4-bit fast-scan (m/2 bytes: trains in seconds, searches faster, but orders dense clusters poorly)
    even = [m for m in (256, 128, 64, 32, 16, 8, 4, 2) if d % m == 0 and m <= max(2, d // 4)]
    refuse_unless(n * (1 + 8) * 2, memory, f"a kNN index of {n:,} vectors",
                  "Even 1-byte codes a vector do not fit: give --max-memory more, or index a sample.")
    quantizer = f"IVF{nlist}_HNSW32" if nlist >= HNSW_CELLS else f"IVF{nlist}"
    if n >= PQ8_TRAIN:  # 8-bit codes where they train: 256 centroids a sub-space order near neighbours in dense
        #                 clusters, where 16 cannot (recall@10 0.975 against 0.14 at x16, BENCHMARKS.md, issue 31)
        m = next((m for m in even if 8 <= m <= PQ8_MAX and fits(f"{quantizer},PQ{m}")), None)
        if m is not None:
            return f"{quantizer},PQ{m}", RERANK
    m = next((m for m in even if fits(f"{quantizer},PQ{m}x4fs")), None)
    if m is None:  # an odd dimension: 8-bit PQ, the most sub-vectors dividing d that fit (one byte each)
        m = max(m for m in range(1, max(1, d // 4) + 1) if d % m == 0 and (m == 1 or fits(f"{quantizer},PQ{m}")))
        return f"{quantizer},PQ{m}", RERANK
    return f"{quantizer},PQ{m}x4fs", RERANK


@dataclass(frozen=True)
class IndexPlan:
    """What a kNN index over n vectors will hold, before it is built: ``parts`` in bytes (the index itself, its
    training sample, a block of queries, the re-ranked candidates of a block), within ``budget``; ``train_rows``,
    ``block`` and ``rerank_bytes`` are the sizes ``build_index`` gives the ``KNNIndex`` so that it keeps to them (a
    join's candidate bytes, and its ``nlist`` cells: about 1,000 rows each, as many as their sample fits half the
    budget). An index ``None`` in ``parts`` is one whose size is not known (a factory string of an unknown kind)."""

    index: str
    rerank: float
    n: int
    budget: int
    parts: dict
    train_rows: Optional[int]
    block: int
    rerank_bytes: int
    nlist: Optional[int] = None  # a join's cells
    group_bytes: int = GROUP_BYTES  # a join's candidates of a group of cells, gathered in one pass

    @property
    def total(self) -> int:
        """The most held at once: the training sample while the cells and codes train (the index is empty then), or
        the index with a block of queries and its re-ranked candidates while the graph is searched."""
        parts = {name: v or 0 for name, v in self.parts.items()}
        sample = parts.pop("training sample", 0)
        return int(max(sample, sum(parts.values())))

    def line(self) -> str:
        parts = ", ".join(f"{name} {human(v) if v is not None else 'not estimated'}" for name, v in self.parts.items())
        return (f"memory plan: the {self.index} index of {self.n:,} vectors: {parts}: {human(self.total)} of a "
                f"{human(self.budget)} budget (--max-memory)")

    def as_dict(self) -> dict:
        return {"index": self.index, "budget": self.budget, "bytes": self.total,
                "parts": {name.replace(" ", "_"): v for name, v in self.parts.items()}}


def index_bytes(index: str, n: int, d: int, M: int = 32, nlist: Optional[int] = None) -> Optional[int]:
    """Bytes an index of ``n`` vectors of ``d`` dimensions holds: the vectors or their codes, the ids an IVF keeps
    (8 bytes a vector), its cells (and an HNSW quantizer's links). None: a factory string of a kind not known here."""
    if index == "exact":
        return n * d * 4
    if index == "join":
        return join_bytes(n, d, nlist)
    if index == "ivf":
        return n * (d * 4 + 8) + (nlist or ivf_cells(n)) * d * 4
    if index == "hnsw":
        return n * (d * 4 + 2 * M * 4 + 16)  # the vectors and the links of level 0 (2M neighbours), upper levels ~5%
    if index == "pca":
        return n * (d * 4 + min(128, d) * 4)  # the full vectors to re-rank, and their PCA projections
    per, fixed = 0.0, 0
    for token in index.split(","):
        token = token.strip()
        if m := re.fullmatch(r"(?:PCAR?|OPQ\d+_)(\d+)|OPQ\d+", token):
            d = int(m.group(1)) if m.group(1) else d
            fixed += d * d * 4
        elif m := re.fullmatch(r"IVF(\d+)(?:_HNSW(\d+))?", token):
            cells = int(m.group(1))
            per += 8
            fixed += cells * d * 4 + (cells * int(m.group(2)) * 8 if m.group(2) else 0)
        elif m := re.fullmatch(r"PQ(\d+)(?:x(\d+))?(fs)?(np)?", token):
            per += int(m.group(1)) * int(m.group(2) or 8) / 8
        elif m := re.fullmatch(r"HNSW(\d+)", token):  # the vectors and their level-0 links
            per += d * 4 + 2 * int(m.group(1)) * 4 + 16
        elif token in ("Flat", "RFlat", "Refine(Flat)"):
            per += d * 4
        elif m := re.fullmatch(r"SQ(4|6|8|fp16|bf16)", token):
            per += d * {"4": 0.5, "6": 0.75, "8": 1, "fp16": 2, "bf16": 2}[m.group(1)]
        else:
            return None
    return int(n * per + fixed)


def plan_index(n: int, d: int, index: str = "auto", k: int = 10, memory: Optional[int] = None,
               what: str = "a kNN search", nlist: Optional[int] = None, graph: bool = False) -> IndexPlan:
    """The plan of ``index`` ("auto": ``choose_index``'s pick) over n vectors of d dimensions within ``memory`` bytes
    (None: what the machine has available): the index, then its buffers sized within fractions of the budget (the
    training sample half, as the index is empty while it trains; a block of queries and the re-ranked candidates an
    eighth each, beside the index, never below what
    works: 624 training rows, 64 queries; a join's candidates an eighth). ``graph``: the index builds the graph of
    the vectors against themselves (``choose_index``). Refuses, before any work and with the figure, an index that
    does not fit the budget."""
    memory = available_bytes() if memory is None else int(memory)
    name, rerank = choose_index(n, d, memory, graph) if index == "auto" else (index, 0.0)
    if name == "join" and not graph:
        raise bad_param("index", "an index that answers any query (the join builds a graph of the vectors against "
                                 "themselves, on one machine: knn, diffuse, audit)", name)
    if name == "join" and not nlist:  # ~1,000 rows a cell, as far as their sample (39 rows a cell) fits half the budget
        nlist = min(join_cells(n), 2 ** int(np.floor(np.log2(max(2.0, memory / 2 / (TRAIN_PER_CELL * d * 4))))))
    held = index_bytes(name, n, d, nlist=nlist)
    if held is not None:
        refuse_unless(held, memory, f"the {name} index of {n:,} vectors ({what})",
                      "Give --max-memory more, or let --index auto choose compressed codes within the budget.")
    trained = name not in ("exact", "hnsw")
    named = re.search(r"IVF(\d+)", name)
    cells = (int(named.group(1)) if named else (nlist or ivf_cells(n)) if name == "ivf"
             else (nlist or join_cells(n)) if name == "join" else 0)
    want = TRAIN_PER_CELL * (cells if name == "join" else max(256, cells))
    bits = re.search(r"PQ\d+(?:x(\d+))?", name)  # codebooks need TRAIN_PER_CELL rows per centroid at least
    floor = TRAIN_PER_CELL * 2 ** int(bits.group(1) or 8) if bits else PQ4_TRAIN
    train_rows = min(n, want, max(floor, memory // 2 // (d * 4))) if trained else None
    block = int(min(BLOCK, max(64, memory // 8 // (d * 8 + (k + 1) * 12))))
    rerank_bytes = int(min(RERANK_BYTES, max(memory // 8, 1))) if rerank else 0
    group = 0
    if name == "join":  # the candidates of one cell's search, in place of re-ranked ones; and of a group of cells,
        #                 read in one pass along the file (a quarter of the budget: fewer passes over a large store)
        rerank_bytes = int(min(CANDIDATE_BYTES, max(memory // 8, 1)))
        group = int(max(rerank_bytes, min(memory // 4, max(GROUP_BYTES, n * d * 4 // 8))))
    parts = {"index": held, "training sample": (train_rows or 0) * d * 4,
             "query block": min(n, block) * (d * 8 + (k + 1) * 12),
             "cell candidates" if name == "join" else "re-ranking": rerank_bytes, "group's candidates": group}
    return IndexPlan(name, rerank, n, memory, {p: v for p, v in parts.items() if v != 0}, train_rows, block,
                     rerank_bytes or RERANK_BYTES, nlist if name == "join" else None, group or GROUP_BYTES)


def build_index(X, index: str, k: int, *, memory: Optional[int] = None, metric: str = "cosine", nprobe: int = 16,
                nlist: Optional[int] = None, target: float = TARGET_RECALL, what: str = "a kNN search",
                plan: Optional[IndexPlan] = None, graph: bool = False):
    """A fitted index over X: the one ``auto`` of ``knn --approx``, ``dedup``, ``diffuse``, ``audit`` and ``serve``
    (``choose_index``'s pick within ``memory``, an approximate one's search then widened by ``KNNIndex.tune`` until
    recall@k on sampled rows of X reaches ``target``), or the named ``index`` as it is. Its ``plan_index`` is logged
    before the work (and kept as ``plan_``); an index that does not fit is refused then. A ``plan`` made (and said)
    by the caller is followed as it is. ``graph``: the index builds the graph of X against itself, and may be the
    ``CellJoin`` that does only that."""
    if plan is None:
        plan = plan_index(len(X), X.shape[1], index, k, memory, what, nlist if index != "auto" else None, graph)
        log.info(plan.line())
    if plan.index == "join":
        named = index != "auto"
        # auto: NPROBE cells at first, fewer where the budget's candidates hold fewer (tune widens within it)
        first = max(1, min(NPROBE, plan.rerank_bytes // max(1, len(X) // plan.nlist * 2 * X.shape[1] * 4)))
        join = CellJoin(metric=metric, nlist=plan.nlist, nprobe=nprobe if named else first,
                        train_rows=plan.train_rows,
                        block=plan.block, candidate_bytes=plan.rerank_bytes, group_bytes=plan.group_bytes).fit(X)
        join.plan_ = plan
        return join if named else join.tune(X, min(k, join.n_ - 1), target)
    knn = KNNIndex(metric=metric, index=plan.index, rerank=plan.rerank, nprobe=nprobe,
                   nlist=nlist if index != "auto" else None, train_rows=plan.train_rows, block=plan.block,
                   rerank_bytes=plan.rerank_bytes).fit(X)
    knn.plan_ = plan
    if index == "auto" and plan.index not in ("exact", "pca"):
        knn.tune(X, min(k, knn.n_ - 1), target)
    return knn
