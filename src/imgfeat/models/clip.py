"""CLIP-family models through open_clip: ``clip:<arch>/<pretrained>`` (any pair ``open_clip.list_pretrained()``
lists: OpenAI CLIP, LAION, DataComp, MetaCLIP, SigLIP...). The image feature is the model's projected
embedding (``encode_image``, the vector text embeddings are compared with), fed with the model's own
preprocessing; the text tower embeds text with the same weights. Weights download through open_clip
into the Hugging Face cache; ``--weights FILE`` loads an open_clip checkpoint (state dict) instead.
"""

from __future__ import annotations

import functools
from typing import Optional, Sequence

import numpy as np
import torch
from torch import nn

from ..errors import WeightsUnavailableError, bad_param, require
from .names import CLIP_PREFIX
from .preprocess import Preprocess
from .weights import WeightsSource, hub_offline, offline_message

_RESIZE_MODES = {"shortest": "center", "squash": "squash", "longest": "border"}


def _open_clip():
    return require("open_clip", "clip", "CLIP models")


class ClipModel(nn.Module):
    """An open_clip model whose ``forward`` is ``encode_image`` (so the feature pipeline, fx layers and the
    export backends see the image tower) and which keeps the text tower for :meth:`encode_text`."""

    def __init__(self, clip: nn.Module, arch: str) -> None:
        super().__init__()
        self.clip, self.arch = clip, arch

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.clip.encode_image(images)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.clip.encode_text(tokens)

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        return _open_clip().get_tokenizer(self.arch)(list(texts))

    def fast_tokenizer(self):
        """This model's tokenizer without torch (``models.tokenizer.ClipTokenizer``), or None where it would not
        give the same tokens (it is compared with open_clip's own on ``tokenizer.PROBES`` first)."""
        from .tokenizer import matching

        tok = _open_clip().get_tokenizer(self.arch)
        if type(tok).__name__ != "SimpleTokenizer":  # a Hugging Face tokenizer (SigLIP, multilingual ...)
            return None
        from open_clip.tokenizer import default_bpe

        return matching(lambda texts: tok(texts).numpy(), default_bpe(), tok.context_length,
                        reduction=tok.reduction_fn is not None)

    @property
    def sigmoid(self) -> bool:
        """SigLIP models score pairs with a sigmoid and a learnt bias, not a softmax."""
        return getattr(self.clip, "logit_bias", None) is not None

    def logit_scale_bias(self) -> tuple[float, float]:
        with torch.no_grad():
            scale = float(self.clip.logit_scale.exp()) if hasattr(self.clip, "logit_scale") else 100.0
            bias = float(self.clip.logit_bias) if self.sigmoid else 0.0
        return scale, bias

    def load_state_dict(self, state, strict: bool = True, assign: bool = False):
        """Accept an open_clip checkpoint as open_clip writes it (keys without the ``clip.`` prefix)."""
        if state and not any(k.startswith("clip.") for k in state):
            state = {f"clip.{k}": v for k, v in state.items()}
        return super().load_state_dict(state, strict=strict, assign=assign)


def build_clip(arch: str) -> ClipModel:
    """The architecture with randomly initialised weights (weights sources load into it, so open_clip's warning
    that no pretrained weights were loaded is silenced here)."""
    import logging

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        return ClipModel(_open_clip().create_model(arch, pretrained=None), arch)
    finally:
        root.setLevel(level)


