"""Issue 47: fault injection. Each test damages a real store (or a cache, a Lance dataset, a file a user edits) the way
a bad disk, an interrupted copy or a hand edit would, then checks the promise: no command hands a damaged vector on,
every failure is one line naming the file and the repair (exit status 1, nothing written), the repair makes the
store equal to a fresh extraction, and caches heal themselves."""

from __future__ import annotations

import gc
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from helpers import write_image

import imgfeat
from imgfeat.cli import main
from imgfeat.errors import DamagedFileError, ImgfeatError
from imgfeat.outputs.store import FeatureStore, StoreDamagedError

MODEL = dict(model="squeezenet1_1", backend="torch", workers=0, quiet=True)
ARGS = ["--model", "squeezenet1_1", "--backend", "torch", "--workers", "0", "--shard-size", "3", "--quiet"]
N = 11  # images: shards of 3, 3, 3 and 2


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A folder of images, a store of it (4 shards), and a fresh extraction's ids and vectors to compare with."""
    root = tmp_path_factory.mktemp("faults")
    folder = root / "images"
    for i in range(N):
        write_image(folder / f"im{i:02d}.png", size=(40 + 3 * i, 36), seed=100 + i)
    store = root / "store"
    assert main(["extract", "--data", str(folder), "--out", str(store), *ARGS]) == 0
    ids, X = imgfeat.load(store)
    return {"root": root, "folder": folder, "store": store, "ids": list(ids), "X": np.asarray(X)}


@pytest.fixture
def store(base, tmp_path) -> Path:
    """A copy of the base store to damage (its input is the base folder, which no test changes)."""
    out = tmp_path / "store"
    shutil.copytree(base["store"], out)
    return out


def _shard_file(store: Path, suffix: str, seg: int = 1) -> Path:
    shard = FeatureStore(store).segments()[seg]["shard"]
    return store / "shards" / f"{shard:06d}.{suffix}"


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


def _flip(path: Path, at: int = -20) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0x10
    path.write_bytes(bytes(data))


def _equals_fresh(store: Path, base, same_order: bool = True) -> None:
    ids, X = imgfeat.load(store)
    ids, X = list(ids), np.asarray(X)
    if same_order:
        assert ids == base["ids"]
        np.testing.assert_allclose(X, base["X"], rtol=1e-5, atol=1e-6)
    else:
        want = dict(zip(base["ids"], base["X"]))
        assert sorted(ids) == sorted(want)
        for rid, row in zip(ids, X):
            np.testing.assert_allclose(row, want[rid], rtol=1e-5, atol=1e-6)


def _one_line(capsys, *words) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    for w in words:
        assert w in err, err
    return err


READERS = [
    lambda s, t: ["knn", "--features", str(s), "--k", "2", "--out", str(t / "g.npz")],
    lambda s, t: ["export", str(s), str(t / "x.tsv")],
    lambda s, t: ["export", str(s), str(t / "ds.lance"), "--to", "lance"],
    lambda s, t: ["dedup", "--features", str(s), "--out", str(t / "d.tsv")],
    lambda s, t: ["search", "--features", str(s), "--query", "im00.png"],
    lambda s, t: ["pca", "fit", "--features", str(s), "--dim", "2", "--out", str(t / "p.npz")],
]


@pytest.mark.parametrize("damage", ["truncate npy", "flip npy", "flip ids", "truncate ids", "delete npy"])
def test_no_reader_hands_a_damaged_vector_on_and_repair_restores_a_fresh_extraction(store, base, tmp_path, capsys,
                                                                                    damage):
    how, kind = damage.split()
    victim = _shard_file(store, {"npy": "npy", "ids": "ids.parquet"}[kind])
    imgfeat.load(store)  # checked once and remembered: the damage below must still be seen
    {"truncate": _truncate, "flip": _flip, "delete": Path.unlink}[how](victim)
    with pytest.raises(StoreDamagedError, match=f"{victim.name}.*imgfeat repair"):
        imgfeat.load(store)
    outs = tmp_path / "outs"
    outs.mkdir()
    for make in READERS:
        argv = make(store, outs)
        assert main(argv) == 1, argv
        _one_line(capsys, victim.name, f"imgfeat repair {store}")
    assert sorted(p.name for p in outs.iterdir()) == []  # nothing written, not even a partial Lance dataset
    assert main(["info", str(store)]) == 1
    assert f"imgfeat repair {store}" in capsys.readouterr().out
    assert main(["repair", str(store)]) == 0
    assert "repaired 1 damaged shard(s): 3 input(s) re-extracted" in capsys.readouterr().err
    assert main(["info", str(store), "--full"]) == 0
    _equals_fresh(store, base)


