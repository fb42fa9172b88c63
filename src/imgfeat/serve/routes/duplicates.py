"""Near-duplicate groups at a cosine threshold: paged JSON for the review page, every group as TSV."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Depends, Query
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, Field

from ...tools.dedup import THRESHOLD_RANGE, group_lines
from ..collection import Collection
from .common import MAX_PAGE, Item, collection, item, text_response
from .errors import errors

THRESHOLD = Query(0.95, ge=THRESHOLD_RANGE[0], le=THRESHOLD_RANGE[1],
                  description="cosine similarity at or above which two images are duplicates")


class DuplicatesPage(BaseModel):
    threshold: float
    groups_total: int = Field(description="groups at this threshold")
    duplicates_total: int = Field(description="images beyond each group's representative")
    offset: int
    groups: list[list[Item]] = Field(description="each group's representative first; every member is within the "
                                                 "threshold of it")


class Progress(BaseModel):
    status: Literal["computing"]
    ready: bool
    done: int = Field(description="images whose neighbours are found")
    total: int


def make_router() -> APIRouter:
    router = APIRouter(tags=["duplicates"])

    def groups(c: Collection, threshold: float):
        return c.duplicate_groups(round(float(threshold), 4))

    @router.get("/api/duplicates", response_model=DuplicatesPage,
                responses={202: {"model": Progress, "description": "the neighbour lists are being computed (once "
                                                                      "per collection): ask again"}, **errors(400)},
                summary="Near-duplicate groups at a cosine threshold (paged); 202 with progress while the neighbour "
                        "lists are first computed")
    def duplicates(threshold: float = THRESHOLD, offset: int = Query(0, ge=0),
                   limit: int = Query(50, ge=1, le=MAX_PAGE), c: Collection = Depends(collection)) -> Response:
        progress = c.start_neighbours()
        if not progress["ready"]:
            return JSONResponse({"status": "computing", **progress}, status_code=202)
        found = groups(c, threshold)
        return JSONResponse({"threshold": threshold, "groups_total": len(found),
                             "duplicates_total": found.duplicates, "offset": offset,
                             "groups": [[item(c, int(r)) for r in g] for g in found[offset:offset + limit]]})

    @router.get("/api/duplicates.tsv", response_class=Response,
                responses={**text_response("text/tab-separated-values", "group<TAB>id lines, each group's "
                                                                        "representative first (imgfeat dedup --out); "
                                                                        "waits for the neighbour lists if need be"),
                           **errors(400)},
                summary="Every group at a threshold as group<TAB>id lines (imgfeat dedup --out)")
    def duplicates_tsv(threshold: float = THRESHOLD, c: Collection = Depends(collection)) -> Response:
        found = groups(c, threshold)  # written a chunk of ids at a time, as imgfeat dedup --out writes them
        return StreamingResponse(group_lines(found, c.ids), media_type="text/tab-separated-values; charset=utf-8",
                                 headers={"Content-Disposition": 'attachment; filename="duplicates.tsv"'})

    return router
