"""Postprocess stage: ReLU, L2 normalisation and the storage dtype, applied on the device."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def postprocess(features: torch.Tensor, relu: bool = False, l2: bool = False) -> torch.Tensor:
    """ReLU then L2, in float32 (the classic VGG-19 fc7 extractor's order)."""
    x = features.float()
    if relu:
        x = torch.relu(x)
    if l2:
        x = F.normalize(x, p=2.0, dim=1, eps=1e-12)
    return x


def to_numpy(features: torch.Tensor, dtype: str) -> np.ndarray:
    return features.detach().to("cpu", torch.float32).numpy().astype(np.dtype(dtype), copy=False)
