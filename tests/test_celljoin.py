"""Issue 31: the kNN graph by joining k-means cells (``tools.celljoin``), the graph of a collection whose vectors do
not fit in memory: exact when every cell is searched, tuned to the recall target otherwise, written in place a cell
at a time, and the choice of ``auto`` for the graph commands (``knn``, ``diffuse``, ``audit``) where PQ codes were."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("faiss")
pytest.importorskip("scipy")

from imgfeat.cli import main  # noqa: E402
from imgfeat.errors import ImgfeatError  # noqa: E402
from imgfeat.tools.autoindex import build_index, choose_index, plan_index  # noqa: E402
from imgfeat.tools.celljoin import CellJoin, join_bytes, join_cells  # noqa: E402
from imgfeat.tools.exact import exact_graph_rows, recall_at_k  # noqa: E402
from imgfeat.tools.graph import RawGraph, save_graph  # noqa: E402
from imgfeat.tools.knn import KNNIndex  # noqa: E402

from test_tools import write_features  # noqa: E402


def _clustered(n: int, d: int = 16, centres: int = 40, seed: int = 0, noise: float = 0.3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    C = rng.standard_normal((centres, d)).astype(np.float32)
    return (C[rng.integers(0, centres, n)] + noise * rng.standard_normal((n, d))).astype(np.float32)


@pytest.mark.parametrize("metric", ["cosine", "l2", "ip"])
def test_the_join_searching_every_cell_is_the_exact_graph(metric):
    """With ``nprobe`` = every cell each row's candidates are all rows: the exact graph, neighbours and scores."""
    X = _clustered(1500)
    join = CellJoin(metric=metric, nlist=12, nprobe=12).fit(X)
    D, I = join.graph(X, 7)
    Dx, Ix = KNNIndex(metric=metric, index="exact").fit(X).graph(X, 7)
    np.testing.assert_array_equal(I, Ix)
    np.testing.assert_allclose(D, Dx, rtol=1e-4, atol=1e-4)
    # the cell-by-cell blocks hold every row once, each with the same neighbours as graph()
    seen = np.zeros(len(X), int)
    for rows, Db, Ib in join.iter_graph(X, 7, block=100):
        seen[rows] += 1
        np.testing.assert_array_equal(Ib, I[rows])
        assert not np.array_equal(rows, np.arange(rows[0], rows[0] + len(rows))) or len(rows) < 100
    assert (seen == 1).all()


def test_tuning_widens_the_join_until_the_recall_target_and_no_wider_than_its_budget():
    """One probe misses the neighbours across cell borders; ``tune`` doubles ``nprobe`` until sampled recall@k
    reaches the target, and stops where the largest cell's candidates would pass ``candidate_bytes``."""
    X = _clustered(4000, d=8, centres=4, noise=1.0, seed=1)
    rows = np.arange(0, 4000, 16)
    _, exact = exact_graph_rows(X, rows, 10, "cosine")
    join = CellJoin(nlist=32, nprobe=1).fit(X)
    assert recall_at_k(join.graph(X, 10, rows=rows)[1], exact) < 0.9
    join.tune(X, 10)
    assert join.nprobe > 1 and join.recall_[0] >= 0.95 and join.recall_[1] == 256
    assert recall_at_k(join.graph(X, 10, rows=rows)[1], exact) >= 0.9
    assert join.description == f"join of 32 cells nprobe {join.nprobe}"
    small = CellJoin(nlist=32, nprobe=1, candidate_bytes=join.candidates(2) * 8 * 4).fit(X).tune(X, 10)
    assert small.nprobe == 2 and small.recall_[0] < 0.95  # the budget held it back, and it says how far it got


def test_a_join_on_a_few_rows_still_finds_k_neighbours_per_row():
    """Cells whose probes hold fewer than k + 1 rows are widened; -1 only where fewer than k other rows exist."""
    X = _clustered(60, d=4, centres=6)
    D, I = CellJoin(nlist=12, nprobe=1).fit(X).graph(X, 10)
    assert (I >= 0).all() and not (I == np.arange(60)[:, None]).any()
    Dx, Ix = KNNIndex(index="exact").fit(X).graph(X, 10)
    assert recall_at_k(I, Ix) > 0.8
    with pytest.raises(ImgfeatError):
        CellJoin(nlist=2).fit(X).graph(X, 60)


