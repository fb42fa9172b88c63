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
    assert f["cosine_median"] > 0.99 and 0 <= f["knn10_overlap"] <= 1
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
    b = imgfeat.extract(str(photo_dir), backend="torch", workers=0, min_fidelity=1.0)
    assert "fidelity" not in a.backend_report and "fidelity" not in b.backend_report
    np.testing.assert_allclose(a.features, b.features, atol=1e-5)


def test_min_fidelity_is_validated(photo_dir):
    with pytest.raises(imgfeat.InvalidParameterError, match="min_fidelity"):
        imgfeat.extract(str(photo_dir), min_fidelity=1.5)


def test_near_zero_vectors_are_found_before_l2(flat_and_photos, tmp_path):
    res = imgfeat.extract(str(flat_and_photos), str(tmp_path / "f.npy"), precision="bf16", backend="torch",
                          workers=0, min_fidelity=0, l2=True, quiet=True)
    assert res.backend_report["fidelity"]["near_zero"] >= 1