class OpenClipWeights(WeightsSource):
    """open_clip's own pretrained weights for ``arch``/``tag``, downloaded into the standard cache."""

    def __init__(self, arch: str, tag: str) -> None:
        self.arch, self.tag = arch, tag

    def describe(self) -> str:
        return f"open_clip {self.arch}/{self.tag}"

    def _hub(self) -> Optional[str]:
        cfg = _open_clip().get_pretrained_cfg(self.arch, self.tag) or {}
        return (cfg.get("hf_hub") or "").strip("/") or None

    def available(self) -> bool:
        repo = self._hub()
        if repo is None:
            return False
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:
            return False
        return any(isinstance(try_to_load_from_cache(repo, f), str)
                   for f in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"))

    def instantiate(self, build, name: str) -> nn.Module:
        open_clip = _open_clip()
        if self._hub() and not self.available():
            why = hub_offline()
            if why:
                raise WeightsUnavailableError(offline_message(name, self._hub(), why, "an open_clip checkpoint"))
        try:
            clip = open_clip.create_model(self.arch, pretrained=self.tag, require_pretrained=True)
        except Exception as exc:  # noqa: BLE001 - offline, no such file, hub error: one clear message
            where = f"the Hugging Face hub ({self._hub()})" if self._hub() else "its URL"
            raise WeightsUnavailableError(
                f"{name}: the pretrained weights could not be loaded from {where} ({type(exc).__name__}: "
                f"{str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ''}). Online, they download once "
                "into the Hugging Face cache (HF_HOME); offline, pass --weights FILE (an open_clip checkpoint "
                "file), or use --random-weights for speed tests.") from None
        return ClipModel(clip, self.arch).eval()


class NoPretrained(WeightsSource):
    def __init__(self, arch: str) -> None:
        self.arch = arch

    def describe(self) -> str:
        return "none (--weights FILE)"

    def available(self) -> bool:
        return False

    def instantiate(self, build, name: str) -> nn.Module:
        raise WeightsUnavailableError(f"{name} names no pretrained tag: pass --weights FILE (an open_clip checkpoint), "
                                      f"or use clip:{self.arch}/<tag> with a tag from `imgfeat models --clip`")


def clip_preprocess(arch: str, tag: str) -> Preprocess:
    """The model's own eval transform: resize (mode from its pretrained config), centre crop, normalise."""
    open_clip = _open_clip()
    cfg = open_clip.get_model_config(arch) or {}
    size = cfg.get("vision_cfg", {}).get("image_size", 224)
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    pcfg = (open_clip.get_pretrained_cfg(arch, tag) if tag else {}) or {}
    pp = pcfg or cfg.get("preprocess_cfg", {}) or {}
    mean = tuple(pp.get("mean", open_clip.OPENAI_DATASET_MEAN))
    std = tuple(pp.get("std", open_clip.OPENAI_DATASET_STD))
    crop_mode = _RESIZE_MODES.get(pp.get("resize_mode", "shortest"), "center")
    return Preprocess.from_crop_pct((h, w), 1.0, crop_mode=crop_mode, interpolation=pp.get("interpolation", "bicubic"),
                                    mean=mean, std=std)


@functools.lru_cache(maxsize=64)
def clip_parts(name: str):
    """(arch, tag, preprocess, weights source, embedding dim) of ``<arch>/<tag>`` without building a network."""
    open_clip = _open_clip()
    arch, _, tag = name.partition("/")
    if arch not in open_clip.list_models():
        raise bad_param("model", "clip:<arch>/<pretrained> with an arch from open_clip.list_models() "
                                 "(`imgfeat models --clip` lists the pairs)", f"{CLIP_PREFIX}{name}")
    tag = "" if tag in ("", "none") else tag
    if tag and tag not in open_clip.list_pretrained_tags_by_model(arch):
        raise bad_param("model", f"clip:{arch}/<tag> with a tag of {open_clip.list_pretrained_tags_by_model(arch)}",
                        f"{CLIP_PREFIX}{name}")
    weights = OpenClipWeights(arch, tag) if tag else NoPretrained(arch)
    dim = (open_clip.get_model_config(arch) or {}).get("embed_dim")
    return arch, tag, clip_preprocess(arch, tag), weights, dim


def list_pretrained() -> list[str]:
    return [f"{CLIP_PREFIX}{a}/{t}" for a, t in _open_clip().list_pretrained()]


def text_embeddings(model: ClipModel, texts: Sequence[str], batch: int = 256, run=None) -> np.ndarray:
    """L2-normalised text embeddings (float32, one row per text) from the model's own tokenizer and tower;
    ``run(tokens)`` (an executor of ``encode_text``, see ``backends.text_executor``) instead of torch if given."""
    out = []
    with torch.inference_mode():
        for s in range(0, len(texts), batch):
            tokens = model.tokenize(texts[s:s + batch])
            e = run(tokens) if run is not None else model.encode_text(tokens.to(next(model.parameters()).device))
            out.append(torch.nn.functional.normalize(e.float(), dim=-1).cpu().numpy())
    dim = int(getattr(model.clip, "text_projection", torch.zeros(0, 0)).shape[-1]) if not out else 0
    return np.concatenate(out) if out else np.zeros((0, dim), np.float32)
