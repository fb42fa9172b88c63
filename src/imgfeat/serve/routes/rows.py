"""A selection of rows (a map's lasso): ``/api/rows`` gives their ids and labels, or every id as text."""

from __future__ import annotations

import json

import numpy as np
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, Field

from ..collection import Collection
from .common import MAX_PAGE, Item, ServerState, collection, content_type, item, read_body
from .errors import ApiError, errors

INT32_MAX = 2 ** 31 - 1


class RowsPage(BaseModel):
    count: int = Field(description="rows in the selection")
    items: list[Item] = Field(description="the first `limit` of them")


async def _selection(request: Request, c: Collection, max_json: int, max_items: int) -> np.ndarray:
    """The rows a request names: a JSON ``{"rows": [...]}`` (at most ``max_items``) or int32 little-endian octets,
    each a row of the collection (404 otherwise)."""
    ctype = content_type(request)
    if ctype == "application/json":
        body = await read_body(request, max_json, "the JSON body")
        try:
            listed = json.loads(body)["rows"]
            if not isinstance(listed, list) or not all(type(r) is int for r in listed):
                raise TypeError("not a list of integers")
            sel = np.asarray(listed, dtype=np.int64).reshape(-1)
        except (ValueError, KeyError, TypeError, OverflowError):
            raise ApiError(400, 'expected {"rows": [integers]}', "rows") from None
        if len(sel) > max_items:  # what the schema says, whatever the body's bytes
            raise ApiError(413, f"at most {max_items} rows in a JSON body; send more as int32 octets "
                                "(Content-Type application/octet-stream)", "rows")
    elif ctype == "application/octet-stream":  # int32 little-endian: a selection of a million points
        body = await read_body(request, 4 * c.n + 4, "the row list")
        if len(body) % 4:
            raise ApiError(400, "an int32 row list has a multiple of 4 bytes", "rows")
        sel = np.frombuffer(body, "<i4").astype(np.int64)
    else:
        raise ApiError(415, "send application/json {\"rows\": [...]} or application/octet-stream int32 rows",
                       "content-type")
    if len(sel) and (sel.min() < 0 or sel.max() >= c.n):
        raise ApiError(404, f"no such row: rows are in [0, {c.n})", "rows")
    return sel


def make_router(state: ServerState) -> APIRouter:
    cfg = state.config
    router = APIRouter(tags=["search"])
    max_items = cfg.max_json // 12  # "2147483647, " per row: a schema-valid list always fits --max-json
    rows_body = {"required": True, "description": "the rows: JSON, or int32 little-endian octets (a selection of a "
                                                  "million points)",
                 "content": {"application/json": {"schema": {
                     "type": "object", "required": ["rows"], "properties": {"rows": {
                         "type": "array", "maxItems": max_items,
                         "items": {"type": "integer", "minimum": 0, "maximum": INT32_MAX}}}},
                     "example": {"rows": [0, 5, 17]}},
                     "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}

    @router.post("/api/rows", response_model=RowsPage, responses={
        **errors(400, 404, 413, 415),
        200: {"description": "the selection's count and first items (format=json), or every id, one per line "
                             "(format=txt)", "content": {"text/plain": {"schema": {"type": "string"}}}}},
        openapi_extra={"requestBody": rows_body},
        summary="Ids and labels of rows (a map selection); format=txt gives every id as text")
    async def rows(request: Request, format: str = Query("json", pattern="^(json|txt)$"),
                   limit: int = Query(MAX_PAGE, ge=0, le=10_000, description="items listed (format=json)"),
                   c: Collection = Depends(collection)) -> Response:
        sel = await _selection(request, c, cfg.max_json, max_items)
        if format == "txt":
            return PlainTextResponse("".join(c.ids[r] + "\n" for r in sel.tolist()),
                                     headers={"Content-Disposition": 'attachment; filename="selection.txt"'})
        return JSONResponse({"count": int(len(sel)), "items": [item(c, r) for r in sel[:limit].tolist()]})

    return router
