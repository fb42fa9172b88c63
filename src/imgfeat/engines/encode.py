"""Vectors for query images made exactly as a store's were: its model, layer, pooling, preprocessing,
ReLU/L2 and weights (checked against the store's weights hash). The model is built once and kept, so
a server or a search of many files pays for it once.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from ..data.batches import decode_queries
from ..data.loader import stack_pixels
from ..errors import ImgfeatError
from ..models.backends import resolve_device
from ..models.names import no_text_tower
from ..data.decode import DEFAULT_MAX_PIXELS
from ..options import ExecPart, ModelPart, PostPart, available_cores
from ..outputs.identity import VectorIdentity
from ..outputs.store import FeatureStore, query_weights
from .pipeline import Pipeline, build_pipeline, postprocess_tensor, to_numpy

log = logging.getLogger(__name__)


class StoreEncoder:
    """``encode(arrays)`` embeds decoded uint8 HxWx3 arrays (at ``preprocess``'s geometry); ``encode_files``
    decodes files first. Thread-safe: one forward at a time (the executor owns its threads)."""

    def __init__(self, store: FeatureStore, weights: Optional[str] = None, backend: str = "torch",
                 device: str = "auto", random_weights: Optional[bool] = None,
                 remember_text: Optional[Callable] = None) -> None:
        """``remember_text(identity, clip, executor, weights)`` records the text tower's export once it is made
        (``engines.quick.remember_text``, passed by ``query_encoder``)."""
        m = store.manifest
        self.store, self.weights, self.remember_text = store, weights, remember_text
        self.identity = ident = VectorIdentity.from_manifest(m)
        random_weights = self.weights_as_recorded(m, weights, random_weights)
        # the store's own model, run as asked, its vectors post-processed as the store's (no options object)
        self.model = ModelPart(ident.model, ident.layer, ident.pool, weights, bool(random_weights))
        self.execution = ExecPart.default(backend=backend, device=device)
        self.post = PostPart(ident.relu, ident.l2, "float32")

        def check(pipeline: Pipeline) -> None:
            store.check_weights(pipeline.model.fingerprint(), ident.model, weights)
            if pipeline.dim != ident.dim:
                raise ImgfeatError(f"{ident.model} now gives {pipeline.dim}-d features but the store's are "
                                   f"{ident.dim}-d")

        self.pipeline = build_pipeline(self.model, self.execution, resolve_device(device), before_executor=check)
        self.preprocess = self.pipeline.spec.preprocess
        self._lock = threading.Lock()
        self._text_run = None

    weights_as_recorded = staticmethod(query_weights)

    @classmethod
    def for_store(cls, store_path, weights: Optional[str] = None, **kwargs) -> "StoreEncoder":
        return cls(FeatureStore.existing(store_path), weights, **kwargs)

    def encode(self, arrays: Sequence[np.ndarray]) -> np.ndarray:
        if not len(arrays):
            return np.zeros((0, self.pipeline.dim), np.float32)
        pixels = stack_pixels(list(arrays), self.preprocess).to(self.pipeline.device)
        with self._lock, torch.inference_mode():
            out = postprocess_tensor(self.pipeline.executor(pixels), self.post.relu, self.post.l2)
        return to_numpy(out, "float32")

    @property
    def has_text(self) -> bool:
        return bool(self.store.manifest.get("text_tower")) and hasattr(self.pipeline.model.body, "encode_text")

    def encode_text(self, texts: Sequence[str]) -> np.ndarray:
        """L2-normalised text embeddings in the store's space (same model and weights as its vectors)."""
        from ..models.clip import text_embeddings

        if not self.has_text:
            raise ImgfeatError(no_text_tower(self.store.manifest.get("model")))
        body = self.pipeline.model.body
        with self._lock:
            if self._text_run is None:
                from ..models.backends import text_executor

                # the text tower's checked ONNX export (unless --backend torch) is recorded: the next text query
                # of this store runs without torch (engines.quick)
                backend = "auto" if self.execution.backend == "torch" else self.execution.backend
                self._text_run = text_executor(body, body.tokenize(list(texts) + ["a photo"]), backend,
                                               available_cores())
                if self.remember_text is not None and not self.model.random_weights:
                    try:
                        self.remember_text(self.identity, body, self._text_run, self.model.weights)
                    except OSError as exc:  # a cache that cannot be written costs the next query torch, nothing more
                        log.warning("the text tower's export was not recorded (%s): text queries keep torch", exc)
            return text_embeddings(body, list(texts), run=self._text_run)

    @property
    def images(self) -> bool:
        return True

    def text_scoring(self) -> tuple[float, float, bool]:
        """The model's logit scale and bias and whether it scores with a sigmoid (SigLIP): zero-shot's softmax."""
        if not self.has_text:
            raise ImgfeatError(no_text_tower(self.store.manifest.get("model")))
        body = self.pipeline.model.body
        return (*body.logit_scale_bias(), bool(body.sigmoid))

    def encode_files(self, files: Sequence[str], max_pixels: Optional[int] = None) -> np.ndarray:
        return self.encode(decode_queries(files, self.preprocess, max_pixels or DEFAULT_MAX_PIXELS))
