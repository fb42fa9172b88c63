"""The downstream tools on seeded synthetic features, each against a plain in-memory
reference, plus CLI round trips and the bad inputs they must refuse clearly."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("faiss")
pytest.importorskip("sklearn")

from imgfeat.cli import main  # noqa: E402
from imgfeat.errors import ImgfeatError, InvalidParameterError  # noqa: E402
from imgfeat.outputs.formats import open_sink  # noqa: E402
from imgfeat.tools import (KNNIndex, LabelDiffusion, LinearProbe, StreamingPCA, duplicate_groups,  # noqa: E402
                           iter_blocks, recall_at_k)


def clusters(n_per=60, k=4, d=32, spread=0.3, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((k, d)) * 3
    X = np.concatenate([c + spread * rng.standard_normal((n_per, d)) for c in centres]).astype(np.float32)
    y = np.repeat([f"c{i}" for i in range(k)], n_per)
    return X, y


def write_features(path: Path, X, ids=None):
    ids = ids or [f"id{i:04d}" for i in range(len(X))]
    sink = open_sink(path)
    sink.open(X.shape[1], np.dtype(np.float32))
    for s in range(0, len(X), 50):
        sink.write(ids[s:s + 50], [f"/img/{i}.jpg" for i in ids[s:s + 50]], X[s:s + 50])
    sink.close()
    return ids


def write_labels(path: Path, ids, labels):
    path.write_text("".join(f"{i}\t{label}\n" for i, label in zip(ids, labels)))


def test_streaming_pca_matches_sklearn():
    from sklearn.decomposition import PCA

    rng = np.random.default_rng(0)
    X = (rng.standard_normal((500, 20)) @ rng.standard_normal((20, 20))).astype(np.float32)
    ours = StreamingPCA(n_components=5).fit(np.array_split(X, 7))
    ref = PCA(5).fit(X)
    np.testing.assert_allclose(np.abs(ours.components_), np.abs(ref.components_), atol=1e-4)
    np.testing.assert_allclose(ours.explained_variance_, ref.explained_variance_, rtol=1e-4)
    rec_ours = ours.inverse_transform(ours.transform(X))
    rec_ref = ref.inverse_transform(ref.transform(X))
    np.testing.assert_allclose(rec_ours, rec_ref, atol=1e-3)
    white = StreamingPCA(n_components=5, whiten=True).fit(X).transform(X)
    np.testing.assert_allclose(white.std(axis=0, ddof=1), 1.0, rtol=1e-3)
    with pytest.raises(InvalidParameterError, match="'n_components' parameter"):
        StreamingPCA(n_components=30).fit(X)


def test_probe_separable_clusters():
    X, y = clusters()
    for clf in ("svm", "logreg"):
        probe = LinearProbe(classifier=clf).fit(X[::2], y[::2])
        rep = probe.report(X[1::2], y[1::2])
        assert rep["top1"] == 1.0 and probe.C_ in (0.01, 0.1, 1.0, 10.0)
        assert set(rep["per_class"]) == {"c0", "c1", "c2", "c3"} and "top5" not in rep
    with pytest.raises(ImgfeatError, match="at least 2 classes"):
        LinearProbe().fit(X[:10], ["a"] * 10)


def test_exact_knn_equals_brute_force_and_approx_recall():
    rng = np.random.default_rng(1)
    X = rng.standard_normal((400, 16)).astype(np.float32)
    index = KNNIndex(metric="l2").fit(np.array_split(X, 3))
    D, I = index.graph(X, 5)
    Ds, Is = index.graph(X, 5, rows=np.array([7, 3, 399]))
    np.testing.assert_array_equal(Is, I[[7, 3, 399]])
    np.testing.assert_array_equal(Ds, D[[7, 3, 399]])
    dist = ((X[:, None, :] - X[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(dist, np.inf)
    ref = np.argsort(dist, axis=1)[:, :5]
    assert I.dtype == np.int32 and D.dtype == np.float32
    assert (np.sort(I, axis=1) == np.sort(ref, axis=1)).mean() > 0.99
    np.testing.assert_allclose(D, np.sort(dist, axis=1)[:, :5], rtol=1e-4)
    Dip, Iip = KNNIndex(metric="ip").fit(X).search(X[:3], 4)
    np.testing.assert_array_equal(Iip, np.argsort(-(X[:3] @ X.T), axis=1)[:, :4])
    for approx in ("ivf", "hnsw"):
        _, Ia = KNNIndex(metric="l2", index=approx, nprobe=64).fit(X).graph(X, 5)
        assert recall_at_k(Ia, I) > 0.9, approx
    with pytest.raises(InvalidParameterError, match="'k' parameter"):
        KNNIndex().fit(X[:5]).graph(X[:5], 5)


class _Watched:
    """An N x D matrix that records how many rows each read asks for (a stand-in for a memory map)."""

    def __init__(self, X):
        self.X, self.shape, self.reads = X, X.shape, []

    def __len__(self):
        return len(self.X)

    def __getitem__(self, key):
        out = self.X[key]
        self.reads.append(len(out))
        return out


def test_knn_streams_its_input_and_takes_faiss_factory_strings():
    from imgfeat.tools.exact import exact_graph_rows

    rng = np.random.default_rng(3)
    X = rng.standard_normal((3000, 16)).astype(np.float32)
    exact = KNNIndex(metric="l2").fit(X)
    D, I = exact.graph(X, 5)
    W = _Watched(X)
    Dw, Iw = KNNIndex(metric="l2", block=256).fit(W).graph(W, 5, block=256)
    np.testing.assert_array_equal(Iw, I)
    assert max(W.reads) <= 256  # never the whole matrix at once
    rows = np.array([0, 17, 2999])
    W.reads.clear()
    De, Ie = exact_graph_rows(W, rows, 5, metric="l2", block=500)
    np.testing.assert_array_equal(Ie, I[rows])
    np.testing.assert_allclose(De, D[rows], rtol=1e-5)
    assert max(W.reads) <= 500

    ivf = KNNIndex(metric="l2", index="IVF8,Flat", nprobe=8).fit(X)  # every cell visited: exact
    assert recall_at_k(ivf.graph(X, 5)[1], I) > 0.99
    pq = KNNIndex(metric="l2", index="IVF8,PQ8", nprobe=8).fit(X)
    assert pq.index_.code_size == 8  # 8 bytes per vector instead of 64
    assert recall_at_k(pq.graph(X, 5)[1], I) > 0.4  # compressed codes: approximate, far above chance
    with pytest.raises(InvalidParameterError, match="index_factory"):
        KNNIndex(index="IVF8,Bogus").fit(X)


def test_cosine_metric_normalises_block_by_block():
    rng = np.random.default_rng(4)
    X = (rng.standard_normal((500, 12)) * rng.uniform(0.1, 10, (500, 1))).astype(np.float32)  # mixed norms
    Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
    W = _Watched(X)
    D, I = KNNIndex(metric="cosine", block=100).fit(W).search(X[:7], 5)
    sims = Xn[:7] @ Xn.T
    np.testing.assert_array_equal(I, np.argsort(-sims, axis=1)[:, :5])
    np.testing.assert_allclose(D, -np.sort(-sims, axis=1)[:, :5], atol=1e-5)  # scores are cosines
    assert max(W.reads) <= 100
    from imgfeat.tools.exact import exact_graph_rows
    _, Ig = KNNIndex(metric="cosine").fit(X).graph(X, 4)
    np.testing.assert_array_equal(exact_graph_rows(X, np.array([3, 9]), 4, metric="cosine")[1], Ig[[3, 9]])


def test_knn_cli_on_a_store_with_a_factory_index(tmp_path, capsys):
    from imgfeat.outputs.store import FeatureStore

    X, _ = clusters(n_per=100, k=4, d=32, spread=0.5)
    store = FeatureStore(tmp_path / "st").open({"dim": 32, "dtype": "float32", "shard_size": 150})
    for k in range(0, len(X), 150):
        w = store.shard_writer(k // 150)
        w.write([f"id{i:04d}" for i in range(k, min(k + 150, len(X)))], ["-"] * len(X[k:k + 150]), X[k:k + 150])
        w.n_inputs = len(X[k:k + 150])
        w.commit()
    store.refresh_manifest(total_inputs=len(X))
    assert main(["knn", "--features", str(tmp_path / "st"), "--k", "10", "--out", str(tmp_path / "g.npz"),
                 "--approx", "IVF4,PQ8", "--nprobe", "4", "--recall-sample", "50", "--json"]) == 0
    res = _json(capsys)
    assert res["index"] == "IVF4,PQ8 nprobe 4" and res["n"] == 400 and 0.3 < res["recall_at_k"] <= 1.0
    g = np.load(tmp_path / "g.npz")
    assert g["I"].shape == (400, 10) and g["ids"][0] == "id0000"
    # --raw alone: the graph streams to disk block by block, and equals the in-memory one
    assert main(["knn", "--features", str(tmp_path / "st"), "--k", "10", "--raw", str(tmp_path / "r"),
                 "--approx", "IVF4,PQ8", "--nprobe", "4", "--recall-sample", "50", "--json"]) == 0
    res2 = _json(capsys)
    np.testing.assert_array_equal(np.fromfile(tmp_path / "r.int32", np.int32).reshape(400, 10), g["I"])
    np.testing.assert_array_equal(np.fromfile(tmp_path / "r.float32", np.float32).reshape(400, 10), g["D"])
    assert (tmp_path / "r.ids.txt").read_text().split() == g["ids"].tolist()
    assert res2["recall_at_k"] == res["recall_at_k"] and res2["out"] is None
    assert not list(tmp_path.glob(".*partial"))
    assert main(["knn", "--features", str(tmp_path / "st"), "--k", "10"]) == 2  # nowhere to write


def test_diffusion_recovers_clusters_from_one_label_each():
    X, y = clusters(n_per=80, spread=0.8, seed=2)
    given = [None] * len(y)
    for c in range(4):
        given[c * 80] = y[c * 80]
    for index in ("exact", "IVF4,PQ8"):  # a compressed index serves the graph as well here
        pred = LabelDiffusion(k=10, iterations=30, index=index).fit(X, given).predict()
        assert (pred == y).mean() > 0.98, index


def test_duplicate_groups_stream_not_quadratic():
    rng = np.random.default_rng(3)
    X = rng.standard_normal((200, 24)).astype(np.float32)
    X[10] = X[3] + 1e-3
    X[150] = X[3] * 2.0  # same direction: cosine 1
    X[77] = X[42] + 1e-3
    for index in ("exact", "hnsw"):
        groups = duplicate_groups(X, [f"i{j}" for j in range(200)], threshold=0.99, k=5, index=index)
        assert groups == [["i3", "i10", "i150"], ["i42", "i77"]], index


def test_duplicate_groups_take_the_closest_pairs_first():
    """A hub (many pairs) within the threshold of an original but not of its near-exact copy: the copy is grouped
    with its original, not left out because the hub took the original first."""
    angles = np.radians([0.0, -10.0, -5.0, 5.0, 10.0, 19.5, 20.5])  # hub, its four neighbours, original, copy
    X = np.stack([np.cos(angles), np.sin(angles)], axis=1).astype(np.float32)
    threshold = float(np.cos(np.radians(20)))
    groups = duplicate_groups(X, ["hub", "n1", "n2", "n3", "n4", "orig", "copy"], threshold=threshold, k=6)
    assert sorted(g for g in groups if "copy" in g) == [["orig", "copy"]]


def test_duplicate_groups_keep_the_promise_on_random_lists():
    """Whatever the lists: every member within the threshold of its representative, no row in two groups, and the
    closest pair of all grouped together."""
    from imgfeat.tools.dedup import groups_at

    rng = np.random.default_rng(5)
    X = rng.standard_normal((400, 3)).astype(np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    S = X @ X.T
    np.fill_diagonal(S, -2)
    I = np.argsort(-S, axis=1)[:, :8].astype(np.int32)
    D = np.take_along_axis(S, I, axis=1)
    for threshold in (0.9, 0.97, 0.995):
        groups = groups_at(D, I, threshold)
        rows = np.concatenate(groups)
        assert len(rows) == len(set(rows.tolist()))
        assert all((S[g[0], g[1:]] >= threshold).all() and list(g[1:]) == sorted(g[1:]) for g in groups)
        assert [len(g) for g in groups] == sorted((len(g) for g in groups), reverse=True)
        a, b = np.unravel_index(np.argmax(S), S.shape)
        assert any(a in g and b in g for g in groups)


def _reference_groups(D, I, threshold):
    """The grouping rule written plainly: every pair once at its best figure, closest first, a dict of groups."""
    best = {}
    for r in range(len(D)):
        for d, j in zip(D[r].tolist(), I[r].tolist()):
            if j >= 0 and j != r and d >= threshold:
                key = (min(r, j), max(r, j))
                best[key] = max(best.get(key, -np.inf), d)
    degree = np.zeros(len(D), int)
    for a, b in best:
        degree[a] += 1
        degree[b] += 1
    rep = {}
    for (a, b), _ in sorted(best.items(), key=lambda kv: (-kv[1], kv[0])):
        r, m = (b, a) if degree[b] > degree[a] else (a, b)
        if degree[r] == 1 and degree[m] == 1 or r not in rep and m not in rep:
            rep[r] = rep[m] = r
        elif m not in rep and rep[r] == r:
            rep[m] = r
        elif r not in rep and rep[m] == m:
            rep[r] = m
    groups = {}
    for row, g in rep.items():
        groups.setdefault(g, []).append(row)
    out = [[g] + sorted(x for x in rows if x != g) for g, rows in groups.items()]
    return sorted(out, key=lambda g: (-len(g), g[0]))


def test_duplicate_groups_streamed_in_small_blocks_and_batches_equal_the_plain_rule(tmp_path):
    """``groups_at`` reads the lists a block of rows at a time and takes the pairs in batches from the closest down:
    with blocks of 7 rows and batches of 5 pairs (every streamed path, many passes) the groups are the plain rule's,
    on lists that are one-sided, hold a row twice and hold -1, and on memory-mapped lists."""
    from imgfeat.tools.dedup import groups_at

    rng = np.random.default_rng(11)
    X = rng.standard_normal((300, 3)).astype(np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    S = X @ X.T
    np.fill_diagonal(S, -2)
    I = np.argsort(-S, axis=1)[:, :6].astype(np.int32)
    D = np.take_along_axis(S, I, axis=1)
    I[::7, 3] = I[::7, 1]  # a row listed twice
    D[::7, 3] = D[::7, 1]
    I[::11, 5], D[::11, 5] = -1, -np.inf  # fewer neighbours than asked
    D[::5] += 1e-4 * rng.standard_normal(D[::5].shape).astype(np.float32)  # the two sides' figures differ a little
    np.save(tmp_path / "D.npy", D)
    mapped = np.load(tmp_path / "D.npy", mmap_mode="r")
    for threshold in (0.9, 0.97, 0.995):
        want = _reference_groups(D, I, threshold)
        assert len(want) > 3
        for block, batch in ((len(D), 10**6), (7, 5), (64, 1)):
            got = groups_at(mapped, I, threshold, block=block, batch=batch)
            assert [g.tolist() for g in got] == want, (threshold, block, batch)
            assert got.duplicates == sum(len(g) - 1 for g in want)
    assert len(groups_at(D, I, 1.0)) == 0


def test_duplicate_groups_read_the_pairs_twice_not_once_a_batch(monkeypatch):
    """Issue 49: the pairs above the threshold are read back once (per ``OPEN_BUCKETS`` batches) into a file per
    batch, not scanned again for every batch (pairs x batches at 100M); the groups are the same, with every batch
    in its own pass too."""
    import imgfeat.tools.dedup as dedup

    rng = np.random.default_rng(3)
    X = rng.standard_normal((400, 3)).astype(np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    S = X @ X.T
    np.fill_diagonal(S, -2)
    I = np.argsort(-S, axis=1)[:, :6].astype(np.int32)
    D = np.take_along_axis(S, I, axis=1)
    want = [g.tolist() for g in dedup.groups_at(D, I, 0.97)]
    calls, real = [], dedup._order_key
    monkeypatch.setattr(dedup, "_order_key", lambda sim: calls.append(len(sim)) or real(sim))
    got = dedup.groups_at(D, I, 0.97, batch=1)
    pairs = calls[0]  # the first pass: every pair of the one block of lists
    assert [g.tolist() for g in got] == want and pairs > 50
    assert len(calls) == 2  # the lists' one block, then the pairs once: not once for each of the >50 batches
    monkeypatch.setattr(dedup, "OPEN_BUCKETS", 4)
    calls.clear()
    assert [g.tolist() for g in dedup.groups_at(D, I, 0.97, batch=1)] == want
    assert 2 < len(calls) <= 1 + -(-pairs // 4)


def test_group_lines_write_every_group_a_chunk_of_ids_at_a_time():
    from imgfeat.outputs.idindex import StringColumn
    from imgfeat.tools.dedup import Groups, group_lines

    groups = Groups(np.array([4, 0, 2, 1, 3], np.int32), np.array([0, 3, 5]))
    ids = ["a", "b", "c", "d", "e"]
    want = "0\te\n0\ta\n0\tc\n1\tb\n1\td\n"
    for column in (ids, StringColumn(ids)):
        for rows in (1, 2, 100):
            assert "".join(group_lines(groups, column, rows)) == want
    assert [g.tolist() for g in groups[-1:]] == [[1, 3]] and groups.duplicates == 3
    assert "".join(group_lines(Groups(np.zeros(0, np.int32), np.zeros(1, np.int64)), ids)) == ""


def test_blocks_from_every_format(tmp_path):
    X, _ = clusters(n_per=30)
    for ext in (".npy", ".h5", ".parquet", ".tsv", ".pkl"):
        ids = write_features(tmp_path / f"f{ext}", X)
        got_ids, blocks = zip(*iter_blocks(tmp_path / f"f{ext}", rows=25))
        assert sum(got_ids, []) == ids
        np.testing.assert_allclose(np.concatenate(blocks), X, atol=1e-6)


def _json(capsys):
    return json.loads(capsys.readouterr().out)


@pytest.fixture
def h5_features(tmp_path):
    """200 clustered vectors in an .h5 file, with train/test label files (even/odd ids)."""
    X, y = clusters(n_per=50)
    ids = write_features(tmp_path / "f.h5", X)
    write_labels(tmp_path / "train.tsv", ids[::2], y[::2])
    write_labels(tmp_path / "test.tsv", ids[1::2], y[1::2])
    return str(tmp_path / "f.h5"), ids, X, y


def test_cli_pca_fit_and_apply(h5_features, tmp_path, capsys):
    f, ids, X, _ = h5_features
    assert main(["pca", "fit", "--features", f, "--dim", "8", "--out", str(tmp_path / "p.npz"), "--json"]) == 0
    assert _json(capsys)["n"] == 200
    assert main(["pca", "apply", "--features", f, "--pca", str(tmp_path / "p.npz"),
                 "--out", str(tmp_path / "r.npy"), "--json"]) == 0
    reduced = np.load(tmp_path / "r.npy")
    assert reduced.shape == (200, 8)
    np.testing.assert_allclose(reduced, StreamingPCA(n_components=8).fit(X).transform(X), atol=1e-4)


def test_cli_probe_and_predict(h5_features, tmp_path, capsys):
    f, ids, _, y = h5_features
    assert main(["probe", "--features", f, "--labels", str(tmp_path / "train.tsv"), "--test-labels",
                 str(tmp_path / "test.tsv"), "--classifier", "svm", "--out-dir", str(tmp_path / "pr"), "--json"]) == 0
    rep = _json(capsys)
    assert rep["top1"] == 1.0 and rep["test"] == 100 and Path(rep["confusion_png"]).stat().st_size > 1000
    assert main(["predict", "--features", f, "--probe", rep["probe"], "--out", str(tmp_path / "pred.tsv")]) == 0
    pred = dict(line.split("\t") for line in (tmp_path / "pred.tsv").read_text().splitlines())
    assert all(pred[i] == label for i, label in zip(ids, y))


def test_cli_knn_npz_and_raw_agree(h5_features, tmp_path, capsys):
    f, ids, X, _ = h5_features
    assert main(["knn", "--features", f, "--k", "5", "--out", str(tmp_path / "g.npz"), "--approx", "hnsw",
                 "--raw", str(tmp_path / "g"), "--json"]) == 0
    assert _json(capsys)["recall_at_k"] > 0.9
    g = np.load(tmp_path / "g.npz")
    np.testing.assert_array_equal(np.fromfile(tmp_path / "g.int32", np.int32).reshape(200, 5), g["I"])
    assert g["ids"].tolist() == ids == (tmp_path / "g.ids.txt").read_text().split()
    assert not list(tmp_path.glob(".*partial"))


def test_cli_search_by_id(h5_features, capsys):
    f, ids, X, _ = h5_features
    assert main(["search", "--features", f, "--query", ids[0], "--k", "3", "--json"]) == 0
    hits = _json(capsys)["queries"][ids[0]]
    Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
    expected = [i for i in np.argsort(-(Xn @ Xn[0])) if i != 0][:3]  # a query by id does not find itself
    assert [h["id"] for h in hits] == [ids[i] for i in expected]


def test_cli_diffuse_beats_nothing_and_reports_the_baseline(h5_features, tmp_path, capsys):
    f, ids, X, y = h5_features
    few = [i * 50 for i in range(4)]
    write_labels(tmp_path / "few.tsv", [ids[i] for i in few], [y[i] for i in few])
    rest = [i for i in range(len(ids)) if i not in few]
    write_labels(tmp_path / "rest.tsv", [ids[i] for i in rest], [y[i] for i in rest])
    assert main(["diffuse", "--features", f, "--labels", str(tmp_path / "few.tsv"), "--test-labels",
                 str(tmp_path / "rest.tsv"), "--k", "10", "--json"]) == 0
    res = _json(capsys)
    assert res["accuracy"] > 0.95
    baseline = LinearProbe(classifier="logreg", C=1.0).fit(X[few], y[few])
    assert res["logreg_accuracy"] == pytest.approx(float((baseline.predict(X[rest]) == y[rest]).mean()))


def test_cli_diffuse_over_a_background_read_from_disk(h5_features, tmp_path, capsys):
    """``--background`` adds unlabelled vectors to the graph (read as the graph asks, not copied into memory): the
    graph holds both, and the answer for the features' own rows is still right."""
    f, ids, X, y = h5_features
    rng = np.random.default_rng(4)
    bg = X[rng.integers(0, len(X), 150)] + 0.01 * rng.standard_normal((150, X.shape[1])).astype(np.float32)
    write_features(tmp_path / "bg.npy", bg.astype(np.float32), [f"bg{i}" for i in range(150)])
    few = [i * 50 for i in range(4)]
    write_labels(tmp_path / "few.tsv", [ids[i] for i in few], [y[i] for i in few])
    rest = [i for i in range(len(ids)) if i not in few]
    write_labels(tmp_path / "rest.tsv", [ids[i] for i in rest], [y[i] for i in rest])
    assert main(["diffuse", "--features", f, "--labels", str(tmp_path / "few.tsv"), "--test-labels",
                 str(tmp_path / "rest.tsv"), "--background", str(tmp_path / "bg.npy"), "--k", "10", "--json"]) == 0
    res = _json(capsys)
    assert res["n"] == len(X) + 150 and res["accuracy"] > 0.95


