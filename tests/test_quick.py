"""A command line that answers at once (issue 24): help, listing models and reading features never import torch,
and a small job whose model is already exported runs without torch (``engines.quick``) with the full path's
vectors."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers import PATIENCE, write_image
from imgfeat.cli import main

HEAVY = ("torch", "torchvision")


def _fresh(code: str, env: dict | None = None) -> dict:
    """Run ``code`` in a fresh interpreter; it prints one JSON line last (``HEAVY`` modules it ended with, and
    whatever else it adds)."""
    tail = f"\nimport json, sys\n_out = globals().get('out', {{}})\n_out['heavy'] = [m for m in {HEAVY!r} if m in sys.modules]\nprint(json.dumps(_out))\n"
    res = subprocess.run([sys.executable, "-c", code + tail], capture_output=True, text=True, timeout=PATIENCE,
                         env={**os.environ, **(env or {})})
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_the_command_line_and_every_help_import_no_torch():
    code = """
import argparse, contextlib, io
import imgfeat.cli
from imgfeat.cli import build_parser, main
sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
out = {"helps": 0}
for argv in [["--help"], ["models"]] + [[c, "--help"] for c in sub.choices]:
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            main(argv)
        except SystemExit as exc:
            assert exc.code == 0, argv
    out["helps"] += 1
"""
    out = _fresh(code)
    assert out["heavy"] == [] and out["helps"] > 15


def test_reading_features_imports_no_torch(tmp_path):
    from imgfeat.outputs.formats import write_blocks

    rng = np.random.default_rng(0)
    X = rng.standard_normal((40, 8)).astype(np.float32)
    ids = [f"i{i}" for i in range(40)]
    write_blocks(str(tmp_path / "f.npy"), 8, "float32", iter([(ids, ids, X)]))
    (tmp_path / "labels.tsv").write_text("".join(f"i{i}\t{'ab'[i % 2]}\n" for i in range(40)))
    code = f"""
import contextlib, io, imgfeat
from imgfeat.cli import main
ids, X = imgfeat.load({str(tmp_path / 'f.npy')!r})
out = {{"rows": len(ids)}}
d = {str(tmp_path)!r}
for argv in (["knn", "--features", d + "/f.npy", "--k", "3", "--out", d + "/g.npz"],
             ["dedup", "--features", d + "/f.npy"],
             ["pca", "fit", "--features", d + "/f.npy", "--dim", "4", "--out", d + "/p.npz"],
             ["probe", "--features", d + "/f.npy", "--labels", d + "/labels.tsv", "--C", "1", "--out-dir", d + "/probe"],
             ["search", "--features", d + "/f.npy", "--query", "i3", "--k", "2"]):
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(argv) == 0, argv
"""
    out = _fresh(code)
    assert out == {"rows": 40, "heavy": []}


def test_the_torchvision_table_is_torchvisions():
    """The registry lists torchvision's models from a table (no torchvision import); it must say what
    torchvision's DEFAULT weights say."""
    import torchvision

    from imgfeat.models.registry import TORCHVISION_URL, list_models

    specs = [s for s in list_models() if s.family == "torchvision"]
    assert len(specs) == 13
    for spec in specs:
        weights = torchvision.models.get_model_weights(spec.name).DEFAULT
        t = weights.transforms()
        assert spec.weights.url == weights.url and weights.url.startswith(TORCHVISION_URL), spec.name
        pp = spec.preprocess
        assert (pp.crop_size, pp.resize_size, pp.interpolation) == \
            ((t.crop_size[0],) * 2, t.resize_size[0], t.interpolation.value), spec.name
        assert (pp.mean, pp.std) == (tuple(t.mean), tuple(t.std)), spec.name
        assert str(weights).split(".")[-1] in spec.description, spec.name


@pytest.fixture
def quick_on(monkeypatch):
    monkeypatch.setenv("IMGFEAT_QUICK", "1")


@pytest.fixture
def mixed(tmp_path, photos) -> Path:
    """The example photos, generated images of several sizes and modes, and two bad entries, in a TSV."""
    lines = [f"{p.stem}\t{p}" for p in sorted(photos.iterdir()) if p.suffix.lower() in (".jpg", ".png")]
    for i, (size, mode) in enumerate([((300, 200), "RGB"), ((64, 480), "L"), ((500, 500), "RGBA"),
                                      ((33, 47), "P")]):
        lines.append(f"gen{i}\t{write_image(tmp_path / f'gen{i}.png', size=size, seed=i, mode=mode)}")
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    lines += [f"bad\t{tmp_path / 'bad.jpg'}", f"gone\t{tmp_path / 'gone.jpg'}"]
    tsv = tmp_path / "mixed.tsv"
    tsv.write_text("\n".join(lines) + "\n")
    return tsv


def _extract(argv: list[str]) -> None:
    assert main(["extract", *argv, "--quiet", "--batch-size", "4"]) == 0


