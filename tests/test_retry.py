"""A valid image must not get an error row because of what its decode worker decoded before it: a failed
decode is tried once more alone in a fresh process, and the error row of a file that fails there too says
so (issue 13). The poisoning is simulated by a tiny Pillow plugin registered in this process: decoding a
POISON file breaks PNG loading for the rest of the process, as decoding Pillow 13.0.0's
``200x32_p_bl_raw_origin.tga`` breaks ``pillow.ico``."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile

import numpy as np
import pytest
from helpers import PATIENCE
from PIL import Image, ImageFile, PngImagePlugin

import imgfeat

MAGIC = b"POISON!"
_state = {"active": False}


class _PoisonFile(ImageFile.ImageFile):
    format = "POISON"
    format_description = "test image that breaks PNG loading in its process"

    def _open(self) -> None:
        self.fp.read(len(MAGIC))
        self._mode, self._size = "L", (8, 8)
        self.tile = [ImageFile._Tile("raw", (0, 0, 8, 8), len(MAGIC), ("L", 0, 1))]
        _state["active"] = True  # state left behind in the process, like the TGA's


@pytest.fixture
def poison(monkeypatch):
    original = PngImagePlugin.PngImageFile._open

    def png_open(self):
        if _state["active"]:
            raise OSError("cannot load this image")
        return original(self)

    monkeypatch.setattr(PngImagePlugin.PngImageFile, "_open", png_open)
    Image.register_open(_PoisonFile.format, _PoisonFile, lambda prefix: prefix[:len(MAGIC)] == MAGIC)
    _state["active"] = False
    yield
    _state["active"] = False
    Image.OPEN.pop(_PoisonFile.format, None)
    if _PoisonFile.format in Image.ID:
        Image.ID.remove(_PoisonFile.format)


@pytest.fixture
def files(tmp_path, photos):
    d = tmp_path / "imgs"
    d.mkdir()
    (d / "a_poison.bmp").write_bytes(MAGIC + bytes(range(64)))
    Image.open(photos / "chelsea.jpg").save(d / "b_valid.png")
    (d / "c_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    return d


def _extract(data, out=None, **kw):
    return imgfeat.extract(data, out, **{"model": "squeezenet1_1", "backend": "torch", **kw})


@pytest.mark.timing
@pytest.mark.parametrize("workers", [0, 2])
def test_a_file_broken_by_an_earlier_one_is_recovered_in_a_fresh_process(poison, files, workers):
    alone = _extract([("b", str(files / "b_valid.png"))], workers=0)
    records = [("a", str(files / "a_poison.bmp")), ("b", str(files / "b_valid.png")),
               ("c", str(files / "c_broken.png"))]
    _state["active"] = False
    res = _extract(records, workers=workers, batch_size=8)
    assert res.ids == ["a", "b"]  # in input order, the recovered one included
    np.testing.assert_allclose(res.features[1], alone.features[0], rtol=1e-5, atol=1e-5)
    assert res.n_retried == 2 and res.n_recovered == 1
    (rid, _, reason), = res.errors
    # the worker (poisoned) and the fresh process (a broken file) failed differently: the row names both
    assert rid == "c" and reason.startswith("not an image") and "alone in a fresh process" in reason
    assert "in the decode worker: unreadable: OSError: cannot load this image" in reason
    # the order of the input no longer decides: b first (not poisoned yet) gives the same vector
    _state["active"] = False
    res2 = _extract(list(reversed(records)), workers=workers, batch_size=8)
    np.testing.assert_allclose(res2.features[res2.ids.index("b")], alone.features[0], rtol=1e-5, atol=1e-5)


def test_failures_another_process_cannot_change_are_not_retried(files, tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    res = _extract([("gone", str(tmp_path / "nope.png")), ("empty", str(tmp_path / "empty.png"))], workers=0)
    assert res.n_retried == 0 and [e[2].split(":")[0] for e in res.errors] == ["missing", "empty"]


def test_a_store_records_the_second_attempt(poison, files, tmp_path):
    _state["active"] = False
    res = _extract(str(files), str(tmp_path / "store"), workers=0, shard_size=2, quiet=True)
    ids, _ = imgfeat.load(tmp_path / "store")
    assert ids == ["a_poison.bmp", "b_valid.png"] and res.n_recovered == 1
    rows = (tmp_path / "store" / "shards" / "000001.errors.tsv").read_text()
    assert rows.startswith("c_broken.png\t") and "alone in a fresh process" in rows
    assert res.errors_path and res.n_retried == 2


@pytest.mark.slow
def test_the_real_pillow_pair(tmp_path):
    """Pillow's own corpus: after 200x32_p_bl_raw_origin.tga, pillow.ico fails in the same process (Pillow
    13.0.0 registers TgaImagePlugin first and the TGA plugin, which has no magic number, claims the icon)."""
    import PIL

    sdist = tmp_path / "sdist"
    try:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-binary", ":all:", "--no-deps",
                        f"pillow=={PIL.__version__}", "-d", str(sdist)], check=True, timeout=PATIENCE,
                       capture_output=True)
    except (subprocess.SubprocessError, OSError) as exc:
        pytest.skip(f"cannot fetch Pillow {PIL.__version__}'s source distribution from PyPI: {exc}")
    archive = next(sdist.glob("*.tar.gz"))
    names = {"200x32_p_bl_raw_origin.tga": "a.tga", "pillow.ico": "b.ico"}
    with tarfile.open(archive) as tf:
        for member in tf:
            base = member.name.rsplit("/", 1)[-1]
            if "/Tests/images/" in member.name and base in names:
                (tmp_path / names[base]).write_bytes(tf.extractfile(member).read())
    if len(list(tmp_path.glob("[ab].*"))) < 2:
        pytest.skip(f"Pillow {PIL.__version__}'s sdist has no Tests/images/{{{', '.join(names)}}}")
    probe = subprocess.run([sys.executable, "-c", "from PIL import Image; import sys\n"
                            f"Image.open({str(tmp_path / 'a.tga')!r}).load()\n"
                            f"try:\n Image.open({str(tmp_path / 'b.ico')!r}).load(); print('ok')\n"
                            "except OSError: print('poisoned')"], capture_output=True, text=True, timeout=PATIENCE)
    # in a new interpreter: Pillow's state (which plugins it has loaded) is part of the bug
    script = ("import json, imgfeat\n"
              f"r = imgfeat.extract([('tga', {str(tmp_path / 'a.tga')!r}), ('ico', {str(tmp_path / 'b.ico')!r})], "
              "model='squeezenet1_1', backend='torch', workers=0)\n"
              "print(json.dumps({'ids': r.ids, 'retried': r.n_retried, 'recovered': r.n_recovered, "
              "'errors': r.errors, 'ico': r.features[-1].tolist()}))")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=PATIENCE)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["ids"] == ["tga", "ico"], res["errors"]
    alone = _extract([("ico", str(tmp_path / "b.ico"))], workers=0)
    np.testing.assert_allclose(res["ico"], alone.features[0], rtol=1e-5, atol=1e-5)
    # imgfeat registers every Pillow plugin up front (data.decode), which avoids this pair; had the icon failed
    # anyway, the retry would have recovered it: whatever was retried was recovered
    assert res["retried"] == res["recovered"]
    assert probe.stdout.strip() in ("ok", "poisoned")


def test_a_file_broken_in_every_process_says_it_failed_twice(files):
    res = _extract([("c", str(files / "c_broken.png"))], workers=1)
    (_, _, reason), = res.errors
    assert reason == "not an image: cannot identify image file (failed twice: in a decode worker, then alone in " \
                     "a fresh process)"
