"""Preprocessing configuration that travels with each model (timm ``PretrainedCfg`` habit).

Geometry (resize, crop or pad) is applied by the decode workers on uint8 pixels; the
arithmetic (scale to [0, 1], channel order, mean/std) runs inside the backbone on the
device, so only uint8 tensors cross process boundaries.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Union

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos")
# timm's eval crop modes: keep the aspect ratio and crop the centre; stretch to the target; or fit
# the longest side and pad with the mean colour (``timm.data.transforms_imagenet_eval``).
CROP_MODES = ("center", "squash", "border")


@dataclass(frozen=True)
class Preprocess:
    """How an image becomes the model's input tensor.

    ``resize_size``: an int resizes the shorter side to that many pixels (torchvision ``Resize(int)``);
    a (height, width) pair is timm's scale size, used as ``crop_mode`` says. ``crop_size``: (height,
    width) of the final centre crop. ``mean``/``std`` are in [0, 1] units and in the model's channel
    order; ``channel_order`` is "RGB" or "BGR" (Caffe/Keras ports).
    """

    crop_size: tuple[int, int] = (224, 224)
    resize_size: Union[int, tuple[int, int]] = 256
    interpolation: str = "bilinear"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    channel_order: str = "RGB"
    crop_mode: str = "center"

    def __post_init__(self) -> None:
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {self.interpolation!r}")
        if self.channel_order not in ("RGB", "BGR"):
            raise ValueError(f"channel_order must be 'RGB' or 'BGR', got {self.channel_order!r}")
        if self.crop_mode not in CROP_MODES:
            raise ValueError(f"crop_mode must be one of {CROP_MODES}, got {self.crop_mode!r}")
        if self.crop_mode == "center" and min(self.scale_size) < min(self.crop_size):
            raise ValueError(f"resize_size {self.resize_size} is smaller than crop_size {self.crop_size}")

    @property
    def scale_size(self) -> tuple[int, int]:
        """``resize_size`` as (height, width)."""
        r = self.resize_size
        return (r, r) if isinstance(r, int) else (int(r[0]), int(r[1]))

    @classmethod
    def from_crop_pct(cls, size: int | tuple[int, int], crop_pct: float, crop_mode: str = "center",
                      **kw) -> "Preprocess":
        """timm convention: scale to floor(size / crop_pct) as ``crop_mode`` says, then centre-crop ``size``."""
        h, w = (size, size) if isinstance(size, int) else size
        scale = (math.floor(h / crop_pct), math.floor(w / crop_pct))
        # a square centre crop is torchvision's Resize(int) of the shorter side, as timm builds it
        resize: Union[int, tuple[int, int]] = scale[0] if crop_mode == "center" and scale[0] == scale[1] else scale
        return cls(crop_size=(h, w), resize_size=resize, crop_mode=crop_mode, **kw)

    @classmethod
    def from_identity(cls, fields: dict) -> "Preprocess":
        """The inverse of :meth:`identity` (after a JSON round trip: lists back to tuples)."""
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()})

    def identity(self) -> dict:
        """The fields a feature store records; ``crop_mode`` only when it is not the default, so stores
        written before it existed still resume."""
        out = dataclasses.asdict(self)
        if self.crop_mode == "center":
            del out["crop_mode"]
        return out

    def describe(self) -> str:
        h, w = self.crop_size
        return (f"resize {self.resize_size} ({self.interpolation}, {self.crop_mode}), crop {h}x{w}, "
                f"{self.channel_order}, mean {tuple(round(m, 4) for m in self.mean)}, "
                f"std {tuple(round(s, 4) for s in self.std)}")
