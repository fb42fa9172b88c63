"""Inference backends: exported models agree with torch, the export cache is keyed by the
weights, ``auto`` picks the fastest checked backend and remembers it, bad exports are refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import imgfeat
from imgfeat import InvalidParameterError
from imgfeat.models import backends as _backends
from imgfeat.models.backbone import build_feature_model, weights_fingerprint
from imgfeat.models.backends import BackendCheckError, ExecConfig, make_executor
from imgfeat.models.registry import get_model_spec

RUNTIMES = [b for b in ("onnx", "openvino") if b in _backends.available_backends()]


def _executor(model, backend, spec, batch_size=4, precision="fp32"):
    return make_executor(model, ExecConfig(backend=backend, precision=precision, batch_size=batch_size, threads=2))


@pytest.mark.parametrize("backend", RUNTIMES)
def test_exported_features_match_torch_on_real_photos(backend, photo_dir):
    ref = imgfeat.extract(str(photo_dir), backend="torch", workers=0)
    out = imgfeat.extract(str(photo_dir), backend=backend, workers=0)
    assert out.backend == backend and out.ids == ref.ids
    rel = np.abs(out.features - ref.features).max() / np.abs(ref.features).max()
    assert rel <= 1e-4
    assert out.backend_report["check"][backend]["rel_diff"] <= 1e-4


@pytest.mark.parametrize("backend", RUNTIMES)
def test_backend_results_do_not_depend_on_batch_size(backend, photo_dir):
    a = imgfeat.extract(str(photo_dir), backend=backend, batch_size=1, workers=0)
    b = imgfeat.extract(str(photo_dir), backend=backend, batch_size=7, workers=2)
    assert np.abs(a.features - b.features).max() <= 1e-5


@pytest.mark.parametrize("backend", RUNTIMES)
def test_torchvision_layer_export(backend):
    spec = get_model_spec("resnet18")
    model = build_feature_model(spec, layer="layer3", pool="max", random_weights=True)
    model.input_size = (96, 96)  # export and check at this size instead of the spec's 224
    ex, report = make_executor(model, ExecConfig(backend=backend, batch_size=2, threads=2))
    x = torch.randint(0, 256, (5, 3, 96, 96), dtype=torch.uint8)
    with torch.inference_mode():
        ref = model(x)
    assert ex(x).shape == ref.shape == (5, 256)
    assert float((ex(x) - ref).abs().max() / ref.abs().max()) <= 1e-4


def test_export_is_cached_and_keyed_by_weights(monkeypatch, tmp_path):
    if "onnx" not in RUNTIMES:
        pytest.skip("onnxruntime not installed")
    monkeypatch.setenv("IMGFEAT_CACHE", str(tmp_path / "cache"))  # its own cache: no export of an earlier test
    spec = get_model_spec("squeezenet1_1")
    model = build_feature_model(spec)
    calls = []
    real_export = _backends.export_onnx
    monkeypatch.setattr(_backends, "export_onnx", lambda *a: (calls.append(1), real_export(*a))[1])
    _, first = _executor(model, "onnx", spec)
    _, again = _executor(model, "onnx", spec)
    assert len(calls) == 1 and first["export"] == again["export"]
    other = build_feature_model(spec, random_weights=True)
    assert weights_fingerprint(other) != weights_fingerprint(model)
    _, changed = _executor(other, "onnx", spec)
    assert len(calls) == 2 and changed["export"] != first["export"]


def test_auto_picks_the_fastest_and_remembers(monkeypatch):
    if not RUNTIMES:
        pytest.skip("no CPU runtime installed")
    spec = get_model_spec("squeezenet1_1")
    model = build_feature_model(spec)
    speed = {"torch": 10.0, "onnx": 30.0, "openvino": 20.0}
    monkeypatch.setattr(_backends, "_time", lambda ex, *a, **k: speed[ex.name])
    ex, report = _executor(model, "auto", spec, batch_size=3)
    assert ex.name == max((b for b in ["torch", *RUNTIMES]), key=speed.get)
    assert set(report["timings"]) == {"torch", *RUNTIMES}

    def no_timing(*a, **k):
        raise AssertionError("the cached choice must be reused")

    monkeypatch.setattr(_backends, "_time", no_timing)
    ex2, _ = _executor(model, "auto", spec, batch_size=3)
    assert ex2.name == ex.name


def test_a_wrong_export_is_refused(monkeypatch):
    if "onnx" not in RUNTIMES:
        pytest.skip("onnxruntime not installed")
    spec = get_model_spec("squeezenet1_1")
    model = build_feature_model(spec)
    real = _backends.onnx_executor

    def broken(path, threads):
        ex = real(path, threads)
        good = ex.run
        ex.run = lambda x: good(x) * 1.01
        return ex

    monkeypatch.setattr(_backends, "onnx_executor", broken)
    with pytest.raises(BackendCheckError, match="disagrees with torch"):
        _executor(model, "onnx", spec)
    monkeypatch.setattr(_backends, "_time", lambda ex, *a, **k: {"onnx": 1e9}.get(ex.name, 1.0))
    ex, report = _executor(model, "auto", spec)
    assert ex.name != "onnx" and "onnx" not in report.get("check", {})


def test_missing_runtime_names_the_install(monkeypatch):
    monkeypatch.setattr(_backends, "available_backends", lambda: ["torch"])
    spec = get_model_spec("squeezenet1_1")
    with pytest.raises(InvalidParameterError, match="pip install onnxruntime"):
        _executor(build_feature_model(spec), "onnx", spec)
    ex, report = _executor(build_feature_model(spec), "auto", spec)
    assert ex.name == "torch"


def test_openvino_bf16_is_close(photos):
    if "openvino" not in RUNTIMES:
        pytest.skip("openvino not installed")
    paths = [str(photos / "chelsea.jpg"), str(photos / "coffee.jpg")]
    a = imgfeat.extract(paths, backend="torch", workers=0, l2=True)
    b = imgfeat.extract(paths, backend="openvino", precision="bf16", workers=0, l2=True)
    assert (a.features * b.features).sum(axis=1).min() > 0.98