def test_only_the_cells_short_of_candidates_are_widened():
    """A cell whose probes hold fewer than k + 1 rows is widened alone: the others keep ``nprobe`` probes (widening
    every cell for one outlier cell made each of 1,024 cells search a quarter of 1M rows)."""
    X = np.vstack([_clustered(2000, d=8, centres=8, seed=3), 50 + np.arange(3, dtype=np.float32)[:, None] * np.ones(8)])
    join = CellJoin(metric="l2", nlist=16, nprobe=1).fit(X)
    near = join._near(np.arange(join.nlist_), 10)
    sizes = np.diff(join.bounds_)
    widths = np.array([len(p) for p in near])
    assert (sizes < 11).any()  # the far rows make a cell of their own
    assert (widths[sizes < 11] > 1).all() and (widths[sizes >= 11] == 1).all()
    assert all(sizes[p].sum() >= 11 for p in near)


def test_a_crowded_second_cell_keeps_its_rows_nearest_the_border():
    """A cell that is the second cell of many rows (a centroid in the middle of the data) takes as candidates only
    as many as its own rows (or the mean cell's), those whose distances to the two centroids are nearest; others keep
    all theirs. With the cap, a cell's candidates are at most twice its probes' own rows."""
    from imgfeat.tools.celljoin import SECOND_CAP, _margin, _second_by_cell

    second = np.array([0, 0, 0, 0, 0, 0, 1, 2, 1, 0], np.int32)
    margin = _margin(np.array([[1.0, d] for d in (1.9, 1.1, 1.5, 1.01, 3.0, 1.2, 2.0, 1.0, 5.0, 1.3)], np.float32))
    assert margin[3] < margin[1] < margin[5] < margin[9] < margin[2] and margin[7] == 0
    rows, bounds = _second_by_cell(second, margin, np.array([2, 3, 5]))
    assert SECOND_CAP == 1.0 and bounds.tolist() == [0, 4, 6, 7]  # cell 0: 7 rows, capped at the mean cell, 3.33
    assert rows[:4].tolist() == [3, 1, 5, 9] and sorted(rows[4:6].tolist()) == [6, 8] and rows[6] == 7
    X = _clustered(6000, d=32, centres=3, noise=2.0, seed=4)
    join = CellJoin(nlist=64, nprobe=4).fit(X)
    own = np.diff(join.bounds_)
    assert np.diff(join.second_bounds_).max() <= max(own.max(), np.ceil(len(X) / 64))
    assert join.candidates(4) <= 2 * max(own[p].sum() for p in join._near(np.arange(64), 1, 4)) + 4 * len(X) / 64


def test_the_join_written_in_place_is_the_graph_it_computes(tmp_path):
    """``save_graph`` writes a join's blocks of scattered rows where they belong: the raw files (memory-mapped) and
    the .npz are the graph of rows in order, read from a store's matrix as from an array."""
    X = _clustered(3000)
    join = CellJoin(nlist=16, nprobe=4).fit(X)
    ids = [f"r{i}" for i in range(len(X))]
    read = save_graph(join, X, ids, 6, npz=str(tmp_path / "g.npz"), raw=str(tmp_path / "g"))
    D, I = join.graph(X, 6)
    graph = RawGraph.open(str(tmp_path / "g"))
    np.testing.assert_array_equal(graph.I, I)
    np.testing.assert_array_equal(graph.D, D)
    assert list(graph.ids) == ids and np.array_equal(read(np.arange(5)), I[:5])
    with np.load(tmp_path / "g.npz") as z:
        np.testing.assert_array_equal(z["I"], I)


class _Reads:
    """An N x d matrix that records every read: each fancy index (rows asked for) and each slice."""

    def __init__(self, X):
        self.X, self.shape, self.dtype, self.gathers = X, X.shape, X.dtype, []

    def __len__(self):
        return len(self.X)

    def __getitem__(self, key):
        if not isinstance(key, slice):
            self.gathers.append(np.asarray(key))
        return self.X[key]


