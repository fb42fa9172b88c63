"""A lower precision is compared with fp32 on the user's own images before a run: refused below
--min-fidelity with the figures, recorded when accepted; fp32 runs are unchanged."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

import imgfeat
from imgfeat.engines.fidelity import FidelityError


@pytest.fixture
def flat_and_photos(tmp_path, photos):
    """Real photos plus the flat images on which bf16 diverges most (a 1x1 grey, a dark square)."""
    d = tmp_path / "imgs"
    d.mkdir()
    for p in sorted(photos.iterdir()):
        Image.open(p).save(d / f"{p.stem}.png")
    Image.new("RGB", (1, 1), (128, 128, 128)).save(d / "one.png")
    Image.new("RGB", (300, 200), (10, 10, 10)).save(d / "dark.png")
    return d


def test_bf16_below_the_threshold_is_refused_with_the_figures(flat_and_photos, tmp_path):
    with pytest.raises(FidelityError) as err:
        imgfeat.extract(str(flat_and_photos), str(tmp_path / "f.npy"), precision="bf16", backend="torch",
                        workers=0, min_fidelity=0.999)
    msg = str(err.value)
    assert "1st percentile" in msg and "kNN@10 overlap" in msg and "--min-fidelity" in msg and "on 8 images" in msg
    assert "near-zero fp32 vectors" in msg
    assert not (tmp_path / "f.npy").exists()


def test_accepted_precision_records_its_figures(flat_and_photos, tmp_path):
    res = imgfeat.extract(str(flat_and_photos), str(tmp_path / "store"), precision="bf16", backend="torch",
                          workers=0, min_fidelity=0, quiet=True)
    f = res.backend_report["fidelity"]
    assert f["sample"] == 8 and f["precision"] == "bf16" and -1 <= f["cosine_min"] <= f["cosine_p1"] <= f["cosine_median"]
    assert f["cosine_median"] > 0.99 and f["knn10_overlap"] is None  # 8 images: every other one is a neighbour
    assert f["near_zero"] >= 1  # the 1x1 grey: its fp32 vector nearly cancels
    assert f["cosine_p1_without_near_zero"] >= f["cosine_p1"] and f["error_max_vs_median_norm"] >= 0
    assert json.loads((tmp_path / "store" / "manifest.json").read_text())["fidelity"] == f
    # the figures are what they claim: recompute the cosine of each image against an fp32 run
    ref = imgfeat.extract(str(flat_and_photos), precision="fp32", backend="torch", workers=0)
    ids, low = imgfeat.load(tmp_path / "store")
    low = np.asarray(low)
    cos = (low * ref.features).sum(1) / np.linalg.norm(low, axis=1) / np.linalg.norm(ref.features, axis=1)
    assert ids == ref.ids
    assert cos.min() == pytest.approx(f["cosine_min"], abs=1e-4)


def test_fp32_is_unchanged_and_unmeasured(photo_dir, tmp_path):
    a = imgfeat.extract(str(photo_dir), precision="fp32", backend="torch", workers=0)
    b = imgfeat.extract(str(photo_dir), backend="torch", workers=0)
    assert "fidelity" not in a.backend_report and "fidelity" not in b.backend_report
    np.testing.assert_allclose(a.features, b.features, atol=1e-5)
    with pytest.raises(imgfeat.InvalidParameterError, match="min_fidelity.*only with a --precision below fp32"):
        imgfeat.extract(str(photo_dir), backend="torch", workers=0, min_fidelity=1.0)  # it would do nothing


def test_min_fidelity_is_validated(photo_dir):
    with pytest.raises(imgfeat.InvalidParameterError, match="min_fidelity"):
        imgfeat.extract(str(photo_dir), min_fidelity=1.5)


def test_near_zero_vectors_are_found_before_l2(flat_and_photos, tmp_path):
    res = imgfeat.extract(str(flat_and_photos), str(tmp_path / "f.npy"), precision="bf16", backend="torch",
                          workers=0, min_fidelity=0, l2=True, quiet=True)
    assert res.backend_report["fidelity"]["near_zero"] >= 1


def test_int8_is_calibrated_measured_and_recorded(flat_and_photos, tmp_path, capsys):
    res = imgfeat.extract(str(flat_and_photos), str(tmp_path / "store"), precision="int8", backend="onnx",
                          workers=0, min_fidelity=0, quiet=True)
    f = res.backend_report["fidelity"]
    assert f["precision"] == "int8" and f["backend"] == "onnx" and f["calibration_images"] == 8
    assert f["fp32_head"] == 0.0  # accepted at once with --min-fidelity 0
    assert json.loads((tmp_path / "store" / "manifest.json").read_text())["fidelity"] == f
    ref = imgfeat.extract(str(flat_and_photos), precision="fp32", backend="torch", workers=0)
    ids, low = imgfeat.load(tmp_path / "store")
    low = np.asarray(low)
    cos = (low * ref.features).sum(1) / np.linalg.norm(low, axis=1) / np.linalg.norm(ref.features, axis=1)
    assert ids == ref.ids and cos.min() == pytest.approx(f["cosine_min"], abs=1e-4)
    assert not np.allclose(low, ref.features, atol=1e-3)  # really another arithmetic
    from imgfeat.cli import main

    assert main(["info", str(tmp_path / "store")]) == 0  # the figures, as the run printed them
    assert "precision int8 (onnx) against fp32 on 8 images of the input: cosine min" in capsys.readouterr().out


def test_int8_below_the_threshold_lists_every_fp32_head_tried(flat_and_photos, tmp_path):
    with pytest.raises(FidelityError) as err:
        imgfeat.extract(str(flat_and_photos), str(tmp_path / "f.npy"), precision="int8", backend="onnx",
                        workers=0, min_fidelity=0.99999)
    msg = str(err.value)
    assert "first layers kept in fp32: 0% -> " in msg and "35% -> " in msg and "--min-fidelity" in msg
    assert not (tmp_path / "f.npy").exists()


def test_calibrate_list_is_used_and_checked(flat_and_photos, photo_dir, tmp_path):
    res = imgfeat.extract(str(flat_and_photos), precision="int8", backend="onnx", workers=0, min_fidelity=0,
                          calibrate=str(photo_dir))
    assert res.backend_report["fidelity"]["calibration_images"] == len(list(photo_dir.iterdir()))
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.jpg").write_bytes(b"not an image")
    with pytest.raises(imgfeat.ImgfeatError, match="--calibrate .*could be read"):
        imgfeat.extract(str(flat_and_photos), precision="int8", backend="onnx", workers=0,
                        calibrate=str(tmp_path / "junk"))


@pytest.mark.parametrize("precision,backend", [("int8", "torch"), ("bf16", "onnx")])
def test_precision_a_backend_cannot_run_is_refused(photo_dir, precision, backend):
    with pytest.raises(imgfeat.InvalidParameterError, match="backend"):
        imgfeat.extract(str(photo_dir), precision=precision, backend=backend, workers=0, min_fidelity=0)


def test_split_head_is_the_same_model_in_two_parts(tmp_path):
    """The cut for an fp32 head: both parts compiled in f32 and chained equal the whole model."""
    import openvino as ov
    import torch

    from imgfeat.models.backbone import build_feature_model
    from imgfeat.models.backends import export_onnx, openvino_executor
    from imgfeat.models.lowp import split_head
    from imgfeat.models.registry import get_model_spec

    spec = get_model_spec("efficientnet_lite0")
    fm = build_feature_model(spec, None, None, None, False).eval()
    path = tmp_path / "m.onnx"
    export_onnx(fm, spec.preprocess.crop_size, path)
    pixels = torch.randint(0, 256, (2, 3, 224, 224), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    head, rest = split_head(path, 0.2)
    assert 0 < len(head.get_ordered_ops()) < len(ov.Core().read_model(str(path)).get_ordered_ops())
    core = ov.Core()
    a, b = (core.compile_model(m, "CPU", {"INFERENCE_PRECISION_HINT": "f32"}) for m in (head, rest))
    chained = b({0: a({0: pixels.numpy()})[a.output(0)]})[b.output(0)]
    with torch.inference_mode():
        ref = fm(pixels).numpy()
    np.testing.assert_allclose(chained, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
    out = openvino_executor(path, 1, "bf16", 0.2)(pixels).numpy()  # the bf16 rest stays close
    cos = (out * ref).sum(1) / np.linalg.norm(out, axis=1) / np.linalg.norm(ref, axis=1)
    assert cos.min() > 0.99


def test_quantised_model_is_cached_by_its_calibration(tmp_path):
    import torch

    from imgfeat.models.backbone import build_feature_model
    from imgfeat.models.backends import export_onnx
    from imgfeat.models.lowp import quantized
    from imgfeat.models.registry import get_model_spec

    spec = get_model_spec("efficientnet_lite0")
    path = tmp_path / "m.onnx"
    export_onnx(build_feature_model(spec, None, None, None, False).eval(), spec.preprocess.crop_size, path)
    cal = torch.randint(0, 256, (4, 3, 224, 224), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    q = quantized(path, cal)
    stamp = q.stat().st_mtime_ns
    assert quantized(path, cal) == q and q.stat().st_mtime_ns == stamp  # cached
    assert quantized(path, cal, 0.2) != q and quantized(path, cal[:2]) != q  # another head / calibration: another file
    import onnx

    ops = {n.op_type for n in onnx.load(str(q)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops


def test_a_store_never_mixes_precisions(photo_dir, tmp_path):
    from imgfeat.outputs.store import StoreMismatchError

    store = tmp_path / "store"
    imgfeat.extract(str(photo_dir), str(store), backend="torch", workers=0, quiet=True)
    with pytest.raises(StoreMismatchError, match="precision: store has 'fp32', this run 'bf16'"):
        imgfeat.extract(str(photo_dir), str(store), precision="bf16", backend="torch", workers=0, min_fidelity=0)
    manifest = json.loads((store / "manifest.json").read_text())
    del manifest["precision"]  # a store written before the key existed holds fp32 vectors
    (store / "manifest.json").write_text(json.dumps(manifest))
    imgfeat.extract(str(photo_dir), str(store), backend="torch", workers=0, quiet=True)  # resumes