def test_a_small_job_takes_the_quick_path_with_the_full_paths_vectors(quick_on, mixed, tmp_path, caplog):
    """First run: the full path (torch), which records its export. Second run: the quick path, in a fresh
    interpreter that never imports torch, with the same vectors (1e-6), ids, error rows and summary."""
    _extract(["--data", str(mixed), "--out", str(tmp_path / "full.h5"), "--l2", "--relu"])
    records = list((Path(os.environ["IMGFEAT_CACHE"]) / "quick").glob("*.json"))
    assert records, "the full path records its export for the quick path"
    code = f"""
import logging, sys
from imgfeat.cli import main
logging.basicConfig(level=logging.DEBUG, stream=sys.stderr)
assert main(["extract", "--data", {str(mixed)!r}, "--out", {str(tmp_path / 'quick.h5')!r}, "--l2", "--relu",
             "--quiet", "--batch-size", "4"]) == 0
"""
    assert _fresh(code)["heavy"] == []
    import imgfeat

    ids_full, X_full = imgfeat.load(tmp_path / "full.h5")
    ids_quick, X_quick = imgfeat.load(tmp_path / "quick.h5")
    assert ids_quick == ids_full and len(ids_full) == 10
    np.testing.assert_allclose(X_quick, X_full, atol=1e-6, rtol=0)
    errors = [(tmp_path / f"{n}.h5.errors.tsv").read_text() for n in ("full", "quick")]
    assert errors[0].replace("full.h5", "") == errors[1].replace("quick.h5", "") and errors[0].count("\n") >= 2

    # in this process too: the result says it took the quick path
    with caplog.at_level(logging.DEBUG, logger="imgfeat.engines.quick"):
        result = imgfeat.extract(str(mixed), relu=True, l2=True, batch_size=4)
    assert result.backend_report.get("quick") is True and "quick path" in caplog.text
    np.testing.assert_allclose(result.features, X_full, atol=1e-6, rtol=0)
    assert result.n_failed == 2 and result.ids == ids_full


@pytest.mark.parametrize("change, why", [
    (["--backend", "torch"], "--backend torch"),
    (["--precision", "bf16"], "--precision bf16"),
    (["--out", "STORE"], "feature store"),
    ("env", "IMGFEAT_QUICK=0"),
    ("touch", "weights file changed"),
    ("many", "more than"),
])
def test_what_the_quick_path_cannot_serve_takes_the_full_path_and_says_why(quick_on, mixed, tmp_path, caplog,
                                                                         monkeypatch, change, why):
    import imgfeat
    import imgfeat.engines.quick as quick

    _extract(["--data", str(mixed), "--out", str(tmp_path / "first.npy")])
    argv = ["--data", str(mixed), "--out", str(tmp_path / "second.npy")]
    if change == "env":
        monkeypatch.setenv("IMGFEAT_QUICK", "0")
    elif change == "touch":  # the weights file's mtime changes: its hash must be taken again, in torch
        record = json.loads(next((Path(os.environ["IMGFEAT_CACHE"]) / "quick").glob("*.json")).read_text())
        path, _, mtime = record["files"][0]
        monkeypatch.setattr(quick, "_stat", lambda p: [p, os.stat(p).st_size, mtime + 1])
    elif change == "many":
        monkeypatch.setattr(quick, "QUICK_MAX", 3)
    elif change[0] == "--out":
        argv[-1] = str(tmp_path / "store")
    else:
        argv += change
    with caplog.at_level(logging.DEBUG, logger="imgfeat.engines.quick"):
        if change == ["--precision", "bf16"]:
            argv += ["--min-fidelity", "0"]
        _extract(argv)
    assert "full path (torch)" in caplog.text and why in caplog.text, caplog.text
    assert "quick path:" not in caplog.text
    del imgfeat


def test_a_store_rerun_and_image_queries_need_no_torch(quick_on, photos, tmp_path):
    """A store run records its export by the vectors' identity: a rerun with nothing new, a search by image and
    extract_like then run without torch, and a query image embeds to the store's own vector for that image."""
    import imgfeat

    store = tmp_path / "store"
    _extract(["--data", str(photos), "--out", str(store)])
    ids, X = imgfeat.load(store)
    photo = str(sorted(photos.glob("*.jpg"))[0])
    own = ids.index(next(i for i in ids if Path(photo).name in i or Path(photo).stem in i))
    code = f"""
import contextlib, io, json
import imgfeat
from imgfeat.api import extract_like
from imgfeat.cli import main
assert main(["extract", "--data", {str(photos)!r}, "--out", {str(store)!r}, "--quiet"]) == 0
buf = io.StringIO()
with contextlib.redirect_stdout(buf):
    assert main(["search", "--features", {str(store)!r}, "--query", {photo!r}, "--k", "2", "--json"]) == 0
out = {{"search": json.loads(buf.getvalue()), "vector": extract_like({str(store)!r}, [{photo!r}])[0].tolist()}}
# serve's uploads go through the same chooser (issue 30): the recorded export, no torch
import urllib.request
from imgfeat.serve.app import ServeConfig
from imgfeat.serve.collection import Collection
from imgfeat.serve.server import Background
with Background(Collection({str(store)!r}, cache={str(tmp_path / "serve-cache")!r}), ServeConfig(port=0)) as srv:
    req = urllib.request.Request(srv.url + "api/search/image?k=1", data=open({photo!r}, "rb").read(),
                                 headers={{"Content-Type": "image/jpeg"}})
    out["serve"] = json.loads(urllib.request.urlopen(req, timeout=600).read())
"""
    out = _fresh(code)
    assert out["heavy"] == []
    assert out["serve"]["results"][0]["id"] == ids[own] and out["serve"]["results"][0]["score"] > 0.9999
    np.testing.assert_allclose(np.array(out["vector"], np.float32), X[own], atol=1e-6, rtol=0)
    top = out["search"]["queries"][photo][0]
    assert top["id"] == ids[own] and top["score"] > 0.9999