def test_the_join_reads_its_candidates_in_storage_order_a_group_of_cells_at_a_time():
    """Issue 49: a store larger than the page cache costs sequential reads, not a random page per candidate: every
    read of the graph's search asks for rows in increasing order, once for a whole group of cells (far fewer reads
    than cells), and near cells are numbered near each other, so that a group reads few rows besides its own. The
    graph is the same whatever the group's budget."""
    X = _clustered(6000, d=16, centres=60, seed=3)
    join = CellJoin(nlist=64, nprobe=4, group_bytes=4000 * 16 * 4).fit(X)
    reads = _Reads(X)
    rows, D, I = map(np.concatenate, zip(*join.iter_graph(reads, 8)))
    assert len(rows) == len(X) and len(np.unique(rows)) == len(X)
    assert all((np.diff(g) > 0).all() for g in reads.gathers)
    groups = len(join.groups(k=8))
    assert 1 < groups < join.nlist_ // 4 and len(reads.gathers) <= groups * -(-4000 // join.block)
    assert all(len(g) <= 4000 for g in reads.gathers)
    # near cells numbered near: a cell's nearest other cell is, on average, closer in number than at random
    near = np.array(join._near(np.arange(join.nlist_), 1, 2))[:, 1]
    assert np.abs(near - np.arange(join.nlist_)).mean() < join.nlist_ / 6
    whole = CellJoin(nlist=64, nprobe=4).fit(X)
    Dw, Iw = whole.graph(X, 8)
    np.testing.assert_array_equal(I, Iw[rows])
    np.testing.assert_allclose(D, Dw[rows], rtol=1e-5, atol=1e-5)
    # and the sampled graph tune measures recall on reads in order too
    reads.gathers.clear()
    sample = np.arange(0, 6000, 7)
    np.testing.assert_array_equal(join.graph(reads, 8, rows=sample)[1], Iw[sample])
    assert all((np.diff(g) > 0).all() for g in reads.gathers) and len(reads.gathers) < join.nlist_ // 4


def test_auto_builds_graphs_by_join_and_serves_from_inverted_lists_or_codes():
    """``choose_index`` keeps inverted lists or PQ codes for a search index (serve) and gives the graph commands the
    join above exact search; the plan holds the assignment, the centroids, their sample and one cell's candidates."""
    assert choose_index(10_000_000, 256, 2**30, graph=True) == ("join", 0.0)
    assert ",PQ" in choose_index(10_000_000, 256, 2**30)[0]
    assert choose_index(200_000, 256, 2**31, graph=True) == ("join", 0.0)  # above exact: even where the vectors fit
    assert choose_index(200_000, 256, 2**31) == ("ivf", 0.0)  # ... where a search index keeps inverted lists of them
    assert choose_index(50_000, 256, 2**31, graph=True) == ("exact", 0.0)
    plan = plan_index(10_000_000, 256, "auto", 30, 2**30, graph=True)
    assert plan.index == "join" and plan.parts["index"] == join_bytes(10_000_000, 256) < 10_000_000 * 14
    assert join_cells(10_000_000) == 8192 and plan.train_rows == 8192 * 39
    assert plan.total <= 2**30 and plan.parts["cell candidates"] == 2**30 // 8
    assert plan.nlist == 8192
    for memory, cells in ((2**32, 32768), (2**33, 65536), (2**35, 131072)):  # 100M x 256: cells as their sample fits
        big = plan_index(100_000_000, 256, "auto", 30, memory, graph=True)
        assert big.index == "join" and big.total <= memory and big.nlist == cells
        assert big.train_rows == cells * 39 <= memory / 2 / 1024
    with pytest.raises(ImgfeatError, match="join builds a graph"):
        plan_index(1000, 8, "join", 5, 2**30)


