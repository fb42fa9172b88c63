"""Thumbnails of the collection's images, made once per id in the decode processes and kept on disk."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from ..collection import Collection
from .common import ServerState, collection, server

PNG = {"image/png": {"schema": {"type": "string", "format": "binary"}}}


def make_router() -> APIRouter:
    router = APIRouter(tags=["media"])

    @router.get("/thumb/{id:path}", response_class=Response, responses={
        200: {"description": "a JPEG thumbnail (the longer side serve --thumb-size px)",
              "content": {"image/jpeg": {"schema": {"type": "string", "format": "binary"}}}},
        304: {"description": "unchanged since the ETag sent in If-None-Match"},
        404: {"description": "no such id, or its image cannot be read: a grey placeholder PNG, the reason in the "
                             "X-Error header (an id no route can hold, e.g. with a line break: the JSON error)",
              "content": {**PNG, "application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}}},
        summary="A JPEG thumbnail of an id's image (404 and a placeholder when unreadable)")
    def thumb(id: str, request: Request, c: Collection = Depends(collection),
              s: ServerState = Depends(server)) -> Response:
        row = c.row_of.get(id)
        if row is None:
            return Response(s.placeholder, 404, media_type="image/png", headers={"X-Error": "no such id"})
        path = c.paths[row]
        etag = s.thumbs.etag(id, path)
        if request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers={"ETag": etag})
        result = s.thumbs.get(id, path)
        if isinstance(result, str):
            return Response(s.placeholder, 404, media_type="image/png",
                            headers={"X-Error": result.encode("ascii", "replace").decode()[:200],
                                     "Cache-Control": "no-store"})
        return Response(result, media_type="image/jpeg",
                        headers={"ETag": etag, "Cache-Control": "private, max-age=86400"})

    return router