def test_cli_dedup(h5_features, tmp_path, capsys):
    f, ids, X, _ = h5_features
    assert main(["dedup", "--features", f, "--threshold", "0.999", "--json"]) == 0
    assert _json(capsys)["groups"] == 0
    assert main(["dedup", "--features", f, "--threshold", "0.999", "--index", "IVF2,Flat", "--json"]) == 0
    assert _json(capsys)["n"] == 200


def test_cli_map_on_features_without_paths(h5_features, tmp_path, capsys):
    f, ids, _, _ = h5_features
    assert main(["map", "--features", f, "--labels", str(tmp_path / "train.tsv"), "--out",
                 str(tmp_path / "m.png"), "--json"]) == 0
    res = _json(capsys)
    coords = (tmp_path / "m.coords.tsv").read_text().splitlines()
    assert len(coords) == 200 and Path(res["png"]).stat().st_size > 1000
    assert [line.split("\t")[0] for line in coords] == ids


def test_cli_map_mosaic_draws_the_images(tmp_path, photos, capsys):
    """On a store of real photos the mosaic holds every thumbnail: the canvas is no longer white."""
    import imgfeat
    from PIL import Image

    store = tmp_path / "store"
    imgfeat.extract(str(photos), str(store), model="squeezenet1_1", backend="torch", workers=0)
    assert main(["map", "--features", str(store), "--out", str(tmp_path / "m.png"),
                 "--mosaic", str(tmp_path / "mo.png"), "--json"]) == 0
    res = _json(capsys)
    assert res["thumbnails"] == res["n"] == len(list(photos.iterdir()))
    canvas = np.asarray(Image.open(tmp_path / "mo.png").convert("RGB"))
    drawn = (canvas < 250).any(axis=2).sum()
    assert drawn >= 0.8 * res["n"] * 40 * 26  # each thumbnail covers about 40 x 26 pixels or more


