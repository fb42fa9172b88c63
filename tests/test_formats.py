"""Every image a real collection holds, and never a silent skip (issue 21): HEIC/HEIF, AVIF and JPEG XL decode
like any other image (orientation applied), a folder's other files are counted and listed, never dropped
without a word."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
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
