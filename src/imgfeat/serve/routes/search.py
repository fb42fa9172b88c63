"""The collection and search: ``/api/info``, neighbours of an id, search by an uploaded image or by text."""

from __future__ import annotations

from typing import Any, Optional

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from ...data.decode import decode_bytes
from ...models.names import no_text_tower
from ..collection import Collection
from .common import (MAX_PAGE, SearchPage, ServerState, collection, content_type, known_label, page,
                     read_body, row_of, server, window)
from .errors import ApiError, errors

class Info(BaseModel):
    features: str = Field(description="the features file or store the server reads")
    count: int = Field(description="vectors in the collection now")
    dim: int
    model: Optional[str] = None
    layer: Optional[str] = None
    pool: Optional[str] = None
    weights: Optional[str] = Field(None, description="the weights' hash (stores)")
    store: bool = Field(description="a feature store (image queries need one; it can change while served)")
    index: str = Field(description="the faiss index searched (exact, ivf, or a factory string), with its search "
                                   "settings (nprobe, re-ranked candidates)")
    index_recall: Optional[dict[str, Any]] = Field(None, description="an auto index's recall@10 against exact "
                                                                     "neighbours of sampled rows, measured when built")
    labels: list[str] = Field(description="label names (serve --labels), in the order the map's codes use")
    thumbnails: bool = Field(description="whether the features record image paths (thumbnails)")
    text: bool = Field(description="a CLIP-family store: /api/search/text is available")
    identity: dict[str, Any] = Field(description="what the vectors are: model, layer, pool, weights, dim, dtype, "
                                                 "relu, l2")
    max_k: int = Field(description="offset + k never reaches past this (serve --max-k)")
    max_page: int = Field(description="the largest k (or limit) of one page")
    max_upload: int = Field(description="the largest upload, in bytes")


def make_router(state: ServerState, text: bool, images: bool) -> APIRouter:
    """The search routes; ``text`` / ``images``: whether this collection can embed text / image queries (a route
    it cannot serve still answers, with a 400 saying why, but is left out of the schema)."""
    cfg = state.config
    max_k = cfg.max_k
    router = APIRouter(tags=["search"])
    K = Query(20, ge=1, le=MAX_PAGE, description=f"results per page (at most {MAX_PAGE})")
    OFFSET = Query(0, ge=0, le=max_k - 1, description=f"rank of the first result; a page ends at --max-k ({max_k})")
    LABEL = Query(None, description="only results with this label (a label of /api/info's labels)")

    @router.get("/api/info", response_model=Info, summary="The collection: model, dimension, count, identity, labels")
    def info(c: Collection = Depends(collection)) -> JSONResponse:
        return JSONResponse({**c.info(), "max_k": max_k, "max_page": MAX_PAGE, "max_upload": cfg.max_upload})

    @router.get("/api/neighbours/{id:path}", response_model=SearchPage, responses=errors(400, 404),
                summary="Nearest neighbours of an id (itself left out)")
    def neighbours(id: str, k: int = K, offset: int = OFFSET, label: Optional[str] = LABEL,
                   c: Collection = Depends(collection)) -> JSONResponse:
        row = row_of(c, id)
        label = known_label(c, label)
        k = window(k, offset, max_k)
        hits = c.search(c.vector(row), k, offset, label, exclude=row) if k else []
        return page(c, hits, k, offset, {"id": id, "label": label}, max_k)

    image_body = {"required": True, "description": f"the image file itself (JPEG, PNG, WebP, HEIC ...; at most "
                                                   f"{cfg.max_upload} bytes and --max-pixels once decoded)",
                  "content": {media: {"schema": {"type": "string", "format": "binary", "maxLength": cfg.max_upload}}
                              for media in ("image/*", "application/octet-stream")}}

    @router.post("/api/search/image", response_model=SearchPage, responses=errors(400, 404, 413, 415),
                 include_in_schema=images, openapi_extra={"requestBody": image_body},
                 summary="Search by an uploaded image (the request body is the file)")
    async def search_image(request: Request, k: int = K, offset: int = OFFSET, label: Optional[str] = LABEL,
                           c: Collection = Depends(collection), s: ServerState = Depends(server)) -> JSONResponse:
        label = known_label(c, label)
        ctype = content_type(request)
        if not (ctype.startswith("image/") or ctype == "application/octet-stream"):
            raise ApiError(415, "send the image file itself as the body, with Content-Type image/* or "
                                "application/octet-stream", "content-type")
        data = await read_body(request, cfg.max_upload, "the upload")
        encoder = await run_in_threadpool(s.encoders.get)
        pixels = await run_in_threadpool(s.pool.run, decode_bytes, data, encoder.preprocess)
        if isinstance(pixels, str):
            raise ApiError(413 if pixels.startswith("too large") else 400, f"not a usable image: {pixels}", "body")
        vector = await s.encoders.encode(encoder, pixels)
        k = window(k, offset, max_k)
        hits = await run_in_threadpool(c.search, vector, k, offset, label) if k else []
        return page(c, hits, k, offset, {"image": f"{len(data)} bytes", "label": label}, max_k)

    @router.get("/api/search/text", response_model=SearchPage, responses=errors(400, 404), include_in_schema=text,
                summary="Search by text (stores of CLIP-family models)")
    async def search_text(q: str = Query(..., min_length=1, max_length=1000, description="the text to search for"),
                          k: int = K, offset: int = OFFSET, label: Optional[str] = LABEL,
                          c: Collection = Depends(collection), s: ServerState = Depends(server)) -> JSONResponse:
        if not c.manifest.get("text_tower"):
            raise ApiError(400, no_text_tower(c.manifest.get("model")), "q")
        label = known_label(c, label)
        encoder = await run_in_threadpool(s.encoders.get, True)
        vector = await s.encoders.encode_text(encoder, q)
        k = window(k, offset, max_k)
        hits = await run_in_threadpool(c.search, vector, k, offset, label) if k else []
        return page(c, hits, k, offset, {"text": q, "label": label}, max_k)

    return router
