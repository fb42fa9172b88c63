"""Model registry and backbones: config checks, real pretrained weights on real photos, features
equal to a hand-written forward pass, weights from a local HTTP server / pre-filled cache, timm."""

from __future__ import annotations

import functools
import http.server
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

import imgfeat
from imgfeat import InvalidParameterError, WeightsUnavailableError
from imgfeat.data.decode import decode
from imgfeat.models.backbone import build_feature_model, list_layers
from imgfeat.models.registry import ModelSpec, get_model_spec, instantiate, list_models, register_model, unregister_model
from imgfeat.models.weights import UrlWeights, hub_checkpoint_dir

IMAGENET = torchvision.models.ResNet50_Weights.IMAGENET1K_V1.meta["categories"]
CATS = {"tabby", "tiger cat", "Egyptian cat", "Persian cat", "Siamese cat", "lynx"}
BUNDLED = [s.name for s in list_models() if s.family == "bundled"]
TORCHVISION = [s.name for s in list_models() if s.family == "torchvision"]


def pixels(path: Path, spec: ModelSpec) -> torch.Tensor:
    """The uint8 NCHW tensor imgfeat feeds the model for ``path``."""
    return torch.from_numpy(decode(str(path), spec.preprocess)).permute(2, 0, 1)[None].contiguous()


def normalised(x: torch.Tensor, spec: ModelSpec) -> torch.Tensor:
    """Hand-written: scale to [0, 1], channel order, mean/std."""
    pp = spec.preprocess
    x = x.float() / 255.0
    if pp.channel_order == "BGR":
        x = x[:, [2, 1, 0]]
    return (x - torch.tensor(pp.mean).view(1, 3, 1, 1)) / torch.tensor(pp.std).view(1, 3, 1, 1)


def test_registry_rejects_duplicates():
    with pytest.raises(ValueError, match="already registered"):
        register_model(get_model_spec("resnet50"))


def test_unknown_model_lists_the_choices():
    with pytest.raises(InvalidParameterError, match="'model' parameter.*efficientnet_lite0"):
        get_model_spec("resnet9000")


@pytest.mark.slow
@pytest.mark.parametrize("name", [s.name for s in list_models()])
def test_every_registered_model_builds_and_has_its_declared_dim(name):
    spec = get_model_spec(name)
    h, w = spec.preprocess.crop_size
    assert spec.preprocess.resize_size >= min(h, w)
    assert len(spec.preprocess.mean) == len(spec.preprocess.std) == 3
    model = build_feature_model(spec, random_weights=True)
    with torch.inference_mode():
        out = model(torch.randint(0, 256, (1, 3, h, w), dtype=torch.uint8))
    assert out.shape == (1, spec.dim)


@pytest.mark.parametrize("name", BUNDLED)
def test_bundled_weights_are_available_offline(name):
    assert get_model_spec(name).weights.available()


@pytest.mark.parametrize("name", BUNDLED)
def test_bundled_classifiers_recognise_real_photos(name, photos):
    """The real pretrained weights: the model's own classifier names the cat and the espresso."""
    spec = get_model_spec(name)
    net = instantiate(spec)
    for photo, expected in (("chelsea.jpg", CATS), ("coffee.jpg", {"espresso"})):
        with torch.inference_mode():
            logits = net(normalised(pixels(photos / photo, spec), spec))
        assert IMAGENET[int(logits.argmax())] in expected, (name, photo, IMAGENET[int(logits.argmax())])


def _reference_lite(net, x):
    return net.extract_features(x).mean(dim=(2, 3))


def _reference_squeezenet(net, x):
    return net.features(x).mean(dim=(2, 3))


@pytest.mark.parametrize("name,reference", [
    ("efficientnet_lite0", _reference_lite),
    ("efficientnet_lite2", _reference_lite),
    ("squeezenet1_1", _reference_squeezenet),
])
def test_bundled_features_equal_a_plain_forward(name, reference, photos):
    spec = get_model_spec(name)
    result = imgfeat.extract([str(photos / "chelsea.jpg"), str(photos / "camera.png")], model=name, backend="torch", workers=0)
    net = instantiate(spec)
    for i, photo in enumerate(("chelsea.jpg", "camera.png")):
        with torch.inference_mode():
            ref = reference(net, normalised(pixels(photos / photo, spec), spec))[0].numpy()
        # 1e-5, relative to the largest activation (squeezenet's reach 17: float32 sums over thousands of terms
        # differ by a few ulps between two kernels of one CPU, 1.5e-5 absolute seen here)
        assert np.abs(result.features[i] - ref).max() <= 1e-5 * max(1.0, float(np.abs(ref).max()))


