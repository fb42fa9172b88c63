"""imgfeat audit (issue 22): cleanlab's label, outlier and near-duplicate issues on imgfeat's kNN graph, and
leaks across splits, on generated data with flipped labels, planted outliers and planted cross-split copies."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("faiss")
cleanlab = pytest.importorskip("cleanlab")

from imgfeat.cli import main  # noqa: E402
from imgfeat.errors import ImgfeatError  # noqa: E402
from imgfeat.tools.audit import DatasetAudit  # noqa: E402


def planted(seed: int = 0):
    """4 classes x 80, 16 labels flipped, 3 training images copied into the test split, 2 far outliers."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((4, 16)) * 3
    X = np.concatenate([c + 0.5 * rng.standard_normal((80, 16)) for c in centres]).astype(np.float32)
    y = np.repeat([f"c{i}" for i in range(4)], 80).astype(object)
    flipped = rng.choice(len(y), 16, replace=False)
    y[flipped] = [f"c{(int(v[1]) + 1) % 4}" for v in y[flipped]]
    X = np.concatenate([X, X[:3] + 1e-4, rng.standard_normal((2, 16)).astype(np.float32) * 30])
    y = np.concatenate([y, y[:3], ["c0", "c1"]]).astype(object)
    splits = ["train"] * 320 + ["test"] * 3 + ["train"] * 2
    return X, list(y), splits, set(flipped.tolist())


def test_the_flags_find_what_was_planted():
    X, y, splits, flipped = planted()
    audit = DatasetAudit(k=10).fit(X, y, splits)
    label = audit.issues_["label"]
    found = set(label["rows"][label["flag"]].tolist())
    assert flipped <= found and len(found - flipped) <= 2
    outliers = set(np.flatnonzero(audit.issues_["outlier"]["flag"]).tolist())
    assert {323, 324} <= outliers
    assert [(a, b) for a, b, _ in audit.leaks_] == [(0, 320), (1, 321), (2, 322)]
    assert set(np.flatnonzero(audit.issues_["near_duplicate"]["flag"]).tolist()) >= {0, 1, 2, 320, 321, 322}


def test_label_issues_equal_cleanlabs_own_from_the_same_neighbours():
    """cleanlab's default path (a k+1-NN classifier on the features, the image's own vote taken out) on the
    L2-normalised features finds the same neighbours as imgfeat's cosine graph: the scores are the same."""
    from cleanlab import Datalab

    X, y, _, _ = planted(1)
    Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
    ours = DatasetAudit(k=10, issues=("label",)).fit(X, y).issues_["label"]
    lab = Datalab(data={"label": y}, label_name="label", verbosity=0)
    lab.find_issues(features=Xn, issue_types={"label": {"k": 10}})
    theirs = lab.get_issues("label")
    np.testing.assert_allclose(ours["score"], theirs["label_score"].to_numpy(), atol=1e-9)
    assert np.array_equal(ours["flag"], theirs["is_label_issue"].to_numpy())


