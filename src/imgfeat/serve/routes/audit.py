"""The review of an ``imgfeat audit`` report (``serve --audit REPORT``): suspects per issue and the reviewer's
decisions, downloadable as the ``--corrections`` TSV that ``probe``, ``diffuse`` and ``audit`` take back."""

from __future__ import annotations

import json
from typing import Literal, Optional

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field, ValidationError

from ..collection import Collection
from ..review import DecisionNotKept, NewLabel, Review, UnknownSuspect
from .common import MAX_PAGE, ServerState, collection, read_body, server, text_response
from .errors import ApiError, errors


class AuditInfo(BaseModel):
    available: bool = Field(description="whether the server reviews a report (serve --audit)")
    issues: dict[str, int] = Field(default_factory=dict, description="flagged images per issue")
    ranked: dict[str, int] = Field(default_factory=dict, description="images ranked per issue (flagged first)")
    labels: list[str] = Field(default_factory=list, description="every known label (a relabel may pick any)")
    decided: int = Field(0, description="decisions made so far")


class Neighbour(BaseModel):
    id: str
    label: str


class Suspect(BaseModel):
    id: str
    score: float = Field(description="the issue's score (lower: more suspect)")
    flag: bool = Field(description="whether the audit flags it (flagged images come first)")
    reviewed: str = Field(description="'keep' if a review kept it and the audit then stopped flagging it")
    given: str = Field(description="the label given")
    suggested: str = Field(description="the label the neighbours suggest")
    neighbours: list[Neighbour]
    decision: Literal["", "keep", "relabel", "drop"]
    new_label: str
    in_collection: bool = Field(description="whether the served features hold this id")


class AuditPage(BaseModel):
    issue: str
    total: int = Field(description="images ranked by this issue")
    flagged: int = Field(description="of which flagged (the first ones)")
    offset: int
    items: list[Suspect]


class DecisionIn(BaseModel):
    id: str = Field(description="any image of the report or of the collection")
    decision: Literal["keep", "relabel", "drop"]
    new_label: Optional[str] = Field(None, pattern=r"^[^\t\n\r]*$",
                                     description="relabel: the new label (default: the audit's suggestion)")
    confirm_new_label: bool = Field(False, description="relabel to a label no image has yet: say it is meant")


class DecisionOut(BaseModel):
    id: str
    decision: Literal["keep", "relabel", "drop"]
    new_label: str


def make_router(review: Optional[Review]) -> APIRouter:
    """The audit routes; without a report only ``/api/audit`` (``available: false``) is in the schema, and the rest
    answer 404 saying how to start a review."""
    router = APIRouter(tags=["audit"])
    listed = review is not None

    def reviewing(s: ServerState = Depends(server)) -> Review:
        if s.review is None:
            raise ApiError(404, "no audit to review: start imgfeat serve with --audit REPORT (imgfeat audit --out)",
                           "audit")
        return s.review

    @router.get("/api/audit", response_model=AuditInfo,
                summary="The audit under review: suspects per issue, decisions made")
    def audit_info(s: ServerState = Depends(server)) -> JSONResponse:
        c = s.live.get() if s.review is not None else None
        return JSONResponse({"available": s.review is not None,
                             **(s.review.summary(c.categories) if s.review else {})})

    @router.get("/api/audit/decisions.tsv", response_class=Response, include_in_schema=listed,
                responses={**text_response("text/tab-separated-values", "id<TAB>decision<TAB>new_label, with a "
                                                                        "header line (--corrections)"),
                           **errors(404)},
                summary="The decisions as id<TAB>decision<TAB>new_label (--corrections)")
    def audit_decisions(r: Review = Depends(reviewing)) -> Response:
        return Response(r.tsv(), media_type="text/tab-separated-values; charset=utf-8",
                        headers={"Content-Disposition": 'attachment; filename="corrections.tsv"'})

    @router.post("/api/audit/decision", response_model=DecisionOut, responses=errors(400, 404, 413, 507),
                 include_in_schema=listed, openapi_extra={"requestBody": {
                     "required": True, "content": {"application/json": {
                         "schema": DecisionIn.model_json_schema(),
                         "example": {"id": "train/00042.png", "decision": "relabel"}}}}},
                 summary="Record a decision on any image: keep, relabel (to new_label, default the suggestion) or drop")
    async def audit_decide(request: Request, r: Review = Depends(reviewing), s: ServerState = Depends(server),
                           c: Collection = Depends(collection)) -> JSONResponse:
        body = await read_body(request, s.config.max_json, "the JSON body")
        try:
            parsed = DecisionIn.model_validate(json.loads(body))
        except ValidationError as exc:
            where = exc.errors()[0].get("loc") or ("body",)
            raise ApiError(400, 'expected {"id": ..., "decision": "keep"|"relabel"|"drop", "new_label": ...}: '
                                f"{exc.errors()[0].get('msg', 'invalid')}", str(where[0])) from None
        except ValueError:
            raise ApiError(400, 'expected a JSON object {"id": ..., "decision": "keep"|"relabel"|"drop", '
                                '"new_label": ...}', "body") from None
        try:
            return JSONResponse(r.decide(parsed.id, parsed.decision, parsed.new_label,
                                         in_collection=lambda rid: rid in c.row_of, extra_labels=c.categories,
                                         confirm_new_label=parsed.confirm_new_label))
        except UnknownSuspect as exc:
            raise ApiError(404, str(exc), "id") from None
        except NewLabel as exc:
            raise ApiError(400, str(exc), "new_label") from None
        except DecisionNotKept as exc:
            raise ApiError(507, str(exc), "id") from None

    # after /api/audit/decision: a method /api/audit/decision does not take is answered (405, Allow) by its route
    @router.get("/api/audit/{issue}", response_model=AuditPage, responses=errors(400, 404), include_in_schema=listed,
                summary="Every image of one issue, flagged first, worst first, with the decisions made (paged)")
    def audit_page(issue: str, offset: int = Query(0, ge=0), limit: int = Query(50, ge=1, le=MAX_PAGE),
                   id: Optional[str] = Query(None, description="the page holding this image (offset ignored)"),
                   r: Review = Depends(reviewing), c: Collection = Depends(collection)) -> Response:
        try:
            page_ = r.page(issue, offset, limit, around=id)
        except UnknownSuspect as exc:
            raise ApiError(404, str(exc), "issue") from None
        for item_ in page_["items"]:
            item_["in_collection"] = item_["id"] in c.row_of
        return JSONResponse(page_)

    return router
