"""Every image a real collection holds, and never a silent skip (issue 21): HEIC/HEIF, AVIF and JPEG XL decode
like any other image (orientation applied), a folder's other files are counted and listed, never dropped
without a word."""

from __future__ import annotations

import importlib.util
import os
import shutil

import numpy as np
import pytest
from helpers import die_before_publishing
from PIL import Image, ImageOps

import imgfeat
from imgfeat.cli import main

MODEL = dict(model="squeezenet1_1", backend="torch", workers=0, quiet=True)
HAS_JXL = importlib.util.find_spec("pillow_jxl") is not None


def _pixels(path) -> np.ndarray:
    """What imgfeat must see in ``path``: its decoded pixels, upright."""
    import imgfeat.data.formats  # noqa: F401 - the plugins

    with Image.open(path) as im:
        return np.asarray(ImageOps.exif_transpose(im).convert("RGB"))


@pytest.fixture
def phone_folder(tmp_path, photos):
    src = Image.open(photos / "coffee.jpg")
    folder = tmp_path / "phone"
    folder.mkdir()
    src.save(folder / "cat.jpg", quality=92)
    import imgfeat.data.formats  # noqa: F401

    src.save(folder / "cat.heic", quality=90)
    src.save(folder / "cat.avif", quality=90)
    if HAS_JXL:
        src.save(folder / "cat.jxl", quality=90, lossless_jpeg=False)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    src.save(folder / "rotated.heic", quality=95, exif=exif.tobytes())
    (folder / "clip.mov").write_bytes(b"\0\0\0\x18ftypqt  " + bytes(200))
    (folder / "notes.txt").write_text("not a photo")
    return folder


def test_phone_formats_decode_like_the_same_pixels_as_png(phone_folder, tmp_path):
    res = imgfeat.extract(str(phone_folder), **MODEL)
    expected = {"cat.jpg", "cat.heic", "cat.avif", "rotated.heic"} | ({"cat.jxl"} if HAS_JXL else set())
    assert set(res.ids) == expected and res.n_failed == 0
    got = dict(zip(res.ids, res.features))
    pngs = []
    for name in sorted(expected):
        png = tmp_path / "png" / f"{name}.png"
        png.parent.mkdir(exist_ok=True)
        Image.fromarray(_pixels(phone_folder / name)).save(png)
        pngs.append((name, str(png)))
    ref = imgfeat.extract(pngs, **MODEL)
    for name, vec in zip(ref.ids, ref.features):
        np.testing.assert_allclose(got[name], vec, atol=1e-5, err_msg=name)
    upright = _pixels(phone_folder / "rotated.heic")
    assert upright.shape[:2] == (320, 213)  # the orientation was applied, as for a JPEG
    assert "2 skipped (not images: .mov 1, .txt 1)" in res.summary()
    assert res.skipped == {".mov": 1, ".txt": 1}