def test_bad_inputs_are_clear(tmp_path, capsys):
    X, y = clusters(n_per=20)
    ids = write_features(tmp_path / "f.npy", X)
    f = str(tmp_path / "f.npy")
    write_labels(tmp_path / "ghost.tsv", ["nobody", ids[0]], ["a", "b"])
    write_labels(tmp_path / "one.tsv", ids[:10], ["a"] * 10)
    cases = [
        (["probe", "--features", f, "--labels", str(tmp_path / "ghost.tsv")], "have no feature vector"),
        (["probe", "--features", f, "--labels", str(tmp_path / "one.tsv")], "at least 2 classes"),
        (["knn", "--features", f, "--k", "500", "--out", str(tmp_path / "g.npz")], "--k must be"),
        (["diffuse", "--features", f, "--labels", str(tmp_path / "one.tsv"), "--json"], "single class"),
    ]
    for argv, needle in cases:
        assert main(argv) == 2, argv
        assert needle in capsys.readouterr().err, argv
    write_features(tmp_path / "g.npy", np.zeros((5, 7), np.float32))
    assert main(["pca", "fit", "--features", f, "--dim", "4", "--out", str(tmp_path / "p.npz")]) == 0
    assert main(["pca", "apply", "--features", str(tmp_path / "g.npy"), "--pca", str(tmp_path / "p.npz"),
                 "--out", str(tmp_path / "r.npy")]) == 2
    assert "dimension 32" in capsys.readouterr().err


