"""The whole pipeline through ``imgfeat.extract`` and the ``imgfeat`` command."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import imgfeat
from imgfeat import InvalidParameterError
from imgfeat.models.backbone import FeatureModel

from helpers import PATIENCE, write_image

ROOT = Path(__file__).resolve().parents[1]


def test_results_do_not_depend_on_batch_size_or_workers(photo_dir):
    runs = {(bs, w): imgfeat.extract(str(photo_dir), batch_size=bs, backend="torch", workers=w) for bs, w in [(1, 0), (7, 0), (2, 2)]}
    ref = runs[(1, 0)]
    assert ref.ids == sorted(p.name for p in photo_dir.iterdir())
    for key, r in runs.items():
        assert r.ids == ref.ids, key
        assert np.abs(r.features - ref.features).max() <= 1e-5, key


def test_bad_files_get_error_rows_and_their_batch_mates_get_vectors(tmp_path, photos):
    d = tmp_path / "mixed"
    d.mkdir()
    for name in ("chelsea.jpg", "coffee.jpg", "camera.png"):
        shutil.copy(photos / name, d / name)
    good = d / "coffee.jpg"
    (d / "empty.jpg").write_bytes(b"")
    (d / "text.png").write_text("no pixels here")
    (d / "truncated.jpg").write_bytes(good.read_bytes()[:2000])
    write_image(d / "huge.png", size=(1200, 1000))
    tsv = tmp_path / "list.tsv"
    names = ["chelsea.jpg", "empty.jpg", "coffee.jpg", "missing.jpg", "text.png", "truncated.jpg",
             "huge.png", "camera.png"]
    tsv.write_text("".join(f"id{i}\tmixed/{n}\n" for i, n in enumerate(names)) + "bad line without tab\n")
    out = tmp_path / "f.h5"
    result = imgfeat.extract(str(tsv), out, batch_size=16, backend="torch", workers=0, max_pixels=1_000_000)
    assert (result.n_done, result.n_failed) == (3, 6)
    ids, mat = imgfeat.load(out)
    assert ids == ["id0", "id2", "id7"]
    rows = [line.split("\t") for line in Path(f"{out}.errors.tsv").read_text().splitlines()]
    reasons = {r[0]: r[2].split(":")[0] for r in rows}
    assert reasons == {"id1": "empty", "id3": "missing", "id4": "not an image", "id5": "truncated",
                       "id6": "too large", "bad line without tab": "bad input line 9"}
    alone = imgfeat.extract([("id2", str(good))], backend="torch", workers=0)
    np.testing.assert_allclose(mat[1], alone.features[0], atol=1e-5)


def test_exif_rotated_photo_gives_the_upright_vector(tmp_path, photos):
    upright = Image.open(photos / "coffee.jpg")
    upright.save(tmp_path / "upright.png")
    exif = Image.Exif()
    exif[0x0112] = 8  # "rotate 90 CCW to display"
    upright.transpose(Image.Transpose.ROTATE_270).save(tmp_path / "rotated.png", exif=exif)
    r = imgfeat.extract([str(tmp_path / "upright.png"), str(tmp_path / "rotated.png")], backend="torch", workers=0)
    assert np.abs(r.features[0] - r.features[1]).max() <= 1e-5


def test_relu_l2_and_storage_dtype(photo_dir):
    raw = imgfeat.extract(str(photo_dir), model="squeezenet1_1", backend="torch", workers=0, layer="classifier.1")
    both = imgfeat.extract(str(photo_dir), model="squeezenet1_1", backend="torch", workers=0, layer="classifier.1",
                           relu=True, l2=True, dtype="float16")
    assert (raw.features < 0).any()  # conv10 before its ReLU
    expected = np.maximum(raw.features, 0)
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    assert both.features.dtype == np.float16
    np.testing.assert_allclose(both.features.astype(np.float32), expected, atol=2e-3)
    np.testing.assert_allclose(np.linalg.norm(both.features.astype(np.float32), axis=1), 1.0, atol=2e-3)


def test_last_partial_batch_and_start_stop(photo_dir):
    everything = imgfeat.extract(str(photo_dir), batch_size=4, backend="torch", workers=2)
    assert len(everything.ids) == 6
    block = imgfeat.extract(str(photo_dir), batch_size=4, backend="torch", workers=0, start=2, stop=5)
    assert block.ids == everything.ids[2:5]
    np.testing.assert_allclose(block.features, everything.features[2:5], atol=1e-5)


def test_crash_leaves_no_file_under_the_final_name(photo_dir, tmp_path, monkeypatch):
    out = tmp_path / "f.npy"
    calls = {"n": 0}
    real_forward = FeatureModel.forward

    def failing_forward(self, x):
        calls["n"] += 1
        if calls["n"] > 2:  # the dry run, one batch, then fail
            raise RuntimeError("simulated crash")
        return real_forward(self, x)

    monkeypatch.setattr(FeatureModel, "forward", failing_forward)
    with pytest.raises(RuntimeError, match="simulated crash"):
        imgfeat.extract(str(photo_dir), out, batch_size=2, backend="torch", workers=0)
    assert list(tmp_path.glob("f*")) == [] and list(tmp_path.glob(".f*")) == []


@pytest.mark.timing
@pytest.mark.parametrize("out_name", ["f.tsv", "store"])
def test_a_killed_decode_worker_is_a_clear_error_not_a_hang(photo_dir, tmp_path, monkeypatch, out_name):
    """The OOM killer (SIGKILL) takes a decode worker: the run stops at once and says what to do."""
    import signal

    import imgfeat.data.batches as loader_mod  # where the DataLoader's workers decode

    real_decode = loader_mod.decode

    def killed_on_coffee(path, *args, **kwargs):
        if "coffee" in path:
            os.kill(os.getpid(), signal.SIGKILL)  # runs in the forked worker, not in pytest
        return real_decode(path, *args, **kwargs)

    monkeypatch.setattr(loader_mod, "decode", killed_on_coffee)
    out = tmp_path / out_name
    with pytest.raises(imgfeat.ImgfeatError, match="a decode worker died.*--workers 0") as info:
        imgfeat.extract(str(photo_dir), out, batch_size=1, backend="torch", workers=2, shard_size=2)
    if out_name == "store":
        assert "rerun the same command to resume" in str(info.value)
        monkeypatch.setattr(loader_mod, "decode", real_decode)
        imgfeat.extract(str(photo_dir), out, batch_size=1, backend="torch", workers=2, shard_size=2)
        assert imgfeat.load(out)[0] == imgfeat.extract(str(photo_dir), backend="torch", workers=0).ids
    else:
        assert "nothing was written" in str(info.value) and list(tmp_path.glob("f*")) == []


def test_options_are_validated():
    with pytest.raises(InvalidParameterError, match="'batch_size' parameter"):
        imgfeat.extract(".", batch_size=0)
    with pytest.raises(InvalidParameterError, match="'precision' parameter.*bf16 or int8 on the CPU"):
        imgfeat.extract(str(ROOT / "examples" / "images"), precision="fp16", device="cpu")
    with pytest.raises(TypeError, match="unexpected keyword"):
        imgfeat.extract(".", batchsize=3)


def test_bf16_on_cpu_is_close_to_fp32(photos):
    paths = [str(photos / "chelsea.jpg")]
    a = imgfeat.extract(paths, backend="torch", workers=0, l2=True)
    b = imgfeat.extract(paths, backend="torch", workers=0, l2=True, precision="bf16", device="cpu")
    assert float(a.features[0] @ b.features[0]) > 0.98


def _cli(*args, cwd=ROOT):
    env = dict(os.environ)
    return subprocess.run([sys.executable, "-m", "imgfeat.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=PATIENCE)


@pytest.mark.slow
def test_cli_extract_the_readme_example(tmp_path):
    out = tmp_path / "features.tsv"
    proc = _cli("extract", "--data", "examples/images.tsv", "--out", str(out), "--relu", "--l2")
    assert proc.returncode == 0, proc.stderr
    assert "imgfeat: 6 done, 0 failed" in proc.stderr and str(out) in proc.stderr
    ids, mat = imgfeat.load(out)
    assert ids == ["chelsea", "coffee", "astronaut", "rocket", "motorcycle", "camera"]
    assert mat.shape == (6, 1280)
    np.testing.assert_allclose(np.linalg.norm(mat, axis=1), 1.0, atol=1e-5)
    assert float(mat[0] @ mat[1]) < 0.9  # a cat is not an espresso


def test_cli_models_layers_and_errors(tmp_path):
    proc = _cli("models")
    assert proc.returncode == 0
    assert "efficientnet_lite0  1280" in proc.stdout and "inception_v3" in proc.stdout
    proc = _cli("layers", "squeezenet1_1")
    assert proc.returncode == 0 and "features.12.cat" in proc.stdout.split()
    proc = _cli("extract", "--data", "no/such/dir", "--out", str(tmp_path / "f.tsv"))
    assert proc.returncode == 2
    assert "--data must be" in proc.stderr and "Traceback" not in proc.stderr
    proc = _cli("extract", "--data", "examples/images", "--out", str(tmp_path / "f.csv"))
    assert proc.returncode == 2 and "--out must be" in proc.stderr


def test_cli_missing_weights_offline(tmp_path, monkeypatch, capsys):
    """No network in tests: the download itself is made to fail as it does offline."""
    import urllib.error

    import torch.hub

    from imgfeat.cli import main

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    code = main(["extract", "--data", str(ROOT / "examples" / "images"), "--out", str(tmp_path / "f.tsv"),
                 "--model", "resnet50"])
    err = capsys.readouterr().err
    assert code == 2
    assert "resnet50-11ad3fa6.pth" in err and "--weights FILE" in err and "Traceback" not in err
    assert not (tmp_path / "f.tsv").exists()


def test_progress_bar_reports_rate_and_total(photo_dir, capsys):
    imgfeat.extract(str(photo_dir), backend="torch", workers=0, batch_size=2, progress=True)
    err = capsys.readouterr().err
    assert "6/6" in err and "img/s" in err and "failed=0" in err
