"""What every router shares: the server's state reached through dependencies, the JSON error body and the
statuses each route declares, the result item and page models, and the request-body helpers.

Every error is ``{"error": ..., "parameter": ...}`` (``ErrorBody``) with a 4xx status; each route declares the
statuses it can answer (``errors(...)``), so a client generated from ``/openapi.json`` knows them. Bounds the
server enforces are in the parameters' schemas, so what the schema allows is what the server accepts; what
depends on the data (an id, a label, a row that does not exist) is a 404.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Optional

import asyncio
import numpy as np
from fastapi import Depends, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from ...data.decode import DEFAULT_MAX_PIXELS
from ...errors import ImgfeatError
from ..collection import Collection, Hit, LiveCollection
from ..media import DecodePool, Thumbnails
from ..review import Review

MAX_PAGE = 200  # results per page


@dataclass
class ServeConfig:
    host: str = "127.0.0.1"
    port: int = 8765
    token: Optional[str] = None
    allow_hosts: tuple[str, ...] = ()
    cors: tuple[str, ...] = ()
    max_upload: int = 20 * 1024 * 1024
    max_json: int = 1024 * 1024
    max_k: int = 1000
    decode_timeout: float = 10.0
    decode_workers: int = 2
    max_pixels: int = DEFAULT_MAX_PIXELS  # extract's limit, for uploads and thumbnails
    thumb_size: int = 256
    weights: Optional[str] = None
    backend: str = "torch"
    audit: Optional[str] = None  # an imgfeat audit report folder: the review page


class ApiError(Exception):
    def __init__(self, status: int, message: str, parameter: Optional[str] = None) -> None:
        super().__init__(message)
        self.status, self.message, self.parameter = status, message, parameter


class ErrorBody(BaseModel):
    """Every error the API answers (4xx; a 500 says only that the server's log has the details)."""

    error: str = Field(description="what was wrong, in one sentence", examples=["no such id in this collection"])
    parameter: Optional[str] = Field(None, description="the parameter (or body, content-type) at fault",
                                     examples=["id"])


_WHY = {400: "A parameter or the body is not what this route takes", 404: "No such id, row or label here",
        405: "Method not allowed (the Allow header lists those that are)",
        413: "The body (or the image it decodes to) is larger than this server takes",
        415: "The body's Content-Type is not one this route takes",
        507: "The server's disk is full: what was asked could not be kept (nothing was changed)"}


def errors(*statuses: int) -> dict:
    """The ``responses`` entries of ``statuses``, each with the shared error body."""
    return {s: {"model": ErrorBody, "description": _WHY[s]} for s in statuses}


def error_response(status: int, message: str, parameter: Optional[str] = None,
                   headers: Optional[dict] = None) -> JSONResponse:
    body = {"error": message}
    if parameter:
        body["parameter"] = parameter
    return JSONResponse(body, status_code=status, headers=headers)


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
        from ...engines.quick import query_encoder

        with self._lock:
            if text not in self._encoders and text not in self._errors:
                if not text and True in self._encoders:  # the text encoder is the store's model: it embeds images
                    self._encoders[False] = self._encoders[True]
                else:
                    try:
                        self._encoders[text] = query_encoder(
                            self.collection.path, self.config.weights, text=text, backend=self.config.backend,
                            purpose="text queries are embedded" if text else "image queries are embedded")
                    except ImgfeatError as exc:
                        self._errors[text] = (str(exc) if self.collection.store is None else
                                              f"the store's model cannot be loaded here: {exc}")
            if text in self._errors:
                raise ApiError(400, self._errors[text])
            return self._encoders[text]


@dataclass
class ServerState:
    """Everything a request may need, made once by ``create_app`` and kept in ``app.state.server``."""

    config: ServeConfig
    live: LiveCollection
    pool: DecodePool
    thumbs: Thumbnails
    encoders: Encoders
    placeholder: bytes
    review: Optional[Review] = None
    extra: dict = field(default_factory=dict)


def server(request: Request) -> ServerState:
    """Dependency: the server's state."""
    return request.app.state.server


def collection(state: ServerState = Depends(server)) -> Collection:
    """Dependency: this request's state of the collection (a store that changed: the new one, loaded once)."""
    return state.live.get()


def config(state: ServerState = Depends(server)) -> ServeConfig:
    return state.config


# ---------------------------------------------------------------------------------------------- models
class Item(BaseModel):
    id: str = Field(examples=["chelsea"])
    row: int = Field(ge=0, description="the id's row in the collection (what the map's rows column holds)")
    label: Optional[str] = Field(None, description="its label (serve --labels), or null")
    score: Optional[float] = Field(None, description="cosine similarity to the query (search results only)",
                                   examples=[0.8731])


class SearchPage(BaseModel):
    query: dict[str, Any] = Field(description="the query as understood: id, text or the upload's size; label")
    offset: int
    k: int
    results: list[Item]
    more: bool = Field(description="whether a next page (offset + k) exists within --max-k")


def item(collection: Collection, row: int, score: Optional[float] = None) -> dict:
    d = {"id": collection.ids[row], "row": row, "label": collection.label_of(row)}
    if score is not None:
        d["score"] = round(score, 6)
    return d


def window(k: int, offset: int, max_k: int) -> int:
    """The page size inside the --max-k window: a page that reaches past it is cut there (the schema bounds
    ``offset`` below ``max_k``, so every schema-valid window is answered)."""
    return max(0, min(k, max_k - offset))


def page(collection: Collection, hits: list[Hit], k: int, offset: int, query: dict, max_k: int) -> JSONResponse:
    # a JSONResponse skips FastAPI's response-model validation and encoder (the model documents the body): most
    # of a search's cost
    return JSONResponse({"query": query, "offset": offset, "k": k,
                         "results": [item(collection, h.row, h.score) for h in hits],
                         "more": len(hits) == k and offset + k < min(max_k, collection.n)})


def row_of(collection: Collection, rid: str) -> int:
    row = collection.row_of.get(rid)
    if row is None:
        raise ApiError(404, "no such id in this collection", "id")
    return row


def known_label(collection: Collection, label: Optional[str]) -> Optional[str]:
    """``label`` if the collection has it (None and "" filter nothing); a label it has not: ``UnknownLabel``, which
    the app answers with a 404 wherever it is raised (here, before any work, or in ``Collection.search``)."""
    collection.label_code(label)
    return label or None


def content_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def read_body(request: Request, limit: int, what: str) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"{what} is {int(declared)} bytes; this server takes at most {limit}", "body")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"{what} is larger than this server's limit of {limit} bytes", "body")
        chunks.append(chunk)
    return b"".join(chunks)


def binary(arr: np.ndarray, key: str) -> Response:
    return Response(np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<"), copy=False).tobytes(),
                    media_type="application/octet-stream",
                    headers={"Cache-Control": "private, max-age=3600", "ETag": f'"{key}"'})


def binary_response(description: str) -> dict:
    """A 200 of raw octets, as OpenAPI says a binary body is."""
    return {200: {"description": description,
                  "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}}


def text_response(media_type: str, description: str) -> dict:
    return {200: {"description": description, "content": {media_type: {"schema": {"type": "string"}}}}}