def test_a_rerun_of_extract_repairs_a_shard_whose_files_are_all_gone(store, base, capsys):
    """Every file of a shard deleted (its inventory too): the rerun finds its images in the input as new and puts
    them in its place."""
    shard = FeatureStore(store).segments()[2]["shard"]
    for p in (store / "shards").glob(f"{shard:06d}.*"):
        p.unlink()
    assert main(["info", str(store)]) == 1
    assert "MISSING" in capsys.readouterr().out
    assert main(["extract", "--data", str(base["folder"]), "--out", str(store), *ARGS[:-1]]) == 0
    assert "repaired 1 damaged shard(s)" in capsys.readouterr().err
    assert main(["info", str(store)]) == 0
    _equals_fresh(store, base)


@pytest.mark.parametrize("victim", ["inputs.parquet", "errors.tsv"])
def test_a_damaged_inventory_or_error_log_is_repaired_too(store, base, capsys, victim):
    _truncate(_shard_file(store, victim, seg=0)) if victim != "errors.tsv" else \
        _shard_file(store, victim, seg=0).write_text("junk\trow\tadded\n")
    assert main(["extract", "--data", str(base["folder"]), "--out", str(store), *ARGS]) == 0
    assert main(["info", str(store)]) == 0
    _equals_fresh(store, base)


def test_stale_or_damaged_markers_lose_nothing(store, base, capsys):
    """The issue's trap: deleting a shard's .done.json (the old advice) hid the damage. The manifest holds what
    the markers said: a published shard stays checked and read, with or without its marker."""
    _shard_file(store, "done.json").unlink()
    _shard_file(store, "done.json", seg=2).write_text('{"shard": ')
    assert main(["info", str(store)]) == 0
    _one_line(capsys) if capsys.readouterr().err else None
    _equals_fresh(store, base)
    assert main(["extract", "--data", str(base["folder"]), "--out", str(store), *ARGS]) == 0
    _truncate(_shard_file(store, "npy"))
    assert main(["info", str(store)]) == 1  # damage behind a missing marker is still found
    assert main(["repair", str(store)]) == 0
    _equals_fresh(store, base)


def test_a_shard_whose_images_are_gone_is_dropped_with_a_count(base, tmp_path, capsys):
    folder = tmp_path / "images"
    shutil.copytree(base["folder"], folder)
    store = tmp_path / "store"
    assert main(["extract", "--data", str(folder), "--out", str(store), *ARGS]) == 0
    seg = FeatureStore(store).segments()[1]
    import pyarrow.parquet as pq

    paths = pq.read_table(store / "shards" / f"{seg['shard']:06d}.ids.parquet").column("path").to_pylist()
    for p in paths[:2]:
        Path(p).unlink()
    _flip(store / "shards" / f"{seg['shard']:06d}.npy")
    assert main(["repair", str(store)]) == 0
    assert "1 input(s) re-extracted from their images, 2 dropped (their images are gone)" in capsys.readouterr().err
    assert main(["info", str(store)]) == 0
    ids, X = imgfeat.load(store)
    assert len(ids) == N - 2 and not set(Path(p).name for p in paths[:2]) & set(ids)
    want = dict(zip(base["ids"], base["X"]))
    for rid, row in zip(ids, np.asarray(X)):
        np.testing.assert_allclose(row, want[rid], rtol=1e-5, atol=1e-6)


