"""The kNN graph spread over a Ray cluster (``imgfeat knn --engine ray``). The driver fits the index once (and tunes
it, as on one machine); each task opens the features (memory-mapped, on storage every node reads) on its node and
computes one block of the graph, which the driver writes as it comes, so the graph is the local one, file for file,
and never held whole.

- A ``CellJoin`` (``auto``'s graph above the exact sizes) is put in Ray's object store once (its centroids and 12
  bytes a row of assignment, shared by the tasks of a node); a task searches one group of cells (``CellJoin.groups``),
  and its rows are written in place.
- A search index (``exact``, ``ivf``, a factory string) is saved beside the graph; a task opens it (memory-mapped
  where faiss can) and searches one block of consecutive rows.

A task lost with its node is run again by Ray (``max_retries``); no work is shared by hand."""

from __future__ import annotations

import os
from collections import deque
from typing import Optional, Sequence, Union

import numpy as np

from ..errors import require
from ..files import atomic_paths
from .graph import RAW_SUFFIXES, raw_rows, write_raw
from .celljoin import CellJoin
from .knn import KNNIndex

IN_FLIGHT_PER_CPU = 2  # blocks queued per CPU of the cluster: enough to keep it busy, a bounded driver


def _graph_block(index_file: str, features: str, metric: str, nprobe: int, rerank: float, start: int, stop: int,
                 k: int) -> tuple[np.ndarray, np.ndarray]:
    """One block of the graph, on whichever node runs it: rows ``start .. stop`` of ``features`` searched in the
    index ``index_file`` as ``KNNIndex.graph`` does on one machine."""
    from ..outputs.formats import open_vectors

    X = open_vectors(features)
    knn = KNNIndex.load(index_file, metric, nprobe).reranking(X, rerank)
    return knn.graph(X, k, rows=np.arange(start, stop))


def _join_block(join: CellJoin, features: str, c0: int, c1: int, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The rows of cells ``c0 .. c1`` and their neighbours, as ``CellJoin.iter_graph`` computes them on one machine."""
    from ..outputs.formats import open_vectors

    X = open_vectors(features)
    return join.search_cells(X, c0, c1, k)


def ray_graph(knn: Union[KNNIndex, CellJoin], features: str, ids: Sequence[str], k: int, raw: str, *,
              block: int = 65536, address: Optional[str] = None):
    """The ``k``-NN graph of the fitted ``knn`` over the rows of ``features`` (a store or file every node reads at
    the same path), computed as Ray tasks of ``block`` rows, written to ``raw`` + ``.int32``/``.float32``/
    ``.ids.txt`` as ``save_graph`` writes it. A search index is saved to ``raw.faiss`` for the tasks; a ``CellJoin``
    goes through the object store, a group of whole cells (about ``block`` rows) a task. Returns, as
    ``save_graph`` does, a function of rows giving their neighbours (read from the file)."""
    ray = require("ray", "ray", "imgfeat knn --engine ray")
    join = isinstance(knn, CellJoin)
    if join:
        knn._check_k(k)
    else:
        knn._check_graph_k(k)
        index_file = raw + ".faiss"
        knn.save(index_file)
    started = not ray.is_initialized()
    if started:
        ray.init(address=address or os.environ.get("RAY_ADDRESS"), log_to_driver=False)
    try:
        cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
        if join:
            task, shared = ray.remote(num_cpus=1, max_retries=3)(_join_block), ray.put(knn)
            args = iter([(shared, str(features), c0, c1, k) for c0, c1 in knn.groups(block)])
        else:
            task = ray.remote(num_cpus=1, max_retries=3)(_graph_block)
            ivf = knn._ivf()
            nprobe = int(ivf.nprobe) if ivf is not None else knn.nprobe
            rerank = knn.rerank if getattr(knn, "source_", None) is not None else 0.0
            args = ((index_file, str(features), knn.metric, nprobe, rerank, s, min(len(ids), s + block), k)
                    for s in range(0, len(ids), block))
        pending: deque = deque()

        def submit() -> None:
            a = next(args, None)
            if a is not None:
                pending.append(task.remote(*a))

        def blocks():  # in submission order: the file is the local graph's, whichever node finished first
            for _ in range(cpus * IN_FLIGHT_PER_CPU):
                submit()
            while pending:
                block_ = ray.get(pending.popleft())
                submit()
                yield block_

        with atomic_paths([raw + ext for ext in RAW_SUFFIXES]) as partials:
            write_raw(partials, blocks(), ids)
    finally:
        if started:
            ray.shutdown()
    return raw_rows(raw, len(ids), k)
