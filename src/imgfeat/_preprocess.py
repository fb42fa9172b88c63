"""Preprocessing configuration that travels with each model (timm ``PretrainedCfg`` habit).

Geometry (resize, centre crop) is applied by the decode workers on uint8 pixels; the
arithmetic (scale to [0, 1], channel order, mean/std) runs inside the backbone on the
device, so only uint8 tensors cross process boundaries.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos")


@dataclass(frozen=True)
class Preprocess:
    """How an image becomes the model's input tensor.

    ``resize_size``: the shorter side is resized to this many pixels (torchvision ``Resize(int)``);
    ``crop_size``: (height, width) of the centre crop; ``mean``/``std`` are in [0, 1] units and in
    the model's channel order; ``channel_order`` is "RGB" or "BGR" (Caffe/Keras ports).
    """

    crop_size: tuple[int, int] = (224, 224)
    resize_size: int = 256
    interpolation: str = "bilinear"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    channel_order: str = "RGB"

    def __post_init__(self) -> None:
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {self.interpolation!r}")
        if self.channel_order not in ("RGB", "BGR"):
            raise ValueError(f"channel_order must be 'RGB' or 'BGR', got {self.channel_order!r}")
        if self.resize_size < min(self.crop_size):
            raise ValueError(f"resize_size {self.resize_size} is smaller than crop_size {self.crop_size}")

    @classmethod
    def from_crop_pct(cls, size: int | tuple[int, int], crop_pct: float, **kw) -> "Preprocess":
        """timm convention: resize the shorter side to floor(size / crop_pct), then centre-crop."""
        h, w = (size, size) if isinstance(size, int) else size
        return cls(crop_size=(h, w), resize_size=int(math.floor(min(h, w) / crop_pct)), **kw)

    def describe(self) -> str:
        h, w = self.crop_size
        return (f"resize {self.resize_size} ({self.interpolation}), crop {h}x{w}, {self.channel_order}, "
                f"mean {tuple(round(m, 4) for m in self.mean)}, std {tuple(round(s, 4) for s in self.std)}")