def test_a_second_read_pays_nothing_and_a_changed_file_is_checked_again(store, monkeypatch):
    from imgfeat.outputs.store import integrity

    imgfeat.load(store)
    calls = []
    real = integrity.xxh3
    monkeypatch.setattr(integrity, "xxh3", lambda p: calls.append(Path(p).name) or real(p))
    imgfeat.load(store)
    assert calls == []  # every file's state was checked before: one stat each
    victim = _shard_file(store, "npy")
    victim.write_bytes(victim.read_bytes())  # the same bytes, written again: a new state, checked again
    imgfeat.load(store)
    assert calls == [victim.name]


def test_a_damaged_manifest_is_one_line(store, capsys):
    _truncate(store / "manifest.json")
    assert main(["info", str(store)]) == 1
    _one_line(capsys, "manifest.json")


def test_repair_without_a_recorded_input_asks_for_it(store, base, capsys):
    manifest = json.loads((store / "manifest.json").read_text())
    manifest["extract"]["data"] = str(base["root"] / "moved-away")
    (store / "manifest.json").write_text(json.dumps(manifest))
    _truncate(_shard_file(store, "npy"))
    assert main(["repair", str(store)]) == 2
    assert "--data" in capsys.readouterr().err
    assert main(["repair", str(store), "--data", str(base["folder"])]) == 0
    _equals_fresh(store, base)


# ----------------------------------------------------------------------------- graphs
def test_a_graph_with_rows_outside_it_is_one_line(base, tmp_path, capsys):
    prefix = tmp_path / "g"
    assert main(["knn", "--features", str(base["store"]), "--k", "3", "--raw", str(prefix)]) == 0
    labels = tmp_path / "labels.tsv"
    labels.write_text("".join(f"{i}\t{'a' if j % 2 else 'b'}\n" for j, i in enumerate(base["ids"])))
    capsys.readouterr()
    I = np.memmap(f"{prefix}.int32", np.int32, "r+")
    I[5] = 10**6
    I.flush()
    del I
    assert main(["diffuse", "--features", str(base["store"]), "--labels", str(labels), "--graph", str(prefix),
                 "--json"]) == 1
    _one_line(capsys, "row 1 names neighbour rows outside", "knn --raw")


# ----------------------------------------------------------------------------- files a user edits
@pytest.mark.parametrize("text,message", [
    ("a\tcat\nb\t\n", "line 2: the label is empty"),
    ("a\tcat\nb\t \n", "line 2: the label is empty"),
    ("a\tcat\n\tdog\n", "line 2: the id is empty"),
    ("a\tcat\nb\tdog\na\tdog\n", "line 3: 'a' is labelled 'dog' here and 'cat' on line 1"),
    ("a\tcat\tx\n", "line 1: expected 'id<TAB>label'"),
])
def test_a_labels_file_is_validated_with_line_numbers(tmp_path, text, message):
    from imgfeat.tools.labels import read_labels

    path = tmp_path / "labels.tsv"
    path.write_text(text)
    with pytest.raises(ImgfeatError, match=message):
        read_labels(path)


def test_a_labels_file_with_a_bom_and_repeated_agreeing_lines_reads(tmp_path):
    from imgfeat.tools.labels import read_labels

    path = tmp_path / "labels.tsv"
    path.write_bytes("\ufeffid\tlabel\na\tcat \nb\tdog\na\tcat\n".encode("utf-8"))
    assert read_labels(path) == {"a": "cat", "b": "dog"}


@pytest.mark.parametrize("text,message", [
    ("id\tdecision\tnew_label\na\texplode\t\n", "line 2.*'explode' is not one of keep, relabel, drop"),
    ("id\tverdict\na\tkeep\n", "line 1: the columns are"),
    ("id\tdecision\tnew_label\na\trelabel\t\n", "line 2: a relabel needs its new label"),
    ("a\tkeep\t\na\tdrop\t\n", "line 2: 'a' is decided drop here and keep on line 1"),
    ("a\tkeep\t\tmore\n", "line 1: expected"),
])
def test_a_decisions_file_is_validated_with_line_numbers(tmp_path, text, message):
    from imgfeat.tools.labels import read_corrections

    path = tmp_path / "decisions.tsv"
    path.write_text(text)
    with pytest.raises(ImgfeatError, match=message):
        read_corrections(str(path))