def test_skipped_files_are_listed_when_asked_and_recorded_by_a_store(phone_folder, tmp_path, capsys):
    log = tmp_path / "skipped.tsv"
    store = tmp_path / "store"
    assert main(["extract", "--data", str(phone_folder), "--out", str(store), "--model", "squeezenet1_1",
                 "--backend", "torch", "--skipped-log", str(log)]) == 0
    err = capsys.readouterr().err
    assert "2 skipped (not images: .mov 1, .txt 1)" in err
    lines = sorted(log.read_text().splitlines())
    assert lines == [f"{phone_folder / 'clip.mov'}\tskipped: not an image extension",
                     f"{phone_folder / 'notes.txt'}\tskipped: not an image extension"]
    import json

    assert json.loads((store / "manifest.json").read_text())["skipped"] == {".mov": 1, ".txt": 1}
    # issue 29.13: info shows them
    assert main(["info", str(store)]) == 0
    assert "skipped   2 skipped (not images: .mov 1, .txt 1)" in capsys.readouterr().out
    assert main(["info", str(store), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["skipped"] == {".mov": 1, ".txt": 1}


def test_raw_files_get_their_own_reason_and_the_summary_says_skipped_once(tmp_path, photos, capsys):
    """Issue 29.14."""
    folder = tmp_path / "camera"
    folder.mkdir()
    shutil.copy(photos / "chelsea.jpg", folder / "a.jpg")
    (folder / "IMG_0001.CR2").write_bytes(b"II*\0" + bytes(100))
    (folder / "notes.txt").write_text("x")
    log = tmp_path / "skipped.tsv"
    assert main(["extract", "--data", str(folder), "--out", str(tmp_path / "f.npy"), "--model", "squeezenet1_1",
                 "--backend", "torch", "--skipped-log", str(log)]) == 0
    err = capsys.readouterr().err
    assert err.count("2 skipped (not images:") == 1, err
    lines = dict(line.split("\t") for line in log.read_text().splitlines())
    assert lines[str(folder / "IMG_0001.CR2")].startswith("skipped: camera RAW, not read")
    assert lines[str(folder / "notes.txt")] == "skipped: not an image extension"


def test_a_folder_link_is_followed_once(tmp_path, photos, capsys):
    """Issue 29.4: a link back up (loop -> ..) and a second link to a walked folder are not walked again."""
    folder = tmp_path / "linked"
    (folder / "sub").mkdir(parents=True)
    shutil.copy(photos / "chelsea.jpg", folder / "chelsea.jpg")
    shutil.copy(photos / "coffee.jpg", folder / "sub" / "coffee.jpg")
    os.symlink("..", folder / "sub" / "up")  # back up to the folder: a loop
    os.symlink(".", folder / "self")  # the folder itself
    os.symlink("sub", folder / "again")  # a second way to sub/: sorted first, so walked through it once
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.copy(photos / "rocket.jpg", outside / "rocket.jpg")
    os.symlink(outside, folder / "elsewhere")  # a link to a folder not walked otherwise: followed
    log = tmp_path / "skipped.tsv"
    assert main(["extract", "--data", str(folder), "--out", str(tmp_path / "f.tsv"), "--model", "squeezenet1_1",
                 "--backend", "torch", "--skipped-log", str(log)]) == 0
    err = capsys.readouterr().err
    ids, _ = imgfeat.load(str(tmp_path / "f.tsv"))
    assert sorted(ids) == ["again/coffee.jpg", "chelsea.jpg", "elsewhere/rocket.jpg"]
    assert "0 failed" in err and "3 folder link(s) not followed" in err and "not images" not in err
    skipped = sorted(line.split("\t")[0] for line in log.read_text().splitlines())
    assert skipped == [str(folder / p) + os.sep for p in ("again/up", "self", "sub")]


def test_the_walk_takes_what_the_decoders_claim():
    from imgfeat.data.formats import image_extensions

    exts = image_extensions()
    assert {".jpg", ".png", ".heic", ".heif", ".avif", ".webp", ".tif"} <= exts
    assert HAS_JXL is (".jxl" in exts)
    assert not exts & {".h5", ".mpg", ".mov", ".txt", ".npy"}  # stubs, video, imgfeat's own outputs


def test_a_broken_heic_is_an_error_row(tmp_path, photos):
    (tmp_path / "broken.heic").write_bytes(b"\0\0\0\x18ftypheic" + bytes(100))
    Image.open(photos / "coffee.jpg").save(tmp_path / "ok.png")
    res = imgfeat.extract(str(tmp_path), **MODEL)
    assert res.ids == ["ok.png"] and [e[0] for e in res.errors] == ["broken.heic"]


def test_serve_thumbnails_and_uploads_read_heic(phone_folder):
    from imgfeat.data.decode import decode_bytes, thumbnail
    from imgfeat.models.preprocess import Preprocess

    thumb = thumbnail(str(phone_folder / "rotated.heic"), 64)
    assert isinstance(thumb, bytes)
    import io

    assert Image.open(io.BytesIO(thumb)).size == (43, 64)  # upright
    pixels = decode_bytes((phone_folder / "cat.heic").read_bytes(), Preprocess(crop_size=(32, 32), resize_size=32))
    assert not isinstance(pixels, str) and pixels.shape[-1] == 3


# ----------------------------------------------------------------------------- image bytes in tables
def _hf_table(photos, n_bad: int = 0):
    import pyarrow as pa

    names = sorted(p.name for p in photos.glob("*.jpg"))
    cells = [{"bytes": (photos / n).read_bytes(), "path": n} for n in names]
    ids = [n.split(".")[0] for n in names]
    if n_bad:
        cells.append({"bytes": b"\xff\xd8 not really a jpeg", "path": "bad.jpg"})
        ids.append("bad")
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    return pa.table({"id": pa.array(ids), "image": pa.array(cells, image_type),
                     "label": pa.array(list(range(len(ids))))}), names


@pytest.fixture
def reference_vectors(photos):
    res = imgfeat.extract(str(photos), **MODEL)
    return {rid.split(".")[0]: v for rid, v in zip(res.ids, res.features) if rid.endswith(".jpg")}


def test_hf_parquet_with_image_structs(tmp_path, photos, reference_vectors):
    import pyarrow.parquet as pq

    table, names = _hf_table(photos, n_bad=1)
    pq.write_table(table, tmp_path / "train.parquet", row_group_size=2)
    res = imgfeat.extract(str(tmp_path / "train.parquet"), **MODEL)
    assert res.ids == [n.split(".")[0] for n in names]
    for rid, vec in zip(res.ids, res.features):
        np.testing.assert_allclose(vec, reference_vectors[rid], rtol=1e-5, atol=1e-5, err_msg=rid)
    assert [e[0] for e in res.errors] == ["bad"]  # a corrupt bytes cell is an error row for its id
    assert "(the cell's image: bad.jpg)" in res.errors[0][2]  # issue 29.15: which image the cell held


def test_a_binary_column_a_glob_of_shards_and_ids_by_row(tmp_path, photos, reference_vectors):
    import pyarrow as pa
    import pyarrow.parquet as pq

    names = sorted(p.name for p in photos.glob("*.jpg"))
    for k, chunk in enumerate((names[:3], names[3:])):
        pq.write_table(pa.table({"jpg": pa.array([(photos / n).read_bytes() for n in chunk], pa.binary()),
                                 "caption": pa.array(chunk)}), tmp_path / f"{k:05d}.parquet")
    res = imgfeat.extract(str(tmp_path / "*.parquet"), **MODEL)
    assert res.ids == ["00000.parquet:0", "00000.parquet:1", "00000.parquet:2", "00001.parquet:0",
                       "00001.parquet:1"]
    for rid, name in zip(res.ids, names):
        np.testing.assert_allclose(res.features[res.ids.index(rid)], reference_vectors[name.split(".")[0]],
                                   atol=1e-5)
    named = imgfeat.extract(str(tmp_path / "*.parquet"), image_column="jpg", id_column="caption", **MODEL)
    assert named.ids == names


def test_a_datasets_arrow_folder(tmp_path, photos, reference_vectors):
    import json

    import pyarrow as pa

    table, names = _hf_table(photos)
    folder = tmp_path / "saved"
    folder.mkdir()
    with pa.OSFile(str(folder / "data-00000-of-00001.arrow"), "wb") as sink:  # what save_to_disk writes
        with pa.ipc.new_stream(sink, table.schema) as writer:
            for batch in table.to_batches(max_chunksize=2):
                writer.write_batch(batch)
    (folder / "state.json").write_text(json.dumps({"_data_files": [{"filename": "data-00000-of-00001.arrow"}]}))
    (folder / "dataset_info.json").write_text("{}")
    res = imgfeat.extract(str(folder), **MODEL)
    assert res.ids == [n.split(".")[0] for n in names]
    for rid, vec in zip(res.ids, res.features):
        np.testing.assert_allclose(vec, reference_vectors[rid], atol=1e-5)


def test_a_table_without_an_image_column_names_its_columns(tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"name": ["a"], "score": [1.0]}), tmp_path / "t.parquet")
    assert main(["extract", "--data", str(tmp_path / "t.parquet"), "--out", str(tmp_path / "f.npy")]) == 2
    err = capsys.readouterr().err
    assert "has columns ['name', 'score']" in err and "--image-column" in err
    assert main(["extract", "--data", str(tmp_path / "t.parquet"), "--out", str(tmp_path / "f.npy"),
                 "--image-column", "photo"]) == 2
    assert "--image-column must be a column of" in capsys.readouterr().err