def test_the_streamed_audit_is_cleanlabs_on_the_same_graph(tmp_path):
    """Issue 49: the audit of a collection too large for Datalab computes each issue a block of rows at a time
    from a graph on disk: outliers, near-duplicates and leaks equal the in-memory audit's (cleanlab's Datalab), and
    the label issues equal cleanlab's batched path (``find_label_issues_batched``) run on the whole array of class
    shares; the planted flips are found and the graph's folder is gone after ``close``."""
    from cleanlab.experimental.label_issues_batched import find_label_issues_batched
    from imgfeat.tools.auditblocks import class_shares

    X, y, splits, flipped = planted(2)
    whole = DatasetAudit(k=10, index="exact", streamed=False).fit(X, y, splits)
    parts = DatasetAudit(k=10, index="exact", streamed=True, workdir=str(tmp_path)).fit(X, y, splits)
    assert parts.summary_["streamed"] and list(tmp_path.iterdir())
    for name in ("outlier", "near_duplicate"):
        np.testing.assert_allclose(parts.issues_[name]["score"], whole.issues_[name]["score"], rtol=1e-9)
        assert np.array_equal(parts.issues_[name]["flag"], whole.issues_[name]["flag"]), name
        assert parts.summary_[name]["score"] == pytest.approx(whole.summary_[name]["score"])
    assert parts.leaks_ == whole.leaks_ and parts.summary_["leak"] == whole.summary_["leak"]
    np.testing.assert_array_equal(parts.knn_[1], whole.knn_[1])
    # labels: cleanlab's batched path on the class shares of the same graph
    classes = np.array(sorted(set(y)))
    codes = np.searchsorted(classes, np.array(y, dtype=str))
    pred = class_shares(codes, whole.knn_[1], len(classes))
    theirs = find_label_issues_batched(labels=codes, pred_probs=pred, batch_size=50, verbose=False,
                                       num_issue_kwargs={"estimation_method": "off_diagonal_calibrated"})
    label = parts.issues_["label"]
    assert np.array_equal(np.flatnonzero(label["flag"]), np.sort(theirs))
    assert np.array_equal(label["suggested"], classes[pred.argmax(axis=1)])
    assert flipped <= set(label["rows"][label["flag"]].tolist())
    parts.close()
    assert not list(tmp_path.iterdir())


def test_the_audit_streams_where_datalab_would_pass_the_budget(tmp_path):
    """Without ``streamed`` the budget decides: Datalab's arrays (N x classes probabilities among them) within half
    the memory stay in memory, more go block by block."""
    X, y, splits, _ = planted(3)
    assert "streamed" not in DatasetAudit(k=10, index="exact").fit(X, y, splits).summary_
    small = DatasetAudit(k=10, index="exact", memory=2**18, workdir=str(tmp_path)).fit(X, y, splits)
    assert small.summary_["streamed"] and small.summary_["label"]["flagged"] > 0


@pytest.mark.parametrize("memory", [None, "200KB"])
def test_cli_writes_the_report(tmp_path, capsys, memory):
    """The same report in memory (cleanlab's Datalab) and, within a budget Datalab would pass, a block of rows at a
    time from a graph on disk (removed when done)."""
    X, y, splits, flipped = planted()
    ids = [f"i{k:03d}" for k in range(len(y))]
    np.save(tmp_path / "f.npy", X)
    (tmp_path / "f.ids.txt").write_text("".join(f"{i}\n" for i in ids))
    train = [k for k, s in enumerate(splits) if s == "train"]
    test = [k for k, s in enumerate(splits) if s == "test"]
    (tmp_path / "train.tsv").write_text("".join(f"{ids[k]}\t{y[k]}\n" for k in train))
    (tmp_path / "test.tsv").write_text("".join(f"{ids[k]}\t{y[k]}\n" for k in test))
    out = tmp_path / "report"
    assert main(["audit", "--features", str(tmp_path / "f.npy"), "--labels", str(tmp_path / "train.tsv"),
                 "--test-labels", str(tmp_path / "test.tsv"), "--out", str(out), "--json"]
                + (["--max-memory", memory] if memory else [])) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["leak"]["pairs"] == 3 and summary["label"]["flagged"] >= len(flipped)
    assert summary.get("streamed", False) == bool(memory)
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []
    leak = (out / "leak.tsv").read_text().splitlines()
    assert leak[0] == "id\tsplit\tother_id\tother_split\tcosine" and len(leak) == 4
    assert {tuple(line.split("\t")[:4]) for line in leak[1:]} == {
        ("i000", "train", "i320", "test"), ("i001", "train", "i321", "test"), ("i002", "train", "i322", "test")}
    rows = [line.split("\t") for line in (out / "label.tsv").read_text().splitlines()[1:]]
    flagged = {r[0] for r in rows if r[2] == "1"}
    assert {ids[k] for k in flipped} <= flagged
    assert all(r[4] for r in rows)  # a suggested label for each
    assert json.loads((out / "summary.json").read_text())["files"]["label"] == str(out / "label.tsv")


