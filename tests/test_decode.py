"""Decode stage: modes, orientation, draft mode, geometry, and every bad-file reason."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image
from torchvision import transforms as T

from imgfeat.data.decode import decode, to_rgb
from imgfeat.models.preprocess import Preprocess

from helpers import write_image

PP = Preprocess(crop_size=(32, 32), resize_size=40)


@pytest.mark.parametrize("mode,value,expected", [
    ("1", 1, (255, 255, 255)),
    ("L", 128, (128, 128, 128)),
    ("I;16", 65535, (255, 255, 255)),
    ("I;16", 257 * 100, (100, 100, 100)),
    ("I", 200, (200, 200, 200)),
    ("I", 65535, (255, 255, 255)),
    ("F", 0.5, (128, 128, 128)),
    ("F", 200.0, (200, 200, 200)),
    ("CMYK", (0, 0, 0, 0), (255, 255, 255)),
    ("CMYK", (0, 255, 255, 0), (255, 0, 0)),
    ("RGBA", (10, 20, 30, 255), (10, 20, 30)),
    ("RGBA", (10, 20, 30, 0), (255, 255, 255)),
    ("LA", (50, 255), (50, 50, 50)),
    ("LA", (50, 0), (255, 255, 255)),
])
def test_every_mode_becomes_correct_rgb(mode, value, expected):
    img = Image.new(mode, (4, 4), value)
    out = to_rgb(img)
    assert out.mode == "RGB"
    assert out.getpixel((1, 1)) == expected


def test_palette_with_transparency_composites_on_white(tmp_path):
    img = Image.new("P", (8, 8), 0)
    img.putpalette([0, 0, 255] + [255, 0, 0] * 255)
    img.putpixel((0, 0), 1)
    img.info["transparency"] = 0  # palette index 0 (blue) is transparent
    path = tmp_path / "t.png"
    img.save(path, transparency=0)
    rgb = to_rgb(Image.open(path))
    assert rgb.getpixel((5, 5)) == (255, 255, 255)
    assert rgb.getpixel((0, 0)) == (255, 0, 0)


def test_animated_gif_uses_first_frame(tmp_path):
    frames = [Image.new("RGB", (50, 50), c) for c in ((255, 0, 0), (0, 0, 255))]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    arr = decode(str(path), PP)
    assert isinstance(arr, np.ndarray)
    assert arr[..., 0].mean() > 200 and arr[..., 2].mean() < 50


def test_exif_orientation_is_applied(tmp_path):
    upright = Image.fromarray(np.random.default_rng(1).integers(0, 256, (60, 90, 3), dtype=np.uint8))
    upright.save(tmp_path / "upright.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    upright.transpose(Image.Transpose.ROTATE_90).save(tmp_path / "rotated.png", exif=exif)
    a = decode(str(tmp_path / "upright.png"), PP)
    b = decode(str(tmp_path / "rotated.png"), PP)
    assert np.array_equal(a, b)


def test_geometry_matches_torchvision_transforms(photos):
    pp = Preprocess(crop_size=(224, 224), resize_size=256, interpolation="bilinear")
    ref = T.Compose([T.Resize(256), T.CenterCrop(224), T.PILToTensor()])
    for name in ("chelsea.jpg", "camera.png"):
        ours = decode(str(photos / name), pp, draft=False)
        theirs = ref(Image.open(photos / name).convert("RGB")).permute(1, 2, 0).numpy()
        assert np.array_equal(ours, theirs), name


def test_small_images_are_padded_not_rejected(tmp_path):
    path = write_image(tmp_path / "tiny.png", size=(3, 2))
    arr = decode(str(path), PP)
    assert arr.shape == (32, 32, 3)


def test_draft_mode_is_close_to_full_decode(tmp_path, photos):
    big = Image.open(photos / "chelsea.jpg").resize((2400, 1800), Image.Resampling.BICUBIC)
    path = tmp_path / "big.jpg"
    big.save(path, quality=92)
    pp = Preprocess(crop_size=(224, 224), resize_size=256)
    fast = decode(str(path), pp, draft=True).astype(np.float32)
    full = decode(str(path), pp, draft=False).astype(np.float32)
    assert fast.shape == full.shape == (224, 224, 3)
    assert np.abs(fast - full).mean() < 3.0  # DCT-domain downscale then antialiased resize


def _bad_files(tmp_path):
    good = write_image(tmp_path / "good.jpg", size=(80, 60))
    trunc = tmp_path / "truncated.jpg"
    trunc.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("this is not an image\n")
    (tmp_path / "folder.jpg").mkdir()
    write_image(tmp_path / "huge.png", size=(300, 300))
    os.mkfifo(tmp_path / "fifo.jpg")  # opening it would block forever
    return {
        "missing": tmp_path / "nope.jpg",
        "empty": tmp_path / "empty.jpg",
        "truncated": trunc,
        "not an image": tmp_path / "text.jpg",
        "unreadable": tmp_path / "folder.jpg",
        "too large": tmp_path / "huge.png",
        "unreadable: not a regular file": tmp_path / "fifo.jpg",
    }


def test_bad_files_become_reasons(tmp_path):
    for kind, path in _bad_files(tmp_path).items():
        result = decode(str(path), PP, max_pixels=200 * 200)
        assert isinstance(result, str), kind
        assert result.startswith(kind), (kind, result)