def test_a_store_over_parquet_bytes_resumes_after_losing_a_shard(tmp_path, photos, reference_vectors):
    import pyarrow.parquet as pq

    table, names = _hf_table(photos)
    pq.write_table(table, tmp_path / "train.parquet", row_group_size=2)
    store = tmp_path / "store"
    with die_before_publishing():
        imgfeat.extract(str(tmp_path / "train.parquet"), str(store), shard_size=2, **MODEL)
    (store / "shards" / "000001.done.json").unlink()
    again = imgfeat.extract(str(tmp_path / "train.parquet"), str(store), shard_size=2, **MODEL)
    assert (again.shards_written, again.shards_skipped) == (1, 2)
    ids, X = imgfeat.load(store)
    assert ids == [n.split(".")[0] for n in names]
    for rid, vec in zip(ids, np.asarray(X)):
        np.testing.assert_allclose(vec, reference_vectors[rid], atol=1e-5)
    from imgfeat.data.decode import thumbnail

    paths = imgfeat.outputs.formats.read_paths(store)
    assert isinstance(thumbnail(paths[ids[0]], 64), bytes)  # serve's thumbnails read the cell the same way


def test_archives_count_their_members_that_are_not_images(tmp_path, photos):
    import tarfile
    import zipfile

    (tmp_path / "caption.txt").write_text("a cat")
    with tarfile.open(tmp_path / "000000.tar", "w") as tf:
        tf.add(photos / "chelsea.jpg", arcname="000.jpg")
        tf.add(tmp_path / "caption.txt", arcname="000.txt")
        tf.add(tmp_path / "caption.txt", arcname="000.json")
    res = imgfeat.extract(str(tmp_path / "000000.tar"), **MODEL)
    assert res.ids == ["000"] and res.skipped == {".txt": 1, ".json": 1}
    with zipfile.ZipFile(tmp_path / "a.zip", "w") as zf:
        zf.write(photos / "coffee.jpg", "x/1.jpg")
        zf.write(tmp_path / "caption.txt", "x/1.txt")
    assert imgfeat.extract(str(tmp_path / "a.zip"), **MODEL).skipped == {".txt": 1}