def test_without_labels_the_label_issue_is_skipped(tmp_path, capsys):
    X, _, _, _ = planted()
    np.save(tmp_path / "f.npy", X)
    (tmp_path / "f.ids.txt").write_text("".join(f"i{k}\n" for k in range(len(X))))
    assert main(["audit", "--features", str(tmp_path / "f.npy"), "--out", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    assert "label: skipped (no labels)" in out and "outlier:" in out and "leak: skipped" in out


@pytest.mark.parametrize("case,message", [
    ("one class", "single class"),
    ("k too large", "--k must be an integer below the number of vectors"),
    ("stranger", "have no feature vector"),
    ("bad issue", "--issues must be a comma list"),
])
def test_bad_input_is_one_clear_line(tmp_path, capsys, case, message):
    X = np.random.default_rng(0).standard_normal((30, 8)).astype(np.float32)
    np.save(tmp_path / "f.npy", X)
    (tmp_path / "f.ids.txt").write_text("".join(f"i{k}\n" for k in range(30)))
    labels = {"one class": "".join(f"i{k}\tx\n" for k in range(30)),
              "stranger": "nobody\tx\n"}.get(case, "".join(f"i{k}\t{'ab'[k % 2]}\n" for k in range(30)))
    (tmp_path / "l.tsv").write_text(labels)
    argv = ["audit", "--features", str(tmp_path / "f.npy"), "--labels", str(tmp_path / "l.tsv"), "--out",
            str(tmp_path / "r")]
    argv += {"k too large": ["--k", "30"], "bad issue": ["--issues", "label,typos"]}.get(case, [])
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_labels_for_part_of_the_features_audit_the_labelled_part(tmp_path, capsys):
    X, y, _, _ = planted()
    np.save(tmp_path / "f.npy", X)
    (tmp_path / "f.ids.txt").write_text("".join(f"i{k}\n" for k in range(len(X))))
    (tmp_path / "l.tsv").write_text("".join(f"i{k}\t{y[k]}\n" for k in range(200)))
    assert main(["audit", "--features", str(tmp_path / "f.npy"), "--labels", str(tmp_path / "l.tsv"), "--out",
                 str(tmp_path / "r"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["n"] == 200 and summary["label"]["labelled"] == 200 and summary["unlabelled_left_out"] == 125


# ----------------------------------------------------------------------------- review in imgfeat serve
@pytest.fixture
def reviewed(tmp_path):
    pytest.importorskip("fastapi")
    return make_review(tmp_path)


def make_review(tmp_path):
    """An audit report of the planted data (16 flipped labels) and the features it was made from."""
    X, y, _, flipped = planted()
    ids = [f"i{k:03d}" for k in range(len(y))]
    np.save(tmp_path / "f.npy", X)
    (tmp_path / "f.ids.txt").write_text("".join(f"{i}\n" for i in ids))
    (tmp_path / "noisy.tsv").write_text("".join(f"{i}\t{lab}\n" for i, lab in zip(ids, y)))
    report = tmp_path / "report"
    assert main(["audit", "--features", str(tmp_path / "f.npy"), "--labels", str(tmp_path / "noisy.tsv"),
                 "--out", str(report)]) == 0
    wrong = [ids[k] for k in sorted(flipped)[:3]]
    return {"store": tmp_path / "f.npy", "report": report, "noisy": tmp_path / "noisy.tsv", "wrong": wrong,
            "root": tmp_path, "truth": planted_truth(), "ids": ids}


def planted_truth() -> list:
    """The labels of planted() before they were flipped."""
    return [f"c{i}" for i in range(4) for _ in range(80)] + ["c0"] * 3 + ["c0", "c1"]


def test_the_review_api_records_decisions_that_probe_takes_back(reviewed, capsys):
    import requests
    from helpers import PATIENCE

    from imgfeat.serve.app import ServeConfig
    from imgfeat.serve.collection import Collection
    from imgfeat.serve.server import Background

    root = reviewed["root"]
    collection = Collection(reviewed["store"], cache=root / "serve-cache")
    with Background(collection, ServeConfig(port=0, audit=str(reviewed["report"]))) as srv:
        def api(path, **kw):
            r = requests.request(kw.pop("method", "GET"), srv.url + path, timeout=PATIENCE, **kw)
            return r

        info = api("api/audit").json()
        assert info["available"] and info["issues"]["label"] >= 3
        page = api("api/audit/label").json()
        suspect = next(it for it in page["items"] if it["id"] == reviewed["wrong"][0])
        row = reviewed["ids"].index(suspect["id"])
        assert suspect["given"] != reviewed["truth"][row] and suspect["suggested"] == reviewed["truth"][row]
        assert suspect["in_collection"] and len(suspect["neighbours"]) == 5
        for rid in reviewed["wrong"][:2]:
            true = reviewed["truth"][reviewed["ids"].index(rid)]
            assert api("api/audit/decision", method="POST", json={"id": rid, "decision": "relabel",
                                                                   "new_label": true}).status_code == 200
        assert api("api/audit/decision", method="POST", json={"id": reviewed["wrong"][2], "decision": "drop"}).ok
        bad = api("api/audit/decision", method="POST", json={"id": "x", "decision": "maybe"})
        assert bad.status_code == 400 and bad.json()["parameter"] == "decision"
        stranger = api("api/audit/decision", method="POST", json={"id": "not-a-suspect", "decision": "drop"})
        assert stranger.status_code == 404 and stranger.json()["parameter"] == "id"  # neither in report nor collection
        # relabel without a label: the audit's suggestion (then set back to the label given above)
        rid = reviewed["wrong"][0]
        took = api("api/audit/decision", method="POST", json={"id": rid, "decision": "relabel"}).json()
        assert took["new_label"] == suspect["suggested"] == reviewed["truth"][reviewed["ids"].index(rid)]
        tsv = api("api/audit/decisions.tsv").text
    assert tsv.splitlines()[0] == "id\tdecision\tnew_label" and len(tsv.splitlines()) == 4
    corrections = root / "corrections.tsv"
    corrections.write_text(tsv)
    assert [*(root / "serve-cache").glob("review-*/audit-decisions.tsv")][0].read_text() == tsv  # the serve cache
    # the corrected labels go back into probe: the relabelled ids count as noise, the dropped one is gone
    from imgfeat.tools.labels import apply_corrections, read_labels

    fixed = apply_corrections(read_labels(reviewed["noisy"]), str(corrections))
    first = reviewed["wrong"][0]
    assert fixed[first] == reviewed["truth"][reviewed["ids"].index(first)] and reviewed["wrong"][2] not in fixed
    assert main(["probe", "--features", str(reviewed["store"]), "--labels", str(reviewed["noisy"]), "--corrections",
                 str(corrections), "--C", "1", "--out-dir", str(root / "probe"), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["train"] + res["test"] == len(reviewed["ids"]) - 1  # the dropped id is gone


def test_a_review_without_a_report_says_how_to_get_one(tmp_path):
    pytest.importorskip("fastapi")
    from imgfeat.errors import ImgfeatError
    from imgfeat.serve.review import Review

    with pytest.raises(ImgfeatError, match="not a report folder of imgfeat audit"):
        Review(tmp_path, tmp_path)


def test_auto_takes_the_pca_graph_on_large_high_dimensional_sets_and_says_its_recall(monkeypatch):
    """auto: exact below PCA_FROM (the planted set), the pca graph above it; the summary gives the pca graph's
    sampled recall, and on features with low intrinsic dimension the flags are the exact graph's."""
    from imgfeat.tools import autoindex

    X, y, splits, _ = planted(2)
    rng = np.random.default_rng(2)
    Xh = (X @ rng.standard_normal((16, 256))).astype(np.float32)  # 256-d, 16 directions of variance
    exact = DatasetAudit(k=10).fit(Xh, y, splits)
    assert exact.summary_["index"] == "exact" and "graph_recall" not in exact.summary_
    monkeypatch.setattr(autoindex, "PCA_FROM", (100, 200))
    fast = DatasetAudit(k=10).fit(Xh, y, splits)
    assert fast.summary_["index"] == "pca"
    recall = fast.summary_["graph_recall"]  # every row sampled; below 1 only among the planted near-copies' ties
    assert recall["sampled_rows"] == len(Xh) and recall["recall_at_k"] >= 0.99
    for name in ("label", "outlier", "near_duplicate"):
        assert np.array_equal(fast.issues_[name]["flag"], exact.issues_[name]["flag"]), name
    assert [(a, b) for a, b, _ in fast.leaks_] == [(a, b) for a, b, _ in exact.leaks_] == [(0, 320), (1, 321), (2, 322)]
    np.testing.assert_allclose([c for *_, c in fast.leaks_], [c for *_, c in exact.leaks_], atol=1e-5)


def test_auto_index_rule():
    from imgfeat.tools.autoindex import choose_index

    assert [choose_index(n, d, 2**34)[0] for n, d in [(19_999, 1280), (20_000, 1280), (60_000, 256),
                                                      (500_000, 2048), (500_001, 64)]] == \
        ["exact", "pca", "exact", "pca", "ivf"]
    # beyond the budget: 8-bit PQ codes, the most that fit (up to 64, one per 4 dimensions), their candidates re-ranked
    assert choose_index(10_000_000, 256, 2 * 10_000_000 * 41) == ("IVF8192_HNSW32,PQ16", 4.0)  # its training sample fits
    assert choose_index(10_000_000, 256, 2 * 10_000_000 * 20) == ("IVF4096,PQ8", 4.0)  # fewer cells: a smaller sample
    assert choose_index(100_000_000, 256, 2**33) == ("IVF32768_HNSW32,PQ32", 4.0)  # an HNSW quantizer
    assert choose_index(100_000_000, 256, 2**35) == ("IVF32768_HNSW32,PQ64", 4.0)  # no more than PQ8_MAX codes
    assert choose_index(100_000_000, 255, 2**33) == ("IVF32768_HNSW32,PQ17", 4.0)  # an odd dimension: 8-bit codes
    # 4-bit fast-scan codes where 8-bit ones do not train (fewer than 256 x 39 vectors) or 8 bytes do not fit
    assert choose_index(6_000, 32, 2**20) == ("IVF64,PQ8x4fs", 4.0)
    assert choose_index(10_000_000, 256, 2 * 10_000_000 * 14)[0].endswith("x4fs")
    with pytest.raises(ImgfeatError, match="1-byte codes"):
        choose_index(100_000_000, 256, 2**30)


# ----------------------------------------------------------------------------- issue 29: labels as users keep them
def _folder_store(tmp_path, photos, n_per_class: int = 4):
    """A class-folder collection (cat/ and dog/) extracted into a store, plus one undecodable image in cat/."""
    import shutil

    import imgfeat

    folder = tmp_path / "photos"
    names = sorted(photos.glob("*.jpg"))
    for c, cls in enumerate(("cat", "dog")):
        (folder / cls).mkdir(parents=True)
        for j in range(n_per_class):
            shutil.copy(names[(c * n_per_class + j) % len(names)], folder / cls / f"{j:02d}.jpg")
    (folder / "cat" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    store = tmp_path / "store"
    imgfeat.extract(str(folder), str(store), model="squeezenet1_1", backend="torch", workers=0, quiet=True,
                    random_weights=True)
    return folder, store


def test_labels_from_class_folders_and_error_rows_left_out(tmp_path, photos, capsys):
    """29.5 and 29.6: --labels-from-folder gives audit, probe, map, diffuse and serve the class folder; a labelled
    image whose file failed (an error row of the store) is left out and counted instead of refusing the run."""
    from imgfeat.tools.labels import FolderLabels, labels_for

    folder, store = _folder_store(tmp_path, photos)
    ids = [f"{c}/{j:02d}.jpg" for c in ("cat", "dog") for j in range(4)]
    assert labels_for(FolderLabels(), ids) == {i: i.split("/")[0] for i in ids}
    assert main(["audit", "--features", str(store), "--labels-from-folder", "--k", "3", "--out", str(tmp_path / "r"),
                 "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["label"]["labelled"] == 8 and summary["labels_without_vector"] == 0
    given = {line.split("\t")[0]: line.split("\t")[3] for line in
             (tmp_path / "r" / "label.tsv").read_text().splitlines()[1:]}
    assert given == {i: i.split("/")[0] for i in ids}
    # a labels file naming the broken image (an error row): left out, counted, said
    labels = tmp_path / "labels.tsv"
    labels.write_text("".join(f"{i}\t{i.split('/')[0]}\n" for i in ids + ["cat/broken.jpg"]))
    assert main(["audit", "--features", str(store), "--labels", str(labels), "--k", "3", "--out", str(tmp_path / "r2")]) == 0
    out = capsys.readouterr()
    assert "1 labelled image(s) have no vector: they are error rows" in out.out
    assert json.loads((tmp_path / "r2" / "summary.json").read_text())["labels_without_vector"] == 1
    labels.write_text(labels.read_text() + "nowhere.jpg\tcat\n")  # an id the store never saw: still refused
    assert main(["audit", "--features", str(store), "--labels", str(labels), "--out", str(tmp_path / "r3")]) == 2
    assert "have no feature vector" in capsys.readouterr().err
    assert main(["probe", "--features", str(store), "--labels-from-folder", "-1", "--test-size", "0.5", "--C", "1",
                 "--out-dir", str(tmp_path / "probe"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["train"] + 4 == 8
    assert main(["map", "--features", str(store), "--labels-from-folder", "--out", str(tmp_path / "m.png")]) == 0
    assert main(["diffuse", "--features", str(store), "--labels-from-folder", "--k", "3", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["labelled"] == 8
    with pytest.raises(SystemExit) as usage:  # one or the other
        main(["audit", "--features", str(store), "--labels", str(labels), "--labels-from-folder",
              "--out", str(tmp_path / "r4")])
    assert usage.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err
    pytest.importorskip("fastapi")
    from imgfeat.serve.collection import Collection

    c = Collection(store, labels=FolderLabels(), cache=tmp_path / "cache")
    assert c.categories == ["cat", "dog"] and c.label_of(c.row_of["dog/01.jpg"]) == "dog"


def test_every_image_is_ranked_and_decidable_and_kept_images_stay_unflagged(reviewed, capsys):
    """29.7, 29.8, 29.9, 29.17: the review lists flagged images first then every other by score, ties broken by
    the neighbours' agreement; any image of the collection takes a decision; a new label needs a confirmation;
    a kept image is not flagged by the next audit --corrections; a drop is said to be the corrections'."""
    import requests
    from helpers import PATIENCE

    from imgfeat.serve.app import ServeConfig
    from imgfeat.serve.collection import Collection
    from imgfeat.serve.server import Background

    root = reviewed["root"]
    label_tsv = [line.split("\t") for line in (reviewed["report"] / "label.tsv").read_text().splitlines()]
    header, rows = label_tsv[0], label_tsv[1:]
    flag, score = header.index("flag"), header.index("score")
    flags = [r[flag] == "1" for r in rows]
    assert flags == sorted(flags, reverse=True) and not all(flags)  # flagged first, then the others
    n_flagged = sum(flags)
    for part in (rows[:n_flagged], rows[n_flagged:]):
        assert [float(r[score]) for r in part] == sorted(float(r[score]) for r in part)
    # ties (equal scores) are ordered by how strongly the neighbours agree on the suggested label
    from imgfeat.tools.audit import review_order

    X, y, _, _ = planted()
    label = DatasetAudit(k=10, issues=("label",)).fit(X, y).issues_["label"]
    order = review_order(label["score"], label["flag"], label["agreement"])
    zero = [j for j in order if label["score"][j] == 0 and label["flag"][j]]
    assert len(zero) >= 2 and [label["agreement"][j] for j in zero] == sorted(
        (label["agreement"][j] for j in zero), reverse=True)
    assert review_order(np.array([0.0, 0.0, 0.5, 0.0]), np.array([True, True, True, False]),
                        np.array([0.5, 1.0, 1.0, 1.0])).tolist() == [1, 0, 2, 3]
    unflagged = rows[n_flagged][0]
    collection = Collection(reviewed["store"], cache=root / "serve-cache")
    with Background(collection, ServeConfig(port=0, audit=str(reviewed["report"]))) as srv:
        def api(path, **kw):
            return requests.request(kw.pop("method", "GET"), srv.url + path, timeout=PATIENCE, **kw)

        info = api("api/audit").json()
        assert info["ranked"]["label"] == len(rows) and info["labels"] == ["c0", "c1", "c2", "c3"]
        page = api("api/audit/label", params={"offset": n_flagged, "limit": 5}).json()
        assert page["items"][0]["id"] == unflagged and not page["items"][0]["flag"]
        assert page["flagged"] == n_flagged and page["total"] == len(rows)
        found = api("api/audit/outlier", params={"id": unflagged, "limit": 50}).json()
        assert unflagged in [it["id"] for it in found["items"]]
        assert api("api/audit/decision", method="POST", json={"id": unflagged, "decision": "keep"}).ok
        new = api("api/audit/decision", method="POST", json={"id": unflagged, "decision": "relabel",
                                                             "new_label": "Nonexistent"})
        assert new.status_code == 400 and new.json()["parameter"] == "new_label" and "confirm" in new.json()["error"]
        assert api("api/audit/decision", method="POST", json={"id": unflagged, "decision": "relabel",
                                                              "new_label": "Nonexistent",
                                                              "confirm_new_label": True}).ok
        assert "Nonexistent" in api("api/audit").json()["labels"]
        # outlier suspects have no suggestion: relabel to any known label
        outlier = api("api/audit/outlier").json()["items"][0]["id"]
        assert api("api/audit/decision", method="POST", json={"id": outlier, "decision": "relabel",
                                                              "new_label": "c2"}).json()["new_label"] == "c2"
        flagged = [r[0] for r in rows[:n_flagged]]
        for rid in flagged[:3]:
            assert api("api/audit/decision", method="POST", json={"id": rid, "decision": "keep"}).ok
        assert api("api/audit/decision", method="POST", json={"id": flagged[3], "decision": "drop"}).ok
        tsv = api("api/audit/decisions.tsv").text
    corrections = root / "corrections.tsv"
    corrections.write_text(tsv)
    assert main(["audit", "--features", str(reviewed["store"]), "--labels", str(reviewed["noisy"]), "--corrections",
                 str(corrections), "--out", str(root / "again")]) == 0
    out = capsys.readouterr().out
    assert "1 image(s) dropped by your corrections were left out" in out and "without a label" not in out
    again = {line.split("\t")[0]: line.split("\t") for line in
             (root / "again" / "label.tsv").read_text().splitlines()[1:]}
    for rid in flagged[:3]:
        assert again[rid][2] == "0" and again[rid][-1] == "keep"  # kept: not flagged again, shown as reviewed
    summary = json.loads((root / "again" / "summary.json").read_text())
    assert summary["label"]["kept_by_review"] == 3 and summary["dropped_by_corrections"] == 1
