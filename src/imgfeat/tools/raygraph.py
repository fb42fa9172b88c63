"""The query side of a kNN graph spread over a Ray cluster (``imgfeat knn --engine ray``): the driver fits the index
once and writes it beside the graph (on storage every node reads); each task opens the index (memory-mapped where
faiss can) and the features (memory-mapped) on its node, searches one block of rows and returns that block of the
graph; the driver writes the blocks in row order as they come, so the graph is the local one, file for file, and
never held whole. A task lost with its node is run again by Ray (``max_retries``); no work is shared by hand."""

from __future__ import annotations

import os
from collections import deque
from typing import Optional, Sequence

import numpy as np

from ..errors import require
from ..files import atomic_paths
from .graph import RAW_SUFFIXES, raw_rows, write_raw
from .knn import KNNIndex

IN_FLIGHT_PER_CPU = 2  # blocks queued per CPU of the cluster: enough to keep it busy, a bounded driver


def _graph_block(index_file: str, features: str, metric: str, nprobe: int, rerank: float, start: int, stop: int,
                 k: int) -> tuple[np.ndarray, np.ndarray]:
    """One block of the graph, on whichever node runs it: rows ``start .. stop`` of ``features`` searched in the
    index ``index_file`` as ``KNNIndex.graph`` does on one machine."""
    from ..outputs.formats import open_matrix

    _, X = open_matrix(features)
    knn = KNNIndex.load(index_file, metric, nprobe).reranking(X, rerank)
    return knn.graph(X, k, rows=np.arange(start, stop))


def ray_graph(knn: KNNIndex, features: str, ids: Sequence[str], k: int, raw: str, *, block: int = 65536,
              address: Optional[str] = None):
    """The ``k``-NN graph of the fitted ``knn`` over the rows of ``features`` (a store or file every node reads at
    the same path), computed as Ray tasks of ``block`` rows, written to ``raw`` + ``.int32``/``.float32``/
    ``.ids.txt`` as ``save_graph`` writes it. The index is saved to ``raw.faiss`` for the tasks. Returns, as
    ``save_graph`` does, a function of rows giving their neighbours (read from the file)."""
    ray = require("ray", "ray", "imgfeat knn --engine ray")
    knn._check_graph_k(k)
    index_file = raw + ".faiss"
    knn.save(index_file)
    started = not ray.is_initialized()
    if started:
        ray.init(address=address or os.environ.get("RAY_ADDRESS"), log_to_driver=False)
    try:
        task = ray.remote(num_cpus=1, max_retries=3)(_graph_block)
        cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
        ivf = knn._ivf()
        nprobe = int(ivf.nprobe) if ivf is not None else knn.nprobe
        rerank = knn.rerank if getattr(knn, "source_", None) is not None else 0.0
        starts = iter(range(0, len(ids), block))
        pending: deque = deque()

        def submit() -> None:
            s = next(starts, None)
            if s is not None:
                pending.append(task.remote(index_file, str(features), knn.metric, nprobe, rerank, s,
                                           min(len(ids), s + block), k))

        def blocks():  # in row order: the file is the local graph's, whichever node finished first
            for _ in range(cpus * IN_FLIGHT_PER_CPU):
                submit()
            while pending:
                D, I = ray.get(pending.popleft())
                submit()
                yield D, I

        with atomic_paths([raw + ext for ext in RAW_SUFFIXES]) as partials:
            write_raw(partials, blocks(), ids)
    finally:
        if started:
            ray.shutdown()
    return raw_rows(raw, len(ids), k)
