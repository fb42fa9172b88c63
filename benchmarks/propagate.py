"""The label diffusion's product ``S @ F`` (issue 31): seconds per iteration of the normalised kNN graph times the class
scores, as ``GraphDiffusion`` runs it, against the scipy product on rows in their own order (the baseline, what it
was before), measured in the same run.

The collection is ``benchmarks/scale.py``'s (256-d unit vectors around 1,000 centres, rows in random order). Its
graph here is a stand-in for the kNN graph of such data: each row's k neighbours are random rows of its own cluster,
with random similarities (a real graph takes minutes to build; ``scale.py --commands diffuse`` times the whole command).

    python benchmarks/propagate.py --rows 1000000 --classes 100
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def main() -> None:
    from scipy import sparse

    from imgfeat.tools.graph import RawGraph, locality_order, normalized_graph

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--k", type=int, default=30)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    n, k = args.rows, args.k
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((1000, 256)).astype(np.float32)
    cluster = rng.integers(0, 1000, n)
    X = np.empty((n, 256), np.float32)
    for s in range(0, n, 100_000):
        c = cluster[s:s + 100_000]
        X[s:s + len(c)] = centres[c] + 0.35 * rng.standard_normal((len(c), 256)).astype(np.float32)
    members = np.argsort(cluster, kind="stable")
    start = np.searchsorted(cluster[members], np.arange(1000))
    size = np.bincount(cluster, minlength=1000)
    pick = (rng.random((n, k)) * size[cluster][:, None]).astype(np.int64)
    I = members[start[cluster][:, None] + pick].astype(np.int32)
    D = (0.5 + 0.5 * rng.random((n, k))).astype(np.float32)
    graph = RawGraph(I, D)

    t = time.perf_counter()
    order = locality_order(X)
    ordering = time.perf_counter() - t
    F = np.ascontiguousarray(rng.random((n, args.classes), dtype=np.float32))
    rows = []
    for name, renumber in (("rows in their own order", None), ("rows renumbered by locality_order", order)):
        S = normalized_graph(graph, 3.0, 2**40, order=renumber)
        G = F if renumber is None else np.ascontiguousarray(F[renumber])
        out = np.empty_like(G)
        A = sparse.csr_matrix((S.data, S.indices, S.indptr), shape=(n, n))  # one scipy product, one thread
        t = time.perf_counter()
        for _ in range(args.repeat):
            A @ G
        rows.append((f"one thread, {name}" + (" (before)" if renumber is None else ""),
                     (time.perf_counter() - t) / args.repeat))
        t = time.perf_counter()
        for _ in range(args.repeat):
            S.matmul(G, out)
        rows.append((f"threads on every core, {name}", (time.perf_counter() - t) / args.repeat))
    base = rows[0][1]
    print(f"{n:,} rows, {k} neighbours, {args.classes} classes; locality_order took {ordering:.1f} s\n")
    print("| product | s / iteration | speed-up |\n|---|---|---|")
    for name, sec in rows:
        print(f"| {name} | {sec:.2f} | x{base / sec:.1f} |")


if __name__ == "__main__":
    main()