def test_search_by_image_uses_the_stores_model(tmp_path, photos, capsys):
    import imgfeat

    store = tmp_path / "store"
    imgfeat.extract(str(photos), str(store), model="squeezenet1_1", backend="torch", workers=0, l2=True)
    assert main(["search", "--features", str(store), "--query", str(photos / "coffee.jpg"), "chelsea.jpg",
                 "--k", "2", "--json"]) == 0
    hits = _json(capsys)["queries"]
    assert hits[str(photos / "coffee.jpg")][0]["id"] == "coffee.jpg"
    assert hits[str(photos / "coffee.jpg")][0]["score"] == pytest.approx(1.0, abs=1e-4)
    assert len(hits["chelsea.jpg"]) == 2 and "chelsea.jpg" not in [h["id"] for h in hits["chelsea.jpg"]]
    # issue 29.16: results come in the order the queries were given (an id, a file, an id)
    assert main(["search", "--features", str(store), "--query", "rocket.jpg", str(photos / "coffee.jpg"),
                 "chelsea.jpg", "--k", "1"]) == 0
    printed = [line.split("\t")[0] for line in capsys.readouterr().out.splitlines()]
    assert printed == ["rocket.jpg", str(photos / "coffee.jpg"), "chelsea.jpg"]
    wrong = tmp_path / "w.pth"
    import torch
    import torchvision

    torch.save(torchvision.models.squeezenet1_1(weights=None).state_dict(), wrong)
    assert main(["search", "--features", str(store), "--query", str(photos / "coffee.jpg"),
                 "--weights", str(wrong)]) == 2
    err = capsys.readouterr().err
    assert "extracted with the pretrained weights of squeezenet1_1" in err and "hashes differ" in err, err


