"""The server's query encoders: chosen by ``engines.quick.query_encoder`` (the chooser of every query path), made
once on the first image or text query, run on one thread."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..errors import ImgfeatError
from .collection import Collection
from .config import ServeConfig


class EncoderUnavailable(ImgfeatError):
    """Queries cannot be embedded here (features that are not a store, a model that cannot be loaded): a 400."""


class Encoders:
    """The store's query encoders, chosen by ``engines.quick.query_encoder`` (the chooser of every query path) and
    made once, on the first image or text query: images through a recorded export where one exists (no torch),
    text through the store's model. A failure is remembered and reported to every later query."""

    def __init__(self, collection: Collection, config: ServeConfig) -> None:
        self.collection, self.config = collection, config
        self._lock = threading.Lock()
        self._encoders: dict[bool, object] = {}
        self._errors: dict[bool, str] = {}
        # every forward on one thread: the model's per-thread caches (oneDNN primitives, allocator) then
        # exist once, instead of once per thread of the request pool (memory that grew with concurrency)
        self.thread = ThreadPoolExecutor(1, thread_name_prefix="imgfeat-model")

    async def encode(self, encoder, pixels) -> np.ndarray:
        return (await asyncio.wrap_future(self.thread.submit(encoder.encode, [pixels])))[0]

    async def encode_text(self, encoder, text: str) -> np.ndarray:
        return (await asyncio.wrap_future(self.thread.submit(encoder.encode_text, [text])))[0]

    def get(self, text: bool = False):
        from ..engines.quick import query_encoder

        with self._lock:
            if text not in self._encoders and text not in self._errors:
                if not text and True in self._encoders and self._encoders[True].images:
                    self._encoders[False] = self._encoders[True]  # the text encoder embeds images too
                else:
                    try:
                        self._encoders[text] = query_encoder(
                            self.collection.path, self.config.weights, text=text, backend=self.config.backend,
                            purpose="text queries are embedded" if text else "image queries are embedded")
                    except ImgfeatError as exc:
                        self._errors[text] = (str(exc) if self.collection.store is None else
                                              f"the store's model cannot be loaded here: {exc}")
            if text in self._errors:
                raise EncoderUnavailable(self._errors[text])
            return self._encoders[text]
