"""Issue 31: the science after extraction in bounded memory. The streamed paths (a graph on disk, a CSR built in
buckets, class scores in column blocks) equal the in-memory ones on small data with every block forced small; a
budget too small is refused before any work, with the figure it would need."""

from __future__ import annotations

import errno
import json

import numpy as np
import pytest

pytest.importorskip("faiss")
pytest.importorskip("scipy")

from imgfeat.cli import main  # noqa: E402
from imgfeat.errors import ImgfeatError  # noqa: E402
from imgfeat.tools import graph as graph_mod  # noqa: E402
from imgfeat.tools.diffusion import GraphDiffusion, LabelDiffusion  # noqa: E402
from imgfeat.tools.graph import RawGraph, normalized_graph  # noqa: E402
from imgfeat.tools.knn import KNNIndex  # noqa: E402

from test_tools import clusters, write_features  # noqa: E402


def _given(y, per_class: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    given = [None] * len(y)
    for c in sorted(set(y.tolist())):
        for i in rng.choice(np.flatnonzero(y == c), per_class, replace=False):
            given[i] = y[i]
    return given


def _dense_reference(I, D, gamma, alpha, iterations, given, classes):
    """The diffusion written plainly with dense matrices: W, W + W^T, D^-1/2 (.) D^-1/2, F <- a S F + (1-a) Y."""
    n = len(I)
    W = np.zeros((n, n), np.float64)
    for i in range(n):
        for j, d in zip(I[i], D[i]):
            W[i, j] += max(d, 0) ** gamma
    W = W + W.T
    inv = 1 / np.sqrt(np.maximum(W.sum(1), 1e-12))
    S = inv[:, None] * W * inv[None, :]
    Y = np.zeros((n, len(classes)))
    counts = {c: sum(g == c for g in given) for c in classes}
    for i, g in enumerate(given):
        if g is not None:
            Y[i, list(classes).index(g)] = 1 / counts[g]
    F = Y.copy()
    for _ in range(iterations):
        F = alpha * S @ F + (1 - alpha) * Y
    return F


def test_the_normalised_graph_on_disk_equals_the_one_in_memory(tmp_path):
    X, _ = clusters(n_per=40, k=5, d=16, spread=0.5, seed=4)
    D, I = KNNIndex(metric="cosine").fit(X).graph(X, 6)
    I[3, 2] = -1  # a row with fewer neighbours (an approximate index): the edge is left out
    whole = normalized_graph(RawGraph(I, D), 3.0, memory=2**40)
    monkey = graph_mod.BLOCK_ROWS
    try:
        graph_mod.BLOCK_ROWS = 7  # many blocks of the raw graph, and 17 buckets of rows on disk
        split = normalized_graph(RawGraph(I, D), 3.0, memory=3 * graph_mod.EDGE_BYTES * 30, folder=str(tmp_path))
    finally:
        graph_mod.BLOCK_ROWS = monkey
    assert split.folder is not None and split.folder.parent == tmp_path
    from scipy import sparse

    a = sparse.csr_matrix((whole.data, whole.indices, whole.indptr), shape=(len(X), len(X))).toarray()
    b = sparse.csr_matrix((np.asarray(split.data), np.asarray(split.indices), np.asarray(split.indptr)),
                          shape=(len(X), len(X))).toarray()
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert np.allclose(a, a.T) and a[3].nonzero()[0].size >= 5
    split.close()
    assert not any(tmp_path.iterdir())  # its files go with it


def test_streamed_diffusion_equals_the_dense_computation_and_the_in_memory_one(tmp_path):
    X, y = clusters(n_per=50, k=5, d=16, spread=0.9, seed=1)
    given = _given(y, 3)
    D, I = KNNIndex(metric="cosine").fit(X).graph(X, 8)
    mem = LabelDiffusion(k=8, iterations=12).fit(X, given)
    classes = mem.classes_
    ref = _dense_reference(I, D, 3.0, 0.99, 12, given, classes)
    np.testing.assert_allclose(mem.label_distributions_, ref, rtol=2e-4, atol=1e-6)
    keep = np.array([5, 0, 249, 77])
    old = graph_mod.BLOCK_ROWS
    try:
        graph_mod.BLOCK_ROWS = 16
        # a budget that fits one class column at a time and puts the CSR on disk, in 1 + many buckets
        per_class = 8 * len(X)
        small = GraphDiffusion(iterations=12, memory=24 * len(X) + 8 + per_class + 100, folder=str(tmp_path))
        streamed = small.fit(RawGraph(I, D), given, keep_rows=keep, track_rows=keep, track_iterations=(3, 12))
        # the rows renumbered while they diffuse (any renumbering: here a random one) change nothing fitted
        order = np.random.default_rng(5).permutation(len(X)).astype(np.int32)
        renumbered = GraphDiffusion(**small.get_params()).fit(RawGraph(I, D), given, keep_rows=keep, track_rows=keep,
                                                              track_iterations=(3, 12), order=order)
    finally:
        graph_mod.BLOCK_ROWS = old
    assert streamed.memory_["columns"] == 1 and not streamed.memory_["csr_in_memory"]
    assert streamed.transduction_.tolist() == mem.transduction_.tolist()
    np.testing.assert_allclose(streamed.scores_, mem.label_distributions_[keep], rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(streamed.tracked_[12], streamed.scores_)
    np.testing.assert_allclose(streamed.tracked_[3], _dense_reference(I, D, 3.0, 0.99, 3, given, classes)[keep],
                               rtol=2e-4, atol=1e-6)
    assert (streamed.transduction_ == y).mean() > 0.9
    assert renumbered.transduction_.tolist() == mem.transduction_.tolist()
    np.testing.assert_allclose(renumbered.scores_, mem.label_distributions_[keep], rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(renumbered.tracked_[3], streamed.tracked_[3], rtol=1e-5, atol=1e-8)
    assert not any(tmp_path.iterdir())


def test_locality_order_numbers_the_rows_of_one_cluster_together():
    """The renumbering the diffusion multiplies in: a permutation of the rows in which each cluster's rows (scattered
    through the collection) come out consecutive, each cluster in its old order; none for a collection of one cell."""
    from imgfeat.tools.graph import locality_order

    rng = np.random.default_rng(7)
    y = rng.integers(0, 6, 1200)  # six clusters along six axes (directions: what the cosine sees), rows shuffled
    X = (3 * np.eye(16)[y] + 0.2 * rng.standard_normal((1200, 16))).astype(np.float32)
    order = locality_order(X, cells=6)
    assert order.dtype == np.int32 and sorted(order.tolist()) == list(range(len(X)))
    runs = 1 + int((y[order][1:] != y[order][:-1]).sum())
    assert runs == 6  # each cluster one run of consecutive numbers
    for c in range(6):
        own = order[y[order] == c]
        assert len(own) > 150 and (np.diff(own) > 0).all()
    assert locality_order(X[:100]) is None  # under two cells of ORDER_CELL_ROWS


def test_a_budget_too_small_is_refused_before_any_work_with_the_figure(tmp_path, monkeypatch):
    X, y = clusters(n_per=30, k=3, d=8, seed=2)
    D, I = KNNIndex(metric="cosine").fit(X).graph(X, 5)

    def never(*a, **k):
        raise AssertionError("work started")

    monkeypatch.setattr("imgfeat.tools.diffusion.normalized_graph", never)
    with pytest.raises(ImgfeatError, match=r"diffusing labels over 90 rows needs at least 2.8 KB of memory; the "
                                           r"budget is 1000 B"):
        GraphDiffusion(memory=1000).fit(RawGraph(I, D), _given(y, 2))


def test_diffuse_from_a_raw_graph_equals_diffuse_from_the_features(tmp_path, capsys):
    """``knn --raw`` then ``diffuse --graph``: the same predictions and scores as ``diffuse`` building its own graph;
    a graph of other rows is refused."""
    X, y = clusters(n_per=40, k=4, d=16, spread=0.8, seed=3)
    ids = [f"img{i:03d}" for i in range(len(X))]
    feats = tmp_path / "f.npy"
    write_features(feats, X, ids)
    given = _given(y, 2)
    (tmp_path / "train.tsv").write_text("".join(f"{i}\t{g}\n" for i, g in zip(ids, given) if g is not None))
    (tmp_path / "test.tsv").write_text("".join(f"{i}\t{c}\n" for i, c, g in zip(ids, y, given) if g is None))
    assert main(["knn", "--features", str(feats), "--k", "10", "--raw", str(tmp_path / "g")]) == 0
    capsys.readouterr()
    from imgfeat.outputs.formats import open_matrix
    from imgfeat.outputs.idindex import id_index, ids_nbytes

    column, _ = open_matrix(feats)
    held, n = ids_nbytes(column) + id_index(column).nbytes, len(ids)  # the ids and their lookup count in the budget: one class a block beside
    one_class = held + 24 * n + 8 + 8 * n + 100
    runs = {}
    for name, extra in (("own", []), ("graph", ["--graph", str(tmp_path / "g"), "--max-memory", str(one_class)])):
        assert main(["diffuse", "--features", str(feats), "--labels", str(tmp_path / "train.tsv"), "--test-labels",
                     str(tmp_path / "test.tsv"), "--k", "10", "--out", str(tmp_path / f"{name}.tsv"), "--json",
                     *extra]) == 0
        runs[name] = json.loads(capsys.readouterr().out)
        assert runs[name]["memory"]["bytes"] > 0
        assert set(runs[name]["seconds"]) == {"graph", "renumbering", "diffusion"}  # where the time went
        assert min(runs[name]["seconds"].values()) >= 0
    assert (tmp_path / "own.tsv").read_text() == (tmp_path / "graph.tsv").read_text()
    assert runs["own"]["accuracy"] == runs["graph"]["accuracy"] > 0.9
    assert runs["graph"]["memory"]["columns"] == 1 and not runs["graph"]["memory"]["csr_in_memory"]
    assert held < runs["graph"]["memory"]["bytes"] <= one_class
    other = tmp_path / "h.npy"
    write_features(other, X[:100], ids[:100])
    (tmp_path / "few.tsv").write_text("".join(f"{i}\t{g}\n" for i, g in zip(ids[:100], given) if g is not None))
    assert main(["diffuse", "--features", str(other), "--labels", str(tmp_path / "few.tsv"), "--graph",
                 str(tmp_path / "g"), "--json"]) == 2
    assert "not the rows of" in capsys.readouterr().err
    swapped = tmp_path / "s.npy"  # as many rows, two of them in another order: refused too
    write_features(swapped, X[[1, 0] + list(range(2, len(X)))], [ids[1], ids[0]] + ids[2:])
    assert main(["diffuse", "--features", str(swapped), "--labels", str(tmp_path / "train.tsv"), "--graph",
                 str(tmp_path / "g"), "--json"]) == 2
    assert "not the rows of" in capsys.readouterr().err


def test_dedup_chooses_its_index_within_its_budget_and_finds_the_planted_duplicates(tmp_path, capsys, monkeypatch):
    """``dedup`` (default --index auto, the one ``choose_index``): exact for a small set; above (thresholds lowered
    here) the join of cells (its graph: a row a candidate in its two nearest cells; tuned wider on these isotropic
    vectors, or under a tight budget one cell's candidates and no wider); every planted near-duplicate (a tenth of the
    pairs lie across a cell's border) is grouped with its original either way."""
    from imgfeat.tools import autoindex

    monkeypatch.setattr(autoindex, "PCA_FROM", (1_000, 512))
    monkeypatch.setattr(autoindex, "EXACT_UP_TO", 2_000)
    rng = np.random.default_rng(5)
    X = rng.standard_normal((12000, 48)).astype(np.float32)
    planted = rng.choice(11000, 120, replace=False)
    X[11000:11120] = X[planted] + 0.08 * rng.standard_normal((120, 48)).astype(np.float32)  # cosine ~0.997
    ids = [f"i{i}" for i in range(len(X))]
    write_features(tmp_path / "f.npy", X, ids)
    for memory, want in (("1GB", "join of 16 cells nprobe 16"), ("2MB", "join of 16 cells nprobe 1")):
        out = tmp_path / f"{want}.tsv"
        assert main(["dedup", "--features", str(tmp_path / "f.npy"), "--out", str(out), "--json", "--max-memory",
                     memory]) == 0
        assert want in json.loads(capsys.readouterr().out)["index"]
        group = {}
        for line in out.read_text().splitlines():
            g, i = line.split("\t")
            group[i] = g
        assert all(group.get(f"i{p}") is not None and group.get(f"i{p}") == group.get(f"i{11000 + j}")
                   for j, p in enumerate(planted.tolist())), want


def test_re_ranked_pq_candidates_reach_the_exact_neighbours():
    """A compressed index alone misses neighbours; its candidates re-ranked against the vectors reach recall@10
    >= 0.95 (``choose_index``'s PQ codes above the budget: 4 dimensions a byte, as PQ64 on 256-d features), for
    cosine, ip and l2, on vectors with the low intrinsic dimension of image features."""
    from imgfeat.tools.exact import recall_at_k

    rng = np.random.default_rng(7)
    X = rng.standard_normal((8000, 12)).astype(np.float32) @ rng.standard_normal((12, 64)).astype(np.float32)
    X += 0.1 * rng.standard_normal(X.shape).astype(np.float32)
    for metric in ("cosine", "ip", "l2"):
        _, exact = KNNIndex(metric=metric).fit(X).graph(X, 10)
        _, coarse = KNNIndex(metric=metric, index="IVF64,PQ16", nprobe=16).fit(X).graph(X, 10)
        _, fine = KNNIndex(metric=metric, index="IVF64,PQ16", nprobe=16, rerank=4).fit(X).graph(X, 10)
        assert recall_at_k(fine, exact) >= 0.95 > recall_at_k(coarse, exact), metric
    import faiss

    knn = KNNIndex(index="IVF64,PQ16").fit(X)
    pq = faiss.downcast_index(faiss.try_extract_index_ivf(knn.index_))
    assert pq.pq.M == 16 and not pq.do_polysemous_training  # the factory's Hamming reordering: no search here uses it


def test_an_index_built_or_updated_in_memory_is_then_served_memory_mapped_from_the_cache(tmp_path, monkeypatch):
    """serve keeps a built (or generation-updated) 8-bit PQ index through ``IndexCache.keep``: saved, then the saved
    copy memory-mapped in its place (its codes file pages, not heap), answering exactly as the one in memory, with
    its re-ranking and tuned settings; where the cache cannot be written, the index in memory is served."""
    pytest.importorskip("faiss")
    from imgfeat.serve.indexes import IndexCache

    X, _ = clusters(n_per=1000, k=4, d=32)
    knn = KNNIndex(metric="cosine", index="IVF16,PQ8", nprobe=4, rerank=4).fit(X)
    kept = IndexCache(tmp_path / "index", "auto").keep(knn, "state1", np.arange(len(X), dtype=np.int64), X)
    assert not knn.memory_mapped and kept.memory_mapped
    assert (kept.nprobe, kept.rerank, kept.n_) == (4, 4, len(X))
    for a, b in zip(knn.search(X[:50], 10), kept.search(X[:50], 10)):
        np.testing.assert_array_equal(a, b)

    def disk_full(self, path):
        raise OSError(errno.ENOSPC, "No space left on device", path)

    monkeypatch.setattr(KNNIndex, "save", disk_full)  # the cache cannot be written: served from memory, a warning
    assert IndexCache(tmp_path / "full", "auto").keep(knn, "state1", None, X) is knn


_FREED_HEAP = """
import ctypes
from imgfeat.tools.memory import release_freed_heap

def anon_mb():
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("RssAnon")) / 1024

libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_size_t], [ctypes.c_void_p]
before = anon_mb()
blocks = [libc.malloc(65536) for _ in range(4096)]  # 256 MB of 64 KB blocks, each touched
for b in blocks:
    ctypes.memset(b, 1, 65536)
pin = blocks.pop()  # the last, taken from the heap's top above the others: kept, the top cannot shrink by itself
for b in blocks:
    libc.free(b)
held = anon_mb()
release_freed_heap()
print(before, held, anon_mb())
"""


def test_freed_heap_goes_back_to_the_system():
    """glibc keeps freed blocks under its mmap threshold (an in-memory index's inverted lists) for reuse: 256 MB of
    them stay resident until ``release_freed_heap`` hands them back, as serve does after swapping an index built in
    memory for its memory-mapped file. In a fresh interpreter, so that earlier tests' holes in this one's heap do not
    decide where the blocks land."""
    import platform
    import subprocess
    import sys

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("malloc_trim is glibc's")
    out = subprocess.run([sys.executable, "-c", _FREED_HEAP], capture_output=True, text=True, check=True).stdout
    before, held, after = map(float, out.split())
    assert held - before > 200  # freed, yet still held by the process
    assert held - after > 200  # handed back


def test_the_id_index_answers_as_a_dict_without_one():
    """serve's id lookup (``IdIndex``): the same rows as a dict for present, absent and repeated ids, and a forced
    hash collision never answers the wrong row."""
    from imgfeat.outputs.idindex import IdIndex

    ids = [f"photos/{i:06d}.jpg" for i in range(5000)] + ["dup", "é", "", "dup"]
    index = IdIndex(ids)
    ref = {rid: i for i, rid in enumerate(ids)}
    assert all(index.get(rid) == row for rid, row in ref.items()) and index.get("dup") == len(ids) - 1
    assert index.get("nope") is None and "nope" not in index and "é" in index and 3 not in index
    assert index.nbytes == 12 * len(ids)

    class Colliding(str):
        def __hash__(self):
            return 7

    same = [Colliding(f"c{i}") for i in range(20)]
    assert hash(same[0]) == hash(same[5]) == 7
    crowded = IdIndex(same)
    assert [crowded.get(Colliding(f"c{i}")) for i in range(20)] == list(range(20))
    assert crowded.get(Colliding("c20")) is None


def test_running_out_of_memory_is_one_line_not_a_traceback(tmp_path, capsys, monkeypatch):
    """A MemoryError anywhere (numpy's names what it asked for) is one line with the machine's available memory and
    what to change, exit status 1."""
    from imgfeat.tools import knn

    X, _ = clusters(n_per=20, k=2, d=8)
    write_features(tmp_path / "f.npy", X)

    def too_big(self, X):
        raise MemoryError("Unable to allocate 9.50 GiB for an array with shape (10000000, 256) and data type float32")

    monkeypatch.setattr(knn.KNNIndex, "fit", too_big)
    assert main(["dedup", "--features", str(tmp_path / "f.npy")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("imgfeat: error: out of memory (Unable to allocate 9.50 GiB") and "Traceback" not in err
    assert "available" in err and "IVF4096,PQ32" in err and err.count("\n") == 1


def test_knn_approx_auto_is_the_same_choice(tmp_path, capsys, monkeypatch):
    """``knn --approx auto`` and ``dedup`` take ``choose_index``'s index: exact on a small set, the join of cells
    under a tiny budget (as ``knn``'s graph: test_celljoin)."""
    from imgfeat.tools import autoindex

    rng = np.random.default_rng(3)
    X = rng.standard_normal((6000, 8)).astype(np.float32) @ rng.standard_normal((8, 32)).astype(np.float32)
    write_features(tmp_path / "f.npy", X)
    assert main(["knn", "--features", str(tmp_path / "f.npy"), "--k", "5", "--approx", "auto", "--raw",
                 str(tmp_path / "a"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["index"] == "exact"
    monkeypatch.setattr(autoindex, "PCA_FROM", (1_000, 512))
    monkeypatch.setattr(autoindex, "EXACT_UP_TO", 2_000)
    assert main(["dedup", "--features", str(tmp_path / "f.npy"), "--max-memory", "1MB", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["index"].startswith("join of ") and out["memory"]["index"] == "join"


def test_tuning_widens_an_approximate_search_until_the_recall_target():
    """``KNNIndex.tune`` (every ``auto`` index's last step) widens nprobe and the re-ranked candidates of an index
    that misses neighbours until its sampled recall@10 reaches 0.95, which an independent sample confirms; a target
    that cannot be reached ends at the last step that gained, not in a loop."""
    from imgfeat.tools.exact import exact_graph_rows, recall_at_k

    rng = np.random.default_rng(5)
    centres = rng.standard_normal((100, 64)).astype(np.float32)
    X = centres[rng.integers(0, 100, 12_000)] + 0.5 * rng.standard_normal((12_000, 64)).astype(np.float32)
    rows = np.arange(3, len(X), 40)  # not the tuning sample's rows
    _, exact = exact_graph_rows(X, rows, 10, "cosine")
    knn = KNNIndex(index="IVF64,PQ16x4fs", nprobe=2, rerank=2).fit(X)
    assert recall_at_k(knn.graph(X, 10, rows=rows)[1], exact) < 0.6
    knn.tune(X, 10)
    assert knn.recall_[0] >= 0.95 and knn.recall_[1] == 256 and knn.rerank > 2
    assert recall_at_k(knn.graph(X, 10, rows=rows)[1], exact) >= 0.95
    assert "re-ranked x" in knn.description and knn.get_params()["rerank"] == knn.rerank
    knn.tune(X, 10, target=1.01)
    assert knn.recall_[0] <= 1.0 and knn.rerank <= 64


def test_a_string_column_reads_as_the_list_it_replaces(tmp_path):
    """serve's ids and paths (``StringColumn`` over the store's Arrow columns): the same items, slices, iteration,
    equality and id lookup as a list of str, in fewer bytes than the list's objects."""
    import sys

    import pyarrow as pa

    from imgfeat.outputs.idindex import IdIndex, StringColumn

    ids = [f"photos/{i // 100:04d}/{i:07d}.jpg" for i in range(70_000)] + ["é", None]
    chunked = pa.chunked_array([pa.array(ids[:30_000]), pa.array(ids[30_000:])])
    column = StringColumn(chunked)
    assert len(column) == len(ids) and column[5] == ids[5] and column[-2] == "é" and column[-1] is None
    assert column[10:13] == ids[10:13] and list(column) == ids
    assert column == ids and column == StringColumn(ids) and column != ids[:-1] and column != StringColumn(ids[1:])
    index = IdIndex(StringColumn(ids[:-1]))
    assert index.get(ids[12_345]) == 12_345 and index.get("nope") is None
    as_objects = sys.getsizeof(ids) + sum(sys.getsizeof(i) for i in ids)
    assert column.nbytes < as_objects / 2


def test_a_string_column_gathers_rows_chunk_by_chunk_without_joining_its_chunks():
    """``StringColumn.take`` (how ``IdIndex.rows`` confirms its hits) gives the list's items at any rows, in their
    order, across chunks; it never joins the chunks into one copy (Arrow's own ``take`` on a chunked array does:
    194 MB more at 10M ids, which its allocator kept through the whole of ``diffuse``). Arrow's allocations during the
    gather are counted by a fresh memory pool."""
    import pyarrow as pa

    from imgfeat.outputs.idindex import StringColumn

    ids = [f"photos/{i:09d}/" + "x" * 30 for i in range(100_000)] + ["é", None]
    column = StringColumn(pa.chunked_array([pa.array(ids[s:s + 25_000], pa.large_string())
                                            for s in range(0, len(ids), 25_000)]))
    rows = np.random.default_rng(0).integers(0, len(ids), 1_000).tolist() + [len(ids) - 1, 0, len(ids) - 2, 0]
    before, pool = pa.default_memory_pool(), pa.proxy_memory_pool(pa.system_memory_pool())
    pa.set_memory_pool(pool)
    try:
        got = column.take(rows)
    finally:
        pa.set_memory_pool(before)
    assert got == [ids[r] for r in rows]
    assert pool.max_memory() < column.nbytes / 20  # the rows asked for, not a copy of the column
    assert column.take([]) == [] and StringColumn(ids).take(rows) == got
    for bad in ([len(ids)], [-1]):
        with pytest.raises(IndexError):
            column.take(bad)


def test_ids_of_a_store_and_an_npy_are_arrow_and_look_up_as_a_dict(tmp_path, monkeypatch):
    """``open_matrix`` gives the ids of an .npy (read from its .ids.txt by Arrow, a chunk at a time) as a
    ``StringColumn`` equal to the list the file holds: chunk boundaries, CRLF lines and non-ASCII ids included; a
    file that is not UTF-8 is a one-line error. ``IdIndex.rows`` answers as a dict for present, absent and repeated
    ids, and ``align`` joins labels through it."""
    from imgfeat.outputs import idindex
    from imgfeat.outputs.formats import open_matrix
    from imgfeat.tools.labels import align

    monkeypatch.setattr(idindex, "READ_CHUNK", 64)  # many chunks, lines cut at their ends
    ids = [f"photos/é{i:04d}.jpg" for i in range(300)] + ["dup", "", "dup"]
    X = np.random.default_rng(0).standard_normal((len(ids), 4)).astype(np.float32)
    write_features(tmp_path / "f.npy", X, ids)
    got, M = open_matrix(tmp_path / "f.npy")
    assert isinstance(got, idindex.StringColumn) and got == ids and list(got) == ids and M.shape == X.shape
    assert got._values.num_chunks > 50  # kept in chunks, not copied into one: every row found across them
    assert [got[i] for i in range(len(ids))] == ids and [got[-i] for i in range(1, 40)] == ids[-1:-40:-1]
    assert got[95:140] == ids[95:140] and got.take([301, 0, 150]) == [ids[301], ids[0], ids[150]]
    for bad in (len(ids), -len(ids) - 1):
        with pytest.raises(IndexError):
            got[bad]
    (tmp_path / "crlf.txt").write_bytes(b"a\r\nb\r\nc")
    assert list(idindex.read_lines(tmp_path / "crlf.txt")) == ["a", "b", "c"]
    # lines_equal (diffuse --graph's check of a graph's ids): chunk by chunk, against a column or a list
    lines = tmp_path / "f.ids.txt"
    assert idindex.lines_equal(lines, got) and idindex.lines_equal(lines, ids)
    assert idindex.lines_equal(tmp_path / "crlf.txt", ["a", "b", "c"])
    for other in (ids[:-1], ids + ["x"], ids[:150] + ["photos/é0150.jpeg"] + ids[151:], [],
                  idindex.StringColumn(ids[1:])):
        assert not idindex.lines_equal(lines, other)
    (tmp_path / "bad.npy").write_bytes((tmp_path / "f.npy").read_bytes())
    (tmp_path / "bad.ids.txt").write_bytes(b"ok\n\xff\xfe\n")
    with pytest.raises(ImgfeatError, match="not UTF-8"):
        open_matrix(tmp_path / "bad.npy")

    ref = {rid: i for i, rid in enumerate(ids)}
    query = ids[::7] + ["absent", "dup", ""]
    assert idindex.id_index(got).rows(query).tolist() == [ref.get(q, -1) for q in query]
    assert idindex.IdIndex(list(ids)).rows(query).tolist() == [ref.get(q, -1) for q in query]
    assert idindex.id_index(got) is idindex.id_index(got)  # built once per column
    Xl, yl, kept = align(got, M, {"photos/é0003.jpg": "a", "dup": "b"})
    assert kept == ["photos/é0003.jpg", "dup"] and np.array_equal(Xl, X[[3, 302]]) and yl.tolist() == ["a", "b"]


def test_each_index_states_its_memory_plan_before_the_work_and_refuses_what_does_not_fit(tmp_path, capsys,
                                                                                        monkeypatch, caplog):
    """``dedup`` and ``knn`` log their memory plan (the index, its training sample, a query block, the re-ranked
    candidates) before building anything and report it; an index the budget cannot hold is refused before any work,
    with the figure; the plan of ``auto`` keeps within its budget at 100M vectors."""
    import logging

    from imgfeat.tools import autoindex
    from imgfeat.tools.autoindex import index_bytes, plan_index

    rng = np.random.default_rng(3)
    X = rng.standard_normal((6000, 8)).astype(np.float32) @ rng.standard_normal((8, 32)).astype(np.float32)
    write_features(tmp_path / "f.npy", X)
    monkeypatch.setattr(autoindex, "PCA_FROM", (1_000, 512))
    monkeypatch.setattr(autoindex, "EXACT_UP_TO", 2_000)
    with caplog.at_level(logging.INFO, logger="imgfeat"):
        assert main(["dedup", "--features", str(tmp_path / "f.npy"), "--k", "5", "--max-memory", "1MB",
                     "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)["memory"]  # dedup's graph: the join of cells
    assert "memory plan: the join index of 6,000 vectors: index " in caplog.text
    assert "memory plan: grouping holds the ids and 12 bytes a row (" in caplog.text  # then its grouping's
    assert plan["budget"] == 2**20 and 0 < plan["parts"]["index"] < plan["bytes"] <= plan["budget"]
    assert plan["parts"]["index"] == index_bytes("join", 6000, 32, nlist=8) and plan["index"] == "join"
    codes = plan_index(6000, 32, "auto", 5, 2**20)  # a search index (serve): PQ codes within the budget
    assert "x4fs" in codes.index and 0 < codes.parts["index"] == index_bytes(codes.index, 6000, 32) < codes.total

    def no_work(self, X):
        raise AssertionError("the index was built before the budget was checked")

    monkeypatch.setattr(KNNIndex, "fit", no_work)
    for argv in (["knn", "--k", "5", "--raw", str(tmp_path / "c"), "--approx", "exact"], ["dedup", "--index", "exact"]):
        assert main([*argv, "--features", str(tmp_path / "f.npy"), "--max-memory", "100KB"]) == 2
        err = capsys.readouterr().err
        assert "the exact index of 6,000 vectors (" in err and "needs at least 750.0 KB of memory; the budget is " \
            "100.0 KB" in err
        assert err.count("\n") == 1 and not (tmp_path / "c.int32").exists()
    # an index that fits, and a grouping that does not (the ids, 12 bytes a row and a batch of pairs): refused too
    write_features(tmp_path / "g.npy", rng.standard_normal((20000, 2)).astype(np.float32))
    assert main(["dedup", "--index", "exact", "--features", str(tmp_path / "g.npy"), "--max-memory", "400KB"]) == 2
    err = capsys.readouterr().err
    assert "grouping the near-duplicates of 20,000 vectors needs at least " in err and "budget is 400.0 KB" in err
    for memory in (2**33, 2**35):  # auto: the index, its sample and its buffers within the budget at 100M x 256
        big = plan_index(100_000_000, 256, "auto", 30, memory)
        assert big.total <= memory and ",PQ" in big.index and big.parts["index"] <= memory / 2
    # the training sample (half the budget: 8,192 cells at 10M in 1 GiB) is freed before the index holds a vector, so
    # the plan's figure is the larger of the two phases, not their sum
    ten = plan_index(10_000_000, 256, "auto", 30, 2**30)
    assert ten.index == "IVF8192_HNSW32,PQ32" and ten.train_rows == 8192 * 39
    searching = ten.parts["index"] + ten.parts["query block"] + ten.parts["re-ranking"]
    assert ten.total == max(ten.parts["training sample"], searching) == searching < sum(ten.parts.values())
    assert index_bytes("IVF4096,PQ64x4fs", 10**6, 256) == 10**6 * (32 + 8) + 4096 * 256 * 4
    assert index_bytes("IVF1024_HNSW32,PQ32", 10**6, 256) == 10**6 * (32 + 8) + 1024 * 256 * 4 + 1024 * 32 * 8
    assert index_bytes("OPQ16_64,IVF256,SQ8", 1000, 256) is not None and index_bytes("LSH", 10, 8) is None


def test_row_labels_stand_for_a_label_per_row():
    """``diffuse`` hands the diffusion its labels as ``RowLabels`` (the labelled rows, found through ``IdIndex``), not
    a list of N labels or Nones: the same sequence, the same sources, the same diffusion."""
    from imgfeat.outputs.idindex import StringColumn
    from imgfeat.tools.diffusion import RowLabels, label_sources

    X, y = clusters(n_per=30, k=3, d=8, spread=0.5, seed=4)
    ids = StringColumn([f"img{i:03d}" for i in range(len(X))])
    given = _given(y, 3)
    as_list = [g for g in given]
    rows = RowLabels.of(ids, {ids[i]: g for i, g in enumerate(given) if g is not None} | {"absent": "c0"})
    assert len(rows) == len(as_list) and list(rows) == as_list and rows[5:9] == as_list[5:9]
    (c1, s1), (c2, s2) = label_sources(as_list), label_sources(rows)
    assert c1.tolist() == c2.tolist() and all(np.array_equal(a, b) for a, b in zip(s1, s2))
    graph = RawGraph(*reversed(KNNIndex().fit(X).graph(X, 8)))
    a, b = GraphDiffusion(iterations=10).fit(graph, as_list), GraphDiffusion(iterations=10).fit(graph, rows)
    assert np.array_equal(a.labels_, b.labels_)


def test_every_block_of_classes_propagates_in_the_same_two_buffers():
    """``propagate`` holds two N x columns buffers whatever the number of blocks: a block the caller still holds while
    the next is set up does not double the memory (2.1 GB at 3M rows in a 1 GiB plan before), and the blocks' scores
    are those of one block of every class."""
    from imgfeat.tools.graph import propagate

    rng = np.random.default_rng(0)
    I = np.array([rng.choice(np.delete(np.arange(300), i), 6, replace=False) for i in range(300)])
    S = normalized_graph(RawGraph(I.astype(np.int32), rng.random((300, 6)).astype(np.float32)), 3.0, memory=2**30)
    sources = (np.arange(0, 300, 10), np.arange(30) % 7, np.ones(30))
    whole = next(propagate(S, sources, 7, 5, 0.9, 7))[1].copy()
    held, addresses = [], set()
    for c0, F in propagate(S, sources, 7, 5, 0.9, 3):
        addresses.add(F.__array_interface__["data"][0])
        np.testing.assert_allclose(F, whole[:, c0:c0 + F.shape[1]], rtol=1e-5)
        held.append(F)
    assert [F.shape[1] for F in held] == [3, 3, 1] and len(addresses) <= 2