@pytest.mark.parametrize("method", ["tsne", pytest.param("umap", marks=pytest.mark.slow)])
def test_maps_keep_clusters_apart(method):
    """Both 2-D embeddings are real: in the map, each point's nearest neighbour is of its own cluster."""
    from imgfeat.tools.maps import embed_2d

    X, y = clusters(n_per=50, k=4, d=64, spread=1.0)
    coords = embed_2d(X, method=method, seed=0)
    assert coords.shape == (200, 2) and coords.dtype == np.float32 and np.isfinite(coords).all()
    d = ((coords[:, None, :] - coords[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    assert (y[d.argmin(1)] == y).mean() > 0.95
    np.testing.assert_array_equal(embed_2d(X, method=method, seed=0), coords)  # seeded: same map twice


@pytest.mark.parametrize("estimator", [StreamingPCA(n_components=3, whiten=True),
                                       LinearProbe(classifier="svm", C=0.5), KNNIndex(metric="cosine", index="hnsw"),
                                       LabelDiffusion(k=7, iterations=5)])
def test_estimators_clone_like_sklearn(estimator):
    from sklearn.base import clone

    copy = clone(estimator)
    assert type(copy) is type(estimator) and copy is not estimator
    assert copy.get_params() == estimator.get_params()
    assert copy.set_params(**{next(iter(copy.get_params())): None}) is copy
    with pytest.raises(InvalidParameterError, match="no parameter 'nope'"):
        copy.set_params(nope=1)


def test_diffusion_transduction_is_every_rows_label():
    X, y = clusters(n_per=30, k=3)
    labels = [v if i % 30 == 0 else None for i, v in enumerate(y)]
    model = LabelDiffusion(k=10).fit(X, labels)
    assert model.transduction_.shape == (90,) and (model.transduction_ == y).mean() > 0.95
    np.testing.assert_array_equal(model.predict(), model.transduction_)


@pytest.fixture
def lowshot(tmp_path):
    """8 overlapping classes (so that top-5 and the iteration count matter), train/test labels."""
    X, y = clusters(n_per=40, k=8, d=16, spread=3.5, seed=3)
    f = tmp_path / "ls.h5"
    ids = write_features(f, X)
    write_labels(tmp_path / "train.tsv", ids[::2], y[::2])
    write_labels(tmp_path / "test.tsv", ids[1::2], y[1::2])
    (tmp_path / "novel.txt").write_text("c5\nc6\nc7\n")
    return str(f), ids, X, y


def test_lowshot_protocol_scores_base_and_novel_for_both_methods(lowshot, tmp_path, capsys):
    from imgfeat.tools.diffusion import lowshot_split, topk_hits

    f, ids, X, y = lowshot
    assert main(["diffuse", "--features", f, "--labels", str(tmp_path / "train.tsv"), "--test-labels",
                 str(tmp_path / "test.tsv"), "--novel-classes", str(tmp_path / "novel.txt"), "--shots", "2",
                 "--seed", "4", "--k", "10", "--iterations", "10", "--json"]) == 0
    res = _json(capsys)
    train = {i: c for i, c in zip(ids[::2], y[::2])}
    kept, held = lowshot_split(train, {"c5", "c6", "c7"}, 2, 4)
    assert res["labelled"] == len(kept) == 5 * 20 + 3 * 2 and len(held) == 3 * 18
    assert sorted(res["novel_classes"]) == ["c5", "c6", "c7"] and res["shots"] == 2
    # recompute every figure by hand
    model = LabelDiffusion(k=10, iterations=10).fit(X, [kept.get(i) for i in ids])
    test_rows, yt = np.arange(1, len(ids), 2), y[1::2]
    novel = np.isin(yt, ["c5", "c6", "c7"])
    for k in (1, 5):
        hits = topk_hits(model.label_distributions_[test_rows], model.classes_, yt, k)
        assert res["diffusion"][f"top{k}_all"] == pytest.approx(hits.mean())
        assert res["diffusion"][f"top{k}_novel"] == pytest.approx(hits[novel].mean())
        assert res["diffusion"][f"top{k}_base"] == pytest.approx(hits[~novel].mean())
    rows = [ids.index(i) for i in kept]
    lr = LinearProbe(classifier="logreg", C=1.0).fit(X[rows], y[rows])
    hits5 = topk_hits(lr.decision_function(X[test_rows]), lr.classes_, yt, 5)
    assert res["logreg"]["top5_novel"] == pytest.approx(hits5[novel].mean())
    assert res["accuracy"] == res["diffusion"]["top1_all"]
    assert res["diffusion"]["top5_novel"] > res["diffusion"]["top1_novel"]  # the grid is not trivial


def test_iterations_auto_is_chosen_on_held_out_training_images(lowshot, tmp_path, capsys):
    f, ids, X, y = lowshot
    common = ["diffuse", "--features", f, "--labels", str(tmp_path / "train.tsv"), "--test-labels",
              str(tmp_path / "test.tsv"), "--novel-classes", str(tmp_path / "novel.txt"), "--shots", "1", "--k", "10"]
    assert main(common + ["--iterations", "auto", "--out", str(tmp_path / "pred.tsv"), "--json"]) == 0
    res = _json(capsys)
    val = {int(t): a for t, a in res["validation"].items()}
    assert res["validation_images"] == 3 * 19 and set(val) == {1, 2, 3, 5, 8, 10, 15, 20, 30, 50}
    assert val[res["iterations"]] == max(val.values())
    assert res["iterations"] == min(t for t, a in val.items() if a == max(val.values()))
    # the test figures are those of a plain run at the chosen iteration count
    assert main(common + ["--iterations", str(res["iterations"]), "--out", str(tmp_path / "pred2.tsv"),
                          "--json"]) == 0
    fixed = _json(capsys)
    assert fixed["diffusion"] == res["diffusion"] and fixed["logreg"] == res["logreg"]
    assert (tmp_path / "pred.tsv").read_text() == (tmp_path / "pred2.tsv").read_text()


@pytest.mark.parametrize("extra,message", [
    (["--novel-classes", "NOVEL", "--shots", "30"], "fewer than --shots 30"),
    (["--novel-classes", "NOVEL", "--shots", "0"], "--shots: expected an integer >= 1"),
    (["--novel-classes", "MISSING"], "--novel-classes .*nope.txt: No such file"),
    (["--novel-classes", "UNKNOWN"], "without any label"),
    (["--iterations", "0"], "--iterations must be"),
    (["--iterations", "many"], "--iterations must be"),
    (["--k", "0"], "--k: expected an integer >= 1"),
])
def test_lowshot_options_are_checked(lowshot, tmp_path, capsys, extra, message):
    f = lowshot[0]
    (tmp_path / "unknown.txt").write_text("c5\nzebra\n")
    paths = {"NOVEL": str(tmp_path / "novel.txt"), "MISSING": str(tmp_path / "nope.txt"),
             "UNKNOWN": str(tmp_path / "unknown.txt")}
    extra = [paths.get(a, a) for a in extra]
    try:
        code = main(["diffuse", "--features", f, "--labels", str(tmp_path / "train.tsv"), "--json"] + extra)
    except SystemExit as exc:  # argparse's usage errors
        code = exc.code
    assert code == 2
    assert re.search(message, capsys.readouterr().err)


def test_iterations_auto_without_a_validation_set_is_refused(lowshot, tmp_path, capsys):
    f, ids, X, y = lowshot
    write_labels(tmp_path / "one.tsv", [ids[0], ids[40]], [y[0], y[40]])
    assert main(["diffuse", "--features", f, "--labels", str(tmp_path / "one.tsv"), "--iterations", "auto",
                 "--json"]) == 2
    assert "hold out for validation" in capsys.readouterr().err


def test_diffusion_is_class_balanced():
    """All labels of one class and one label of another: the class with one source still claims its cluster
    (each class's sources hold the same mass; one-hot sources let the big class flood the graph)."""
    X, y = clusters(n_per=60, k=2, d=8, spread=1.5, seed=1)
    labels = [v if v == "c0" else None for v in y]
    labels[60] = "c1"
    model = LabelDiffusion(k=10, iterations=30).fit(X, labels)
    assert (model.transduction_[60:] == "c1").mean() > 0.9
    F = model.label_distributions_
    assert F[:60, 0].mean() > F[:60, 1].mean() and F[60:, 1].mean() > F[60:, 0].mean()


def test_pca_index_re_ranks_to_the_exact_graph(tmp_path):
    """index="pca": candidates from an L2 search in a few PCA dimensions, re-ranked on the full vectors. On
    features whose variance lives in a few directions (as a CNN's do) it returns the exact graph, with cosine
    scores for the cosine metric and squared L2 for l2; a saved one reads back with the same scores."""
    rng = np.random.default_rng(5)
    X = (rng.standard_normal((1500, 24)) @ rng.standard_normal((24, 256))
         + 0.05 * rng.standard_normal((1500, 256))).astype(np.float32)
    for metric in ("cosine", "l2"):
        D, I = KNNIndex(metric=metric).fit(X).graph(X, 10)
        knn = KNNIndex(metric=metric, index="pca", pca_dim=32).fit(X)
        Dp, Ip = knn.graph(X, 10)
        assert recall_at_k(Ip, I) > 0.99, metric
        same = Ip == I
        np.testing.assert_allclose(Dp[same], D[same], rtol=1e-4, atol=1e-4)
    Dq, Iq = knn.search(X[:5], 3)  # l2: squared distances, ascending
    assert (np.diff(Dq, axis=1) >= 0).all()
    cos = KNNIndex(index="pca", pca_dim=32).fit(X)
    Dc, Ic = cos.search(X[:5], 3)
    assert np.allclose(Dc[:, 0], 1.0, atol=1e-4) and (np.diff(Dc, axis=1) <= 1e-6).all()
    cos.save(str(tmp_path / "pca.faiss"))
    Dl, Il = KNNIndex.load(str(tmp_path / "pca.faiss"), metric="cosine").search(X[:5], 3)
    np.testing.assert_array_equal(Il, Ic)
    np.testing.assert_allclose(Dl, Dc, atol=1e-6)
    with pytest.raises(InvalidParameterError, match="ip metric"):
        KNNIndex(metric="ip", index="pca").fit(X)


@pytest.mark.parametrize("index", ["exact", "ivf", "pca", "hnsw"])
def test_knn_index_updates_equal_a_fresh_fit(index):
    """Issue 29.1: clone / remove_rows / emptied / add / subset give what a new index over the new rows gives."""
    from imgfeat.tools.knn import KNNIndex

    rng = np.random.default_rng(0)
    X = rng.normal(size=(600, 32)).astype(np.float32)
    knn = KNNIndex(metric="cosine", index=index, nlist=4, nprobe=4).fit(X)
    gone = np.array([3, 10, 400])
    kept = np.delete(np.arange(600), gone)
    new = rng.normal(size=(50, 32)).astype(np.float32)
    after = np.concatenate([X[kept], new])
    if knn.shifts_on_removal:
        updated = knn.clone().remove_rows(gone).add(new)
    else:
        with pytest.raises(Exception, match="empty it"):
            knn.clone().remove_rows(gone)
        updated = knn.emptied().add(after)
    assert knn.n_ == 600 and updated.n_ == 647 and updated.dim_ == 32  # the original is untouched
    ref = KNNIndex(metric="cosine", index="exact").fit(after)
    D, I = updated.search(after[:40], 5)
    Dr, Ir = ref.search(after[:40], 5)
    assert (I == Ir).mean() > 0.9
    np.testing.assert_allclose(D[I == Ir], Dr[I == Ir], atol=1e-4)  # scores are cosines, whatever the index
    mask = np.zeros(647, bool)
    mask[::7] = True
    Ds, Is = updated.search(after[:10], 4, subset=updated.subset(mask))
    assert mask[Is[Is >= 0]].all() and (Is >= 0).sum() >= 30


def test_tuned_diffusion_chooses_the_iterations_a_grid_of_separate_runs_would():
    """Issue 30: the iteration search is an estimator; its one pass scores each grid point as a separate run of
    that many iterations does, picks the best (ties: top-1, then more iterations) and keeps its scores."""
    from imgfeat.tools.diffusion import LabelDiffusion, TunedLabelDiffusion, topk_hits

    X, y = clusters(n_per=40, k=3, d=16, spread=3.0)
    rng = np.random.default_rng(1)
    labelled = set(rng.choice(len(y), 12, replace=False).tolist())
    held = {int(r): str(y[r]) for r in rng.choice(len(y), 30, replace=False) if int(r) not in labelled}
    start = [str(v) if i in labelled else None for i, v in enumerate(y)]
    grid = (1, 2, 5, 10)
    tuned = TunedLabelDiffusion(k=8, grid=grid).fit(X, start, held)
    rows = sorted(held)
    separate = {}
    for t in grid:
        m = LabelDiffusion(k=8, iterations=t).fit(X, start)
        separate[t] = float(topk_hits(m.label_distributions_[rows], m.classes_, [held[r] for r in rows], 1).mean())
    assert tuned.validation_scores_ == pytest.approx(separate)
    assert tuned.iterations_ == max(grid, key=lambda t: (separate[t], t))
    again = LabelDiffusion(k=8, iterations=tuned.iterations_).fit(X, start)
    np.testing.assert_allclose(tuned.label_distributions_, again.label_distributions_, rtol=1e-5, atol=1e-7)
    refit = TunedLabelDiffusion(k=8, grid=grid).fit(X, start, held, refit_y=[str(v) if i in labelled or i in held
                                                                               else None for i, v in enumerate(y)])
    assert refit.iterations_ == tuned.iterations_ and (refit.transduction_ == y).mean() >= (tuned.transduction_ == y).mean()


def test_row_views_read_what_is_asked_in_storage_order():
    """Issue 49: the labelled part of a collection (``RowView``) and features with a background set (``Stacked``)
    are read from disk as asked, never copied whole: every slice and array of rows gives what the copy would."""
    from imgfeat.tools.exact import RowView, Stacked

    A = np.arange(40, dtype=np.float32).reshape(20, 2)
    B = -np.arange(10, dtype=np.float32).reshape(5, 2)
    whole = np.concatenate([A, B])
    both = Stacked(A, B)
    assert len(both) == 25 and both.shape == (25, 2)
    for key in (slice(None), slice(3, 22), slice(19, 21), slice(21, 25), slice(0, 25, 3), np.array([24, 0, 20, 19]),
                np.array([], int)):
        np.testing.assert_array_equal(both[key], whole[key])
    assert both[-1].tolist() == whole[-1].tolist() and np.asarray(both).shape == (25, 2)
    rows = np.array([1, 4, 5, 11, 19])
    view = RowView(A, rows)
    np.testing.assert_array_equal(view[:], A[rows])
    np.testing.assert_array_equal(view[np.array([4, 0, 2])], A[rows[[4, 0, 2]]])
    np.testing.assert_array_equal(view[1:3], A[rows[1:3]])
    assert view[3].tolist() == A[11].tolist() and np.asarray(view, np.float64).dtype == np.float64


def test_a_sample_of_a_huge_collection_holds_the_sample_only():
    """Issue 49: the seeded sample of training, tuning and recall over 100M rows no longer draws a permutation of
    every row (800 MB): distinct sorted rows in range, the same for the same seed, memory about the sample's."""
    import tracemalloc

    from imgfeat.tools.exact import sample_rows

    tracemalloc.start()
    rows = sample_rows(100_000_000, 50_000, 7)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert len(np.unique(rows)) == 50_000 and (np.diff(rows) > 0).all() and rows[-1] < 100_000_000
    assert peak < 50 * 2**20 and np.array_equal(rows, sample_rows(100_000_000, 50_000, 7))
    assert np.array_equal(sample_rows(1000, 10, 3), np.sort(np.random.default_rng(3).permutation(1000)[:10]))


def test_reranking_reads_its_candidates_through_a_mapping_advised_random(tmp_path):
    """Issue 49: the vectors a search re-ranks are read at random; through a mapping of their own advised
    ``MADV_RANDOM`` a candidate costs its own page from disk, not a 128 KB read-around (a store larger than the page
    cache, in a container, was read at 32 x the bytes). Same rows, same answers."""
    import mmap

    from imgfeat.tools.exact import random_access
    from imgfeat.tools.knn import KNNIndex

    if not hasattr(mmap, "MADV_RANDOM"):
        pytest.skip("no madvise here")
    rng = np.random.default_rng(0)
    X = rng.standard_normal((3000, 16)).astype(np.float32)
    np.save(tmp_path / "x.npy", X)
    mapped = np.load(tmp_path / "x.npy", mmap_mode="r")
    again = random_access(mapped)
    assert isinstance(again, np.memmap) and again._mmap is not mapped._mmap and np.array_equal(again, X)
    knn = KNNIndex(index="IVF16,PQ4", rerank=8).fit(mapped)
    assert knn.source_ is not mapped and knn.source_.filename == mapped.filename
    D, I = knn.search(X[:20], 5)
    exact = KNNIndex(index="exact").fit(X)
    assert (I[:, 0] == np.arange(20)).all() and (I[:, 0] == exact.search(X[:20], 5)[1][:, 0]).all()