def test_knn_and_diffuse_under_a_small_budget_build_their_graph_by_join(tmp_path, capsys, monkeypatch):
    """End to end: ``knn --approx auto`` within 1 MB writes the join's graph and reports its sampled recall; ``diffuse``
    on the join's graph predicts as on the exact one (well-separated classes: the join finds the same neighbours)."""
    from imgfeat.tools import autoindex

    X = _clustered(6000, d=32, centres=20, noise=0.2, seed=4)
    ids = write_features(tmp_path / "f.npy", X)
    monkeypatch.setattr(autoindex, "PCA_FROM", (1_000, 512))
    monkeypatch.setattr(autoindex, "EXACT_UP_TO", 2_000)
    assert main(["knn", "--features", str(tmp_path / "f.npy"), "--k", "5", "--approx", "auto", "--max-memory",
                 "1MB", "--raw", str(tmp_path / "g"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["index"].startswith("join of ") and out["recall_at_k"] >= 0.95
    assert out["memory"]["bytes"] <= 2**20
    assert out["index"].endswith(" nprobe 1")  # the budget's 128 KB of candidates hold one cell (750 rows x 128 B)
    assert RawGraph.open(str(tmp_path / "g")).n == 6000

    rng = np.random.default_rng(0)  # a row's class: the nearest of 20 random rows
    labels = np.argmax(X @ X[rng.choice(6000, 20, replace=False)].T, axis=1)
    lines = [f"{i}\t{c}\n" for i, c in zip(ids, labels.tolist())]
    (tmp_path / "train.tsv").write_text("".join(lines[::50]))
    (tmp_path / "test.tsv").write_text("".join(line for i, line in enumerate(lines) if i % 50))
    preds = {}
    for index in ("join", "exact"):
        assert main(["diffuse", "--features", str(tmp_path / "f.npy"), "--labels", str(tmp_path / "train.tsv"),
                     "--test-labels", str(tmp_path / "test.tsv"), "--index", index, "--iterations", "10", "--out",
                     str(tmp_path / f"{index}.tsv"), "--json"]) == 0
        preds[index] = json.loads(capsys.readouterr().out)
    assert preds["join"]["index"].startswith("join of ")
    assert abs(preds["join"]["accuracy"] - preds["exact"]["accuracy"]) < 0.01
    same = np.mean([a == b for a, b in zip(open(tmp_path / "join.tsv"), open(tmp_path / "exact.tsv"))])
    assert same > 0.99


def test_build_index_gives_the_join_only_to_a_graph():
    X = _clustered(3000)
    join = build_index(X, "join", 5, graph=True, nprobe=3)
    assert isinstance(join, CellJoin) and join.nprobe == 3 and join.plan_.index == "join"
    with pytest.raises(ImgfeatError, match="join builds a graph"):
        build_index(X, "join", 5)


def test_knn_out_npz_is_copied_from_the_graph_on_disk_and_reads_as_savez_wrote_it(tmp_path):
    """Issue 49: ``knn --out`` no longer holds N x k x 8 bytes and the ids to write the .npz: the archive is copied
    from the raw graph a chunk of rows at a time (no temporary left), and reads as ``np.savez``'s did (I, D, ids as
    fixed-width strings), its arrays memory-mappable where they lie."""
    from imgfeat.tools.graph import npz_member, write_npz

    X = _clustered(2000)
    join = CellJoin(nlist=8, nprobe=8).fit(X)
    ids = [f"image-{i}" + "x" * (i % 7) for i in range(len(X))]
    read = save_graph(join, X, ids, 5, npz=str(tmp_path / "g.npz"))
    D, I = join.graph(X, 5)
    with np.load(tmp_path / "g.npz") as z:
        np.testing.assert_array_equal(z["I"], I)
        np.testing.assert_array_equal(z["D"], D)
        assert z["ids"].tolist() == ids and z["ids"].dtype == np.array(ids).dtype
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.npz"]
    np.testing.assert_array_equal(read(np.arange(10)), I[:10])
    np.testing.assert_array_equal(npz_member(str(tmp_path / "g.npz"), "D"), D)
    # a chunk smaller than the rows: the same archive
    save_graph(join, X, ids, 5, raw=str(tmp_path / "r"))
    write_npz(str(tmp_path / "h.npz"), [str(tmp_path / f"r{e}") for e in (".int32", ".float32")], len(X), 5, ids,
              chunk=300)
    with np.load(tmp_path / "h.npz") as z:
        np.testing.assert_array_equal(z["I"], I)
        assert z["ids"].tolist() == ids
