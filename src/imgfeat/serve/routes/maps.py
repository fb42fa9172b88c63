"""The 2-D map: its description, and its columns as little-endian binary arrays (the web app draws a
million points from them with WebGL)."""

from __future__ import annotations

import numpy as np
from typing import Literal

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from ..collection import Collection
from .common import binary, binary_response, collection


class MapInfo(BaseModel):
    count: int = Field(description="points on the map")
    method: str = Field(description="how the map was made (t-SNE, UMAP, a given file)")
    labels: list[str] = Field(description="label names; codes.u16 holds index + 1 (0: unlabelled)")
    xy: str = Field(examples=["/api/map/xy.f32"])
    rows: str = Field(examples=["/api/map/rows.i32"])
    codes: str = Field(examples=["/api/map/codes.u16"])
    layout: str = Field(description="the binary columns' layout")


class MapProgress(BaseModel):
    status: Literal["computing"]
    ready: bool
    step: str = Field(description="what is being computed now, e.g. 't-SNE of 2,000 points (the longest step)'")
    done: int = Field(description="steps finished")
    total: int = Field(description="steps in all")
    elapsed_s: float = Field(description="seconds since the map was started")


def make_router() -> APIRouter:
    router = APIRouter(tags=["map"])

    @router.get("/api/map", response_model=MapInfo,
                responses={202: {"model": MapProgress, "description": "the map is being made (once per collection): "
                                                                        "ask again"}},
                summary="The map: point count, how it was made, label names, binary column URLs; 202 with the step "
                        "being computed while the map is first made")
    def map_info(c: Collection = Depends(collection)) -> JSONResponse:
        progress = c.start_map()
        if not progress["ready"]:
            return JSONResponse({"status": "computing", **progress}, status_code=202)
        m = c.map()
        return JSONResponse({"count": int(len(m["rows"])), "method": m["method"], "labels": c.categories,
                             "xy": "/api/map/xy.f32", "rows": "/api/map/rows.i32", "codes": "/api/map/codes.u16",
                             "layout": "xy: float32 little-endian x0 y0 x1 y1 ... in [-1, 1]; rows: int32 collection "
                                       "row of each point; codes: uint16 label index + 1 per point (0: unlabelled)"})

    @router.get("/api/map/xy.f32", response_class=Response, summary="Map coordinates, float32 pairs (binary)",
                responses=binary_response("float32 little-endian, count x 2 (x0 y0 x1 y1 ...), in [-1, 1]"))
    def map_xy(c: Collection = Depends(collection)) -> Response:
        return binary(c.map()["xy"], f"{c.key}-xy")

    @router.get("/api/map/rows.i32", response_class=Response,
                summary="Collection row of each map point, int32 (binary)",
                responses=binary_response("int32 little-endian, count values: the collection row of each point"))
    def map_rows(c: Collection = Depends(collection)) -> Response:
        return binary(c.map()["rows"], f"{c.key}-rows")

    @router.get("/api/map/codes.u16", response_class=Response,
                summary="Label index + 1 of each map point, uint16 (binary)",
                responses=binary_response("uint16 little-endian, count values: label index + 1 (0: unlabelled)"))
    def map_codes(c: Collection = Depends(collection)) -> Response:
        rows = c.map()["rows"]
        return binary((c.codes[rows] + 1).astype(np.uint16), f"{c.key}-codes")

    return router
