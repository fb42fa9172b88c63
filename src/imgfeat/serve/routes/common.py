"""What every router shares: the server's state reached through dependencies, the result item and page models, and
the request-body helpers (the error body and statuses are ``routes.errors``; the config ``serve.config``; the
query encoders ``serve.encoders``).

Every error is ``{"error": ..., "parameter": ...}`` with a 4xx status; each route declares the statuses it can
answer, so a client generated from ``/openapi.json`` knows them. Bounds the
server enforces are in the parameters' schemas, so what the schema allows is what the server accepts; what
depends on the data (an id, a label, a row that does not exist) is a 404.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
from fastapi import Depends, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from ..collection import Collection, Hit, LiveCollection
from ..config import ServeConfig
from ..encoders import Encoders
from ..media import DecodePool, Thumbnails
from ..review import Review
from .errors import ApiError

MAX_PAGE = 200  # results per page


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
