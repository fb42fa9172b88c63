"""The model layer's choices, importable without torch: what options validate against and what the command
line offers (``imgfeat --help`` never imports torch)."""

from __future__ import annotations

from typing import Optional

POOLS = ("avg", "max", "none")
BACKENDS = ("auto", "torch", "onnx", "openvino")
PRECISIONS = ("fp32", "fp16", "bf16", "int8")
CPU_BACKENDS = ("onnx", "openvino")
TIMM_PREFIX = "timm:"  # timm:<name>: any timm model
CLIP_PREFIX = "clip:"  # clip:<arch>/<pretrained>: open_clip models with a text tower


def no_text_tower(model: Optional[str]) -> str:
    return (f"the store's model ({model or 'unknown'}) has no text tower: text queries need a store extracted with a "
            "CLIP-family model, --model clip:<arch>/<pretrained> (pip install 'imgfeat[clip]'; `imgfeat models --clip` "
            "lists them), at its default layer")