def test_a_bad_decisions_file_is_one_line_for_the_tools(base, tmp_path, capsys):
    labels = tmp_path / "labels.tsv"
    labels.write_text("".join(f"{i}\t{'a' if j % 2 else 'b'}\n" for j, i in enumerate(base["ids"])))
    bad = tmp_path / "decisions.tsv"
    bad.write_bytes(b"id\tdecision\tnew_label\n\xff\xfe\tkeep\t\n")
    assert main(["probe", "--features", str(base["store"]), "--labels", str(labels), "--corrections", str(bad)]) == 2
    _one_line(capsys, "not UTF-8", str(bad))


# ----------------------------------------------------------------------------- serve's caches
def _collection(store, cache, **kw):
    from imgfeat.serve.collection import Collection

    return Collection(str(store), cache=str(cache), **kw)


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_a_damaged_cached_index_is_rebuilt_with_a_warning(base, tmp_path, caplog, damage):
    pytest.importorskip("fastapi")
    cache = tmp_path / "cache"
    first = _collection(base["store"], cache, index="ivf")
    want = first.knn.search(np.asarray(base["X"][:2], np.float32), 3)[1]
    index = next(first.index_cache.folder.glob("*.faiss"))
    del first  # a server that stopped: its index file is memory-mapped while it runs
    gc.collect()
    {"truncate": _truncate, "flip": lambda p: _flip(p, len(p.read_bytes()) // 2)}[damage](index)
    second = _collection(base["store"], cache, index="ivf")
    assert "is built again" in caplog.text and index.name in caplog.text
    np.testing.assert_array_equal(second.knn.search(np.asarray(base["X"][:2], np.float32), 3)[1], want)
    assert _collection(base["store"], cache, index="ivf").knn.n_ == N  # and the rebuilt one is cached again


def test_damaged_cached_neighbour_lists_and_map_are_computed_again(base, tmp_path, caplog):
    pytest.importorskip("fastapi")
    cache = tmp_path / "cache"
    first = _collection(base["store"], cache)
    first_ids = list(first.ids)
    first.start_neighbours()
    D, I = first.neighbour_lists()
    _, xy, _ = first._computed_map()
    lists = first._neighbours_files()
    I = np.array(I)
    del first, D  # a server that stopped: its lists are memory-mapped while it runs
    gc.collect()
    _flip(lists[1], len(lists[1].read_bytes()) - 3)
    _truncate(next(lists[0].parent.glob("map-tsne*.npy")))
    ids = list(first_ids)
    # the ids and their lookup kept memory-mapped beside them: a damaged one is made again, never a wrong row
    _flip(lists[0].parent / "columns.arrow", len((lists[0].parent / "columns.arrow").read_bytes()) // 2)
    _flip(lists[0].parent / "ids.hashes.npy", len((lists[0].parent / "ids.hashes.npy").read_bytes()) - 5)
    second = _collection(base["store"], cache)
    assert list(second.ids) == ids and all(second.row_of[i] == r for r, i in enumerate(ids))
    second.start_neighbours()
    D2, I2 = second.neighbour_lists()
    np.testing.assert_array_equal(np.asarray(I2), np.asarray(I))
    _, xy2, _ = second._computed_map()
    assert xy2.shape == xy.shape
    assert "computed again" in caplog.text


def test_a_damaged_thumbnail_is_made_again(base, tmp_path):
    pytest.importorskip("fastapi")
    from imgfeat.serve.media import Thumbnails

    class Pool:
        def run(self, fn, *args):
            return fn(*args)

    thumbs = Thumbnails(tmp_path / "cache", Pool(), size=32)
    path = str(base["folder"] / "im00.png")
    good = thumbs.get("im00.png", path)
    f = thumbs._file("im00.png", path)
    f.write_bytes(good[: len(good) // 2])
    assert thumbs.get("im00.png", path) == good


@pytest.fixture
def read_only_folder(tmp_path):
    """A folder on a read-only file system (a tmpfs remounted ro): writes fail with EROFS, even for root."""
    mnt = tmp_path / "ro"
    mnt.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command")
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], check=True, capture_output=True)
    except (subprocess.CalledProcessError, OSError) as exc:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {exc!r}")
    subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True, capture_output=True)
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_a_read_only_cache_means_no_caching_one_warning_and_every_page_works(base, read_only_folder, caplog):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from imgfeat.serve.app import ServeConfig, create_app

    collection = _collection(base["store"], read_only_folder)
    app = create_app(collection, ServeConfig())
    with TestClient(app, base_url="http://127.0.0.1") as client:
        assert client.get("/api/info").status_code == 200
        assert client.get("/api/neighbours/im00.png", params={"k": 3}).status_code == 200
        r = client.get("/thumb/im01.png")
        assert r.status_code == 200 and r.content[:2] == b"\xff\xd8"
        assert client.get("/api/map").status_code in (200, 202)
        client.get("/api/duplicates", params={"threshold": 0.5})  # starts the lists in the background
        collection.neighbour_lists()  # waits for them (bounded)
        r = client.get("/api/duplicates", params={"threshold": 0.5})
        assert r.status_code == 200 and "groups" in r.json()
    warnings = [r for r in caplog.records if "cannot be written" in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]


def test_a_damaged_store_is_not_served(store, capsys):
    pytest.importorskip("fastapi")
    _truncate(_shard_file(store, "npy"))
    assert main(["serve", str(store), "--port", "0"]) == 1
    _one_line(capsys, "imgfeat repair")


# ----------------------------------------------------------------------------- Lance
def test_a_tampered_lance_dataset_ends_equal_to_the_store(base, tmp_path, capsys):
    lance = pytest.importorskip("lance")
    import pyarrow as pa

    uri = tmp_path / "ds.lance"
    assert main(["export", str(base["store"]), str(uri), "--to", "lance"]) == 0
    t = lance.dataset(str(uri)).to_table()
    lance.write_dataset(t.slice(0, 1), str(uri), mode="append")  # an id appended twice
    ds = lance.dataset(str(uri))
    ids = t.column("id").to_pylist()
    ds.update({"path": "'/elsewhere.png'"}, where=f"id = '{ids[1]}'")  # a path changed
    row = t.slice(2, 1)
    vec = np.asarray(row.column("vector")[0].values.to_numpy(), np.float32).copy()
    vec[0] += 1.0
    vectors = pa.FixedSizeListArray.from_arrays(pa.array(vec), len(vec)).cast(row.schema.field("vector").type)
    changed = row.set_column(row.schema.get_field_index("vector"), "vector", vectors)
    ds = lance.dataset(str(uri))
    ds.delete(f"id = '{ids[2]}'")
    lance.write_dataset(changed, str(uri), mode="append")  # a vector changed
    capsys.readouterr()
    assert main(["export", str(base["store"]), str(uri), "--to", "lance"]) == 0
    assert "written again" in capsys.readouterr().err
    got = lance.dataset(str(uri)).to_table()
    assert sorted(got.column("id").to_pylist()) == sorted(base["ids"])
    want = {i: (p, v) for a, b, V in FeatureStore(base["store"]).iter_shards() for i, p, v in zip(a, b, V)}
    for rid, path, vector in zip(got.column("id").to_pylist(), got.column("path").to_pylist(),
                                 got.column("vector").to_pylist()):
        assert path == want[rid][0] and np.array_equal(np.asarray(vector, np.float32), want[rid][1]), rid
    version = lance.dataset(str(uri)).version
    assert main(["export", str(base["store"]), str(uri), "--to", "lance"]) == 0  # healed: nothing left to change
    assert lance.dataset(str(uri)).version == version


@pytest.mark.parametrize("where", ["store", "store/shards", "store/sub/ds.lance", "other_store", "busy",
                                   "no/parent/ds"])
def test_lance_export_checks_where_it_writes(base, tmp_path, capsys, where):
    pytest.importorskip("lance")
    shutil.copytree(base["store"], tmp_path / "store")
    shutil.copytree(base["store"], tmp_path / "other_store")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    assert main(["export", str(tmp_path / "store"), str(tmp_path / where), "--to", "lance"]) == 2
    _one_line(capsys, "OUT")
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before


def test_an_interrupted_first_lance_export_leaves_nothing(base, tmp_path, monkeypatch):
    pytest.importorskip("lance")
    from imgfeat.outputs import lance as export

    real = export.LanceExport._batches

    def interrupted(self, *args):
        for i, batch in enumerate(real(self, *args)):
            if i == 1:
                raise KeyboardInterrupt
            yield batch

    monkeypatch.setattr(export.LanceExport, "_batches", interrupted)
    with pytest.raises(KeyboardInterrupt):
        export.export_lance(base["store"], str(tmp_path / "ds.lance"), block=4)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_damage_errors_are_exit_status_1(tmp_path):
    assert issubclass(StoreDamagedError, DamagedFileError) and StoreDamagedError.exit_code == 1


def _report(tmp_path) -> Path:
    report = tmp_path / "report"
    report.mkdir()
    (report / "summary.json").write_text("{}")
    (report / "label.tsv").write_text("id\tscore\tflag\tgiven\tsuggested\nim00.png\t0.9\t1\tcat\tdog\n"
                                      "im01.png\t0.1\t0\tdog\t\n")
    return report


@pytest.mark.parametrize("content,message", [
    (b"id\tdecision\tnew_label\n\xff\xfe\tkeep\t\n", "not UTF-8"),
    (b"id\tdecision\tnew_label\nim00.png\texplode\t\n", "'explode' is not one of"),
    (b"id\tdecision\tnew_label\nim00.png\trelabel\tzzz\n", "relabels to \\['zzz'\\]"),
])
def test_the_reviews_own_decisions_file_is_checked_when_serve_starts(tmp_path, content, message):
    from imgfeat.serve.review import Review

    report, cache = _report(tmp_path), tmp_path / "cache"
    review = Review(report, cache)
    review.decide("im01.png", "relabel", "bird", confirm_new_label=True)  # a label a reviewer created
    assert Review(report, cache).decisions["im01.png"] == ("relabel", "bird")  # read back: known, accepted
    review.file.write_bytes(content)
    with pytest.raises(DamagedFileError, match=message) as err:
        Review(report, cache)
    assert str(review.file) in str(err.value) and "start the review over" in str(err.value)


def test_repair_drop_takes_a_shard_whose_images_are_gone_for_good_out_of_the_live_set(store, base, capsys):
    victim = _shard_file(store, "npy")
    _flip(victim)
    assert main(["repair", str(store), "--drop"]) == 0
    err = capsys.readouterr().err
    assert "dropped shard(s)" in err and "3 vector(s) fewer" in err, err
    assert main(["info", str(store)]) == 0
    ids, X = imgfeat.load(store)
    assert len(ids) == N - 3
    want = dict(zip(base["ids"], base["X"]))
    for rid, row in zip(ids, np.asarray(X)):
        np.testing.assert_allclose(row, want[rid], rtol=1e-5, atol=1e-6)


def test_a_done_shard_damaged_before_its_run_is_published_is_extracted_again(base, tmp_path, monkeypatch, capsys):
    """An interrupted first run: its done shards are not published yet. One of them is damaged (and another's marker
    cut short) before the rerun, which must redo them rather than publish them."""
    from imgfeat.engines import update

    store = tmp_path / "store"
    real = update.publish
    monkeypatch.setattr(update, "publish", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        imgfeat.extract(str(base["folder"]), str(store), **{**MODEL, "shard_size": 3})
    monkeypatch.setattr(update, "publish", real)
    _flip(store / "shards" / "000001.npy")
    (store / "shards" / "000002.done.json").write_text('{"shard": 2, ')
    result = imgfeat.extract(str(base["folder"]), str(store), **{**MODEL, "shard_size": 3})
    assert result.shards_written == 2 and result.shards_skipped == 2
    assert main(["info", str(store)]) == 0
    _equals_fresh(store, base)


def test_a_repair_plan_cuts_its_damaged_shards_by_their_own_sizes():
    """The plan's first shards are the repaired ones, each as large as what it re-extracts (``ShardPlan.sizes``),
    then the new records in shards of ``size``: every engine cuts them in this one place."""
    from imgfeat.data.shards import ShardPlan, cut_shards
    from imgfeat.data.sources import Record

    records = [Record(str(i), f"/x/{i}.jpg", None) for i in range(9)]
    plan = ShardPlan(size=2, offset=10, sizes=(3, 1))
    got = {shard: [r.id for r in group] for shard, group in cut_shards(records, plan)}
    assert got == {10: ["0", "1", "2"], 11: ["3"], 12: ["4", "5"], 13: ["6", "7"], 14: ["8"]}
    skipping = ShardPlan(size=2, offset=10, sizes=(3, 1), skip=frozenset({11, 13}), part=(0, 2))
    assert [s for s, g in cut_shards(records, skipping) if list(g) is not None] == [10, 12, 14]


def test_a_damaged_optimised_onnx_graph_is_made_again(tmp_path):
    """The optimised graph ONNX Runtime keeps beside an export (issue 48) is a cache: sealed, and one whose bytes
    changed is optimised again, never run."""
    torch = pytest.importorskip("torch")
    from imgfeat.models.runtimes import onnx_runner, optimized_path

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 5))
    export = tmp_path / "model.onnx"
    torch.onnx.export(model, (torch.zeros(2, 3, 2, 2),), str(export), input_names=["pixels"],
                      dynamic_axes={"pixels": {0: "n"}}, dynamo=False)
    x = np.random.default_rng(0).standard_normal((4, 3, 2, 2)).astype(np.float32)
    want = model(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(onnx_runner(export, 1)(x), want, rtol=1e-5, atol=1e-6)
    optimised = optimized_path(export)
    assert optimised.is_file()
    np.testing.assert_allclose(onnx_runner(export, 1)(x), want, rtol=1e-5, atol=1e-6)  # from the kept graph
    data = bytearray(optimised.read_bytes())
    weights = data.find(np.asarray(model[1].weight.detach().numpy()[0, :2], np.float32).tobytes())
    assert weights > 0
    data[weights + 3] ^= 0x40  # a weight changed, the graph still loads: only the seal tells
    optimised.write_bytes(bytes(data))
    np.testing.assert_allclose(onnx_runner(export, 1)(x), want, rtol=1e-5, atol=1e-6)
    from imgfeat.files import seal_broken

    assert seal_broken(optimised) is None  # optimised again, whole


def test_a_read_only_store_is_read_and_refuses_writers_in_one_line(base, tmp_path, capsys):
    """A store on a read-only mount: every reader works (its checks are remembered in the user's cache, never in the
    store); a writer (compact, extract) says so in one line and changes nothing."""
    mnt = tmp_path / "ro"
    mnt.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command")
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mnt)], check=True, capture_output=True)
    except (subprocess.CalledProcessError, OSError) as exc:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {exc!r}")
    try:
        shutil.copytree(base["store"], mnt / "store")
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True, capture_output=True)
        store = mnt / "store"
        assert main(["info", str(store)]) == 0
        _equals_fresh(store, base)
        assert main(["knn", "--features", str(store), "--k", "2", "--out", str(tmp_path / "g.npz")]) == 0
        capsys.readouterr()
        assert main(["compact", str(store)]) == 2
        _one_line(capsys, "cannot be written", "nothing was changed")
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
