"""4-bit fast-scan against 8-bit PQ codes on vectors of low intrinsic dimension (issue 31): 500k x 320-d, 50 clusters
of 10,000 (the density of serve's 10M benchmark), noise in a random 32-d subspace plus 0.1 isotropic; recall@10 of
200 sampled rows against exact neighbours at each re-ranking factor, and the time a query takes.

    python benchmarks/pq_codes.py
"""
import time, numpy as np
from imgfeat.tools.exact import exact_graph_rows, recall_at_k
from imgfeat.tools.knn import KNNIndex
n, d, r, C = 500_000, 320, 32, 50
rng = np.random.default_rng(0)
centres = rng.normal(size=(C, d)).astype(np.float32) * 3
basis = rng.normal(size=(r, d)).astype(np.float32) / np.sqrt(r)
X = centres[rng.integers(0, C, n)] + rng.normal(size=(n, r)).astype(np.float32) @ basis + 0.1 * rng.normal(size=(n, d)).astype(np.float32)
rows = np.sort(rng.permutation(n)[:200])
_, ex = exact_graph_rows(X, rows, 10, "cosine")
for name in ("IVF1024,PQ64x4fs", "IVF1024,PQ64", "IVF1024,PQ80x4fs"):
    t = time.perf_counter()
    try:
        knn = KNNIndex(index=name, rerank=8, nprobe=16).fit(X)
    except Exception as e:
        print(name, "failed", e); continue
    fit = time.perf_counter() - t
    out = []
    for f in (8, 16, 32, 64):
        knn.rerank = f
        t = time.perf_counter()
        out.append(f"x{f} {recall_at_k(knn.graph(X, 10, rows=rows)[1], ex):.3f} ({(time.perf_counter()-t)/len(rows)*1000:.2f} ms/q)")
    print(name, f"fit {fit:.0f} s;", "; ".join(out), flush=True)
