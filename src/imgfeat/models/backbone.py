"""Backbone stage: uint8 NCHW pixels in, one float feature vector per image out.

The wrapper owns the arithmetic half of preprocessing (scale, channel order, mean/std) so
decode workers ship uint8 tensors, then runs the network up to the chosen fx node
(torchvision's feature extraction, or timm's for timm models) and pools spatial maps.
"""

from __future__ import annotations

import hashlib
import warnings
from typing import Optional

import torch
from torch import nn

from ..errors import bad_param
from .names import POOLS
from .preprocess import Preprocess
from .registry import ModelSpec, instantiate



def _fx(spec: ModelSpec):
    if spec.family == "timm":
        from timm.models import create_feature_extractor, get_graph_node_names
    else:
        from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names
    return create_feature_extractor, get_graph_node_names


def list_layers(spec: ModelSpec, net: Optional[nn.Module] = None) -> list[str]:
    """The fx node names of ``spec`` in eval mode (what ``--layer`` accepts)."""
    _, get_graph_node_names = _fx(spec)
    with warnings.catch_warnings():  # "eval nodes are a subsequence of train nodes": we list the eval ones
        warnings.filterwarnings("ignore", message="NOTE: The nodes obtained by tracing", category=UserWarning)
        _, eval_nodes = get_graph_node_names(net if net is not None else spec.build())
    return list(eval_nodes)


def weights_fingerprint(model: torch.nn.Module) -> str:
    """Hash of every parameter and buffer: the export cache can never serve other weights."""
    h = hashlib.blake2b(digest_size=16)
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class FeatureModel(nn.Module):
    """Normalise uint8 input, run ``body`` and pool its output to (N, D).

    It knows what it is (``name``, ``layer``, ``pool``, ``input_size``), so the export cache and a
    store's identity are read from the model itself."""

    def __init__(self, body: nn.Module, pp: Preprocess, pool: str, name: str = "", layer: Optional[str] = None) -> None:
        super().__init__()
        if pool not in POOLS:
            raise bad_param("pool", f"one of {POOLS}", pool)
        self.body = body
        self.pool = pool
        self.name, self.layer, self.input_size = name, layer, tuple(pp.crop_size)
        self.bgr = pp.channel_order == "BGR"
        self._fingerprint: Optional[str] = None
        # The canonical (x / 255 - mean) / std, rounded exactly as torchvision's Normalize rounds it.
        self.register_buffer("mean", torch.tensor(pp.mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(pp.std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def fingerprint(self) -> str:
        """:func:`weights_fingerprint` of this model, hashed once: a FeatureModel is built for
        inference and its weights never change afterwards."""
        if self._fingerprint is None:
            self._fingerprint = weights_fingerprint(self)
        return self._fingerprint

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        x = pixels.float().div_(255.0)
        if self.bgr:
            x = x.flip(1)
        return x.sub_(self.mean).div_(self.std)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        y = self.body(self.normalize(pixels))
        if isinstance(y, dict):
            (y,) = y.values()
        if isinstance(y, (tuple, list)):
            y = y[0]
        if y.ndim == 4:
            if self.pool == "avg":
                return y.mean(dim=(2, 3))
            if self.pool == "max":
                return y.amax(dim=(2, 3))
        elif y.ndim == 3:  # (N, tokens, C)
            if self.pool == "avg":
                return y.mean(dim=1)
            if self.pool == "max":
                return y.amax(dim=1)
        return y.flatten(1)


def build_feature_model(spec: ModelSpec, layer: Optional[str] = None, pool: Optional[str] = None,
                        weights: Optional[str] = None, random_weights: bool = False) -> FeatureModel:
    """The eval-mode ``FeatureModel`` for ``spec`` at ``layer`` (default: the spec's own layer and pooling)."""
    net = instantiate(spec, weights=weights, random_weights=random_weights)
    node = layer or spec.default_layer
    if node is None:
        if hasattr(net, "reset_classifier"):
            net.reset_classifier(0)  # timm: pooled pre-logits (a CLIP model's forward is its embedding)
        body = net
    else:
        create_feature_extractor, _ = _fx(spec)
        try:
            with warnings.catch_warnings():  # torchvision notes eval nodes are a subset of train nodes
                warnings.simplefilter("ignore", UserWarning)
                body = create_feature_extractor(net, return_nodes={node: "feature"})
        except ValueError as exc:
            raise bad_param("layer", f"a node of {spec.name} (list them with `imgfeat layers {spec.name}`)",
                            node) from exc
    return FeatureModel(body, spec.preprocess, pool or spec.default_pool, spec.name, node).eval()