def _save_random_state(name: str, path: Path, **kwargs) -> dict:
    torch.manual_seed(0)
    state = torchvision.models.get_model(name, weights=None, **kwargs).state_dict()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return state


def test_torchvision_weights_from_a_prefilled_cache(photos):
    """resnet18 with a weights file the test writes where torchvision would have downloaded it."""
    spec = get_model_spec("resnet18")
    assert not spec.weights.available()
    state = _save_random_state("resnet18", Path(spec.weights.cache_path))
    assert spec.weights.available()
    result = imgfeat.extract([str(photos / "coffee.jpg")], model="resnet18", backend="torch", workers=0)
    net = torchvision.models.resnet18(weights=None).eval()
    net.load_state_dict(state)
    net.fc = torch.nn.Identity()
    with torch.inference_mode():
        ref = net(normalised(pixels(photos / "coffee.jpg", spec), spec))[0].numpy()
    assert result.dim == 512
    assert np.abs(result.features[0] - ref).max() <= 1e-5


@pytest.mark.slow
def test_fc7_layer_from_a_weights_file(tmp_path, photos):
    """AlexNet's default layer is fc7 after its ReLU (classifier.5; VGG's is classifier.4)."""
    state = _save_random_state("alexnet", tmp_path / "alexnet.pth")
    spec = get_model_spec("alexnet")
    result = imgfeat.extract([str(photos / "rocket.jpg")], model="alexnet", weights=str(tmp_path / "alexnet.pth"),
                             backend="torch", workers=0)
    net = torchvision.models.alexnet(weights=None).eval()
    net.load_state_dict(state)
    with torch.inference_mode():
        x = normalised(pixels(photos / "rocket.jpg", spec), spec)
        ref = net.classifier[:6](torch.flatten(net.avgpool(net.features(x)), 1))[0].numpy()
    assert result.dim == 4096 and (result.features >= 0).all()
    assert np.abs(result.features[0] - ref).max() <= 1e-5


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def http_dir(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_weights_download_into_the_cache(http_dir, photos):
    root, base = http_dir
    state = _save_random_state("resnet18", root / "resnet18-test.pth")
    tv = get_model_spec("resnet18")
    spec = ModelSpec(name="test_resnet18_http", family="torchvision", build=tv.build, preprocess=tv.preprocess,
                     default_layer="flatten", dim=512, weights=UrlWeights(f"{base}/resnet18-test.pth"))
    register_model(spec)
    try:
        assert not spec.weights.available()
        first = imgfeat.extract([str(photos / "chelsea.jpg")], model=spec.name, backend="torch", workers=0)
        assert Path(hub_checkpoint_dir(), "resnet18-test.pth").is_file()
        (root / "resnet18-test.pth").unlink()  # now only the cache has it
        second = imgfeat.extract([str(photos / "chelsea.jpg")], model=spec.name, backend="torch", workers=0)
        np.testing.assert_array_equal(first.features, second.features)
        net = torchvision.models.resnet18(weights=None).eval()
        net.load_state_dict(state)
        net.fc = torch.nn.Identity()
        with torch.inference_mode():
            ref = net(normalised(pixels(photos / "chelsea.jpg", spec), spec))[0].numpy()
        assert np.abs(first.features[0] - ref).max() <= 1e-5
    finally:
        unregister_model(spec.name)


def test_missing_weights_offline_name_the_file_and_the_fix(monkeypatch):
    """The registry's own weights source for resnet50, with the network unreachable (as on these machines)."""
    import urllib.error

    spec = get_model_spec("resnet50")
    assert isinstance(spec.weights, UrlWeights) and not spec.weights.available()

    def offline(url, *args, **kwargs):
        assert url == spec.weights.url  # the registry's URL is the one fetched
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(WeightsUnavailableError) as info:
        instantiate(spec)
    msg = str(info.value)
    assert spec.weights.url in msg and spec.weights.cache_path in msg
    assert spec.weights.cache_path.endswith("resnet50-11ad3fa6.pth")
    assert "--weights FILE" in msg and "--random-weights" in msg


def test_layer_and_pool_options():
    spec = get_model_spec("resnet18")
    assert "layer3.1.relu_1" in list_layers(spec)
    x = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    dims = {}
    for pool in ("avg", "max", "none"):
        model = build_feature_model(spec, layer="layer3", pool=pool, random_weights=True)
        with torch.inference_mode():
            dims[pool] = model(x).shape
    assert dims == {"avg": (2, 256), "max": (2, 256), "none": (2, 256 * 4 * 4)}
    with pytest.raises(InvalidParameterError, match="imgfeat layers resnet18"):
        build_feature_model(spec, layer="layer9", random_weights=True)


def test_random_weights_must_be_asked_for_and_conflict_with_a_file():
    with pytest.raises(InvalidParameterError, match="mutually exclusive"):
        instantiate(get_model_spec("resnet18"), weights="x.pth", random_weights=True)


def test_timm_model_with_local_weights(tmp_path, photos):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    net = timm.create_model("resnet18", pretrained=False).eval()
    torch.save(net.state_dict(), tmp_path / "timm_r18.pth")
    spec = get_model_spec("timm:resnet18")
    assert spec.preprocess.crop_size == (224, 224) and spec.preprocess.interpolation == "bicubic"
    result = imgfeat.extract([str(photos / "coffee.jpg")], model="timm:resnet18",
                             weights=str(tmp_path / "timm_r18.pth"), backend="torch", workers=0)
    with torch.inference_mode():
        ref = net.forward_head(net.forward_features(normalised(pixels(photos / "coffee.jpg", spec), spec)),
                               pre_logits=True)[0].numpy()
    assert np.abs(result.features[0] - ref).max() <= 1e-5
    layer = imgfeat.extract([str(photos / "coffee.jpg")], model="timm:resnet18", layer="layer2",
                            weights=str(tmp_path / "timm_r18.pth"), backend="torch", workers=0)
    assert layer.dim == 128


def test_timm_pretrained_offline_fails_clearly():
    pytest.importorskip("timm")
    with pytest.raises(WeightsUnavailableError, match="--weights FILE"):
        instantiate(get_model_spec("timm:resnet18"))


TIMM_CROP_MODES = [("tf_efficientnetv2_b3.in21k_ft_in1k", "squash"),
                   ("deepseek_vit_412m_enc.deepseek_v4_flash_vision_exp", "border"),
                   ("resnet18.a1_in1k", "center")]


@pytest.mark.parametrize("name,mode", TIMM_CROP_MODES)
def test_timm_crop_modes_match_timms_own_transform(name, mode, photos, tmp_path):
    """A timm model's preprocessing (crop_mode, crop_pct, interpolation, mean/std) equals timm's own
    ``resolve_data_config`` + ``create_transform`` on landscape, portrait and square photos."""
    timm = pytest.importorskip("timm")
    from PIL import Image

    spec = get_model_spec(f"timm:{name}")
    assert spec.preprocess.crop_mode == mode
    transform = timm.data.create_transform(
        **timm.data.resolve_data_config(pretrained_cfg=timm.models.get_pretrained_cfg(name).to_dict()))
    portrait = tmp_path / "portrait.png"
    Image.open(photos / "chelsea.jpg").transpose(Image.Transpose.ROTATE_90).save(portrait)
    for path in (photos / "chelsea.jpg", portrait, photos / "astronaut.jpg"):
        ours = normalised(torch.from_numpy(decode(str(path), spec.preprocess, draft=False)).permute(2, 0, 1)[None],
                          spec)
        ref = transform(Image.open(path).convert("RGB"))[None]
        assert ours.shape == ref.shape
        assert float((ours - ref).abs().max()) <= 1e-5, (name, path.name)


@pytest.mark.slow
def test_timm_squash_model_features_equal_timm_forward(photos):
    """End to end on a squash model: imgfeat's vector == timm transform + forward_head(pre_logits)."""
    timm = pytest.importorskip("timm")
    from PIL import Image

    name = "tf_efficientnetv2_b3.in21k_ft_in1k"
    path = photos / "chelsea.jpg"
    result = imgfeat.extract([str(path)], model=f"timm:{name}", random_weights=True, backend="torch", workers=0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # --random-weights is this seeded initialisation
        net = timm.create_model(name, pretrained=False).eval()
    transform = timm.data.create_transform(**timm.data.resolve_data_config(model=net))
    with torch.inference_mode():
        ref = net.forward_head(net.forward_features(transform(Image.open(path).convert("RGB"))[None]),
                               pre_logits=True)[0].numpy()
    assert np.abs(result.features[0] - ref).max() <= 1e-5 * max(1.0, float(np.abs(ref).max()))
