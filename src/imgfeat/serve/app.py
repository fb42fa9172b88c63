"""The web app and HTTP API over one :class:`Collection` (FastAPI on uvicorn).

Pages (``/``, ``/map``, ``/duplicates``) are static files shipped in the package; they call the API
under ``/api/`` (described at ``/openapi.json``) and ``/thumb/{id}``. Blocking work (faiss, the model,
decoding) runs in the thread pool or the decode processes, never on the event loop. No path from a
request reaches the file system: ids are looked up in the collection. Every error is a JSON body
``{"error": ..., "parameter": ...}`` with a 4xx status; a 500 says only that the log has details.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from .._version import __version__
from ..data.decode import DEFAULT_MAX_PIXELS, decode_bytes
from ..engines.encode import no_text_tower
from ..errors import ImgfeatError, InvalidParameterError
from ..tools.dedup import check_threshold
from .collection import Collection, Hit, LiveCollection
from .review import Review
from .media import DecodePool, Thumbnails, placeholder_png
from .security import Guard, allowed_hosts

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"
MAX_PAGE = 200  # results per page
PAGES = {"/": "search.html", "/map": "map.html", "/duplicates": "duplicates.html", "/audit": "audit.html"}


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


def _error(status: int, message: str, parameter: Optional[str] = None) -> JSONResponse:
    body = {"error": message}
    if parameter:
        body["parameter"] = parameter
    return JSONResponse(body, status_code=status)


class Encoders:
    """The store's model, built once on the first image or text query; its failure is remembered and
    reported to every later one."""

    def __init__(self, collection: Collection, config: ServeConfig) -> None:
        self.collection, self.config = collection, config
        self._lock = threading.Lock()
        self._encoder = None
        self._error: Optional[str] = None
        # every forward on one thread: the model's per-thread caches (oneDNN primitives, allocator) then
        # exist once, instead of once per thread of the request pool (memory that grew with concurrency)
        self.thread = ThreadPoolExecutor(1, thread_name_prefix="imgfeat-model")

    async def encode(self, encoder, pixels) -> np.ndarray:
        return (await asyncio.wrap_future(self.thread.submit(encoder.encode, [pixels])))[0]

    async def encode_text(self, encoder, text: str) -> np.ndarray:
        return (await asyncio.wrap_future(self.thread.submit(encoder.encode_text, [text])))[0]

    def get(self):
        from ..engines.encode import StoreEncoder

        with self._lock:
            if self._encoder is None and self._error is None:
                if self.collection.store is None:
                    self._error = ("image queries need a feature store (its manifest names the model); "
                                   "this collection is a file: query by id")
                else:
                    try:
                        self._encoder = StoreEncoder(self.collection.store, self.config.weights,
                                                     backend=self.config.backend)
                    except ImgfeatError as exc:
                        self._error = f"the store's model cannot be loaded here: {exc}"
            if self._error:
                raise ApiError(400, self._error)
            return self._encoder


def _content_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def _read_body(request: Request, limit: int, what: str) -> bytes:
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


def _binary(arr: np.ndarray, key: str) -> Response:
    return Response(np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<"), copy=False).tobytes(),
                    media_type="application/octet-stream",
                    headers={"Cache-Control": "private, max-age=3600", "ETag": f'"{key}"'})


def create_app(collection: Collection, config: Optional[ServeConfig] = None) -> FastAPI:
    config = config or ServeConfig()
    app = FastAPI(title="imgfeat serve", version=__version__, docs_url=None, redoc_url=None,  # docs pages load a CDN
                  description="Search, map and review a collection of image feature vectors.")
    pool = DecodePool(config.decode_workers, config.decode_timeout, config.max_pixels)
    thumbs = Thumbnails(collection.cache, pool, config.thumb_size)
    encoders = Encoders(collection, config)
    placeholder = placeholder_png()
    live = LiveCollection(collection)
    app.state.live, app.state.pool, app.state.encoders = live, pool, encoders
    _errors(app)

    def item(collection: Collection, row: int, score: Optional[float] = None) -> dict:
        d = {"id": collection.ids[row], "row": row, "label": collection.label_of(row)}
        if score is not None:
            d["score"] = round(score, 6)
        return d

    def page(collection: Collection, hits: list[Hit], k: int, offset: int, query: dict) -> JSONResponse:
        # a JSONResponse skips FastAPI's response-model validation and encoder: most of a search's cost
        return JSONResponse({"query": query, "offset": offset, "k": k, "results": [item(collection, h.row, h.score) for h in hits],
                             "more": len(hits) == k and offset + k < min(config.max_k, collection.n)})

    def check_window(k: int, offset: int) -> None:
        if offset + k > config.max_k:
            raise ApiError(400, f"offset + k must be at most {config.max_k} (this server's --max-k)", "offset")

    def row_of(collection: Collection, rid: str) -> int:
        row = collection.row_of.get(rid)
        if row is None:
            raise ApiError(404, "no such id in this collection", "id")
        return row

    # ---------------------------------------------------------------- pages
    for route, name in PAGES.items():
        app.add_api_route(route, _page(STATIC / name), include_in_schema=False, methods=["GET"])
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    # ---------------------------------------------------------------- API
    @app.get("/api/info", summary="The collection: model, dimension, count, identity, labels")
    def info() -> JSONResponse:
        collection = live.get()  # this request's state of the collection (a changed store: the new one)
        return JSONResponse({**collection.info(), "max_k": config.max_k, "max_page": MAX_PAGE,
                             "max_upload": config.max_upload})

    @app.get("/api/neighbours/{id:path}", summary="Nearest neighbours of an id (itself left out)")
    def neighbours(id: str, k: int = Query(20, ge=1, le=MAX_PAGE), offset: int = Query(0, ge=0),
                   label: Optional[str] = None) -> JSONResponse:
        collection = live.get()  # this request's state of the collection (a changed store: the new one)
        check_window(k, offset)
        row = row_of(collection, id)
        hits = collection.search(collection.vector(row), k, offset, label, exclude=row)
        return page(collection, hits, k, offset, {"id": id, "label": label})

    @app.post("/api/search/image", summary="Search by an uploaded image (the request body is the file)")
    async def search_image(request: Request, k: int = Query(20, ge=1, le=MAX_PAGE), offset: int = Query(0, ge=0),
                           label: Optional[str] = None) -> JSONResponse:
        collection = live.get()  # this request's state of the collection (a changed store: the new one)
        check_window(k, offset)
        collection.label_code(label)
        ctype = _content_type(request)
        if not (ctype.startswith("image/") or ctype == "application/octet-stream"):
            raise ApiError(415, "send the image file itself as the body, with Content-Type image/* or "
                                "application/octet-stream", "content-type")
        data = await _read_body(request, config.max_upload, "the upload")
        encoder = await run_in_threadpool(encoders.get)
        pixels = await run_in_threadpool(pool.run, decode_bytes, data, encoder.preprocess)
        if isinstance(pixels, str):
            raise ApiError(413 if pixels.startswith("too large") else 400, f"not a usable image: {pixels}", "body")
        vector = await encoders.encode(encoder, pixels)
        hits = await run_in_threadpool(collection.search, vector, k, offset, label)
        return page(collection, hits, k, offset, {"image": f"{len(data)} bytes", "label": label})

    @app.get("/api/search/text", summary="Search by text (stores of CLIP-family models)")
    async def search_text(q: str = Query(..., min_length=1, max_length=1000), k: int = Query(20, ge=1, le=MAX_PAGE),
                          offset: int = Query(0, ge=0), label: Optional[str] = None) -> JSONResponse:
        collection = live.get()  # this request's state of the collection (a changed store: the new one)
        check_window(k, offset)
        collection.label_code(label)
        if not collection.manifest.get("text_tower"):
            raise ApiError(400, no_text_tower(collection.manifest.get("model")), "q")
        encoder = await run_in_threadpool(encoders.get)
        vector = await encoders.encode_text(encoder, q)
        hits = await run_in_threadpool(collection.search, vector, k, offset, label)
        return page(collection, hits, k, offset, {"text": q, "label": label})

    @app.post("/api/rows", summary="Ids and labels of rows (a map selection); format=txt gives every id as text")
    async def rows(request: Request, format: str = Query("json", pattern="^(json|txt)$"),
                   limit: int = Query(MAX_PAGE, ge=0, le=10_000)) -> Response:
        collection = live.get()  # this request's state of the collection (a changed store: the new one)
        ctype = _content_type(request)
        if ctype == "application/json":
            body = await _read_body(request, config.max_json, "the JSON body")
            try:
                parsed = json.loads(body)
                sel = np.asarray(parsed["rows"], dtype=np.int64).reshape(-1)
            except (ValueError, KeyError, TypeError):
                raise ApiError(400, 'expected {"rows": [integers]}', "rows") from None
        elif ctype == "application/octet-stream":  # int32 little-endian: a selection of a million points
            body = await _read_body(request, 4 * collection.n + 4, "the row list")
            if len(body) % 4:
                raise ApiError(400, "an int32 row list has a multiple of 4 bytes", "rows")
            sel = np.frombuffer(body, "<i4").astype(np.int64)
        else:
            raise ApiError(415, "send application/json {\"rows\": [...]} or application/octet-stream int32 rows",
                           "content-type")
        if len(sel) and (sel.min() < 0 or sel.max() >= collection.n):
            raise ApiError(400, f"rows must be in [0, {collection.n})", "rows")
        if format == "txt":
            return PlainTextResponse("".join(collection.ids[r] + "\n" for r in sel.tolist()),
                                     headers={"Content-Disposition": 'attachment; filename="selection.txt"'})
        return JSONResponse({"count": int(len(sel)), "items": [item(collection, r) for r in sel[:limit].tolist()]})

    @app.get("/api/map", summary="The map: point count, how it was made, label names, binary column URLs")
    def map_info() -> JSONResponse:
        collection = live.get()  # this request's state of the collection (a changed store: the new one)
        m = collection.map()
        return JSONResponse({"count": int(len(m["rows"])), "method": m["method"], "labels": collection.categories,
                "xy": "/api/map/xy.f32", "rows": "/api/map/rows.i32", "codes": "/api/map/codes.u16",
                "layout": "xy: float32 little-endian x0 y0 x1 y1 ... in [-1, 1]; rows: int32 collection row of each "
                          "point; codes: uint16 label index + 1 per point (0: unlabelled)"})

    @app.get("/api/map/xy.f32", summary="Map coordinates, float32 pairs (binary)")
    def map_xy() -> Response:
        collection = live.get()  # this request's state of the collection (a changed store: the new one)
        return _binary(collection.map()["xy"], f"{collection.key}-xy")

    @app.get("/api/map/rows.i32", summary="Collection row of each map point, int32 (binary)")
    def map_rows() -> Response:
        collection = live.get()  # this request's state of the collection (a changed store: the new one)
        return _binary(collection.map()["rows"], f"{collection.key}-rows")

    @app.get("/api/map/codes.u16", summary="Label index + 1 of each map point, uint16 (binary)")
    def map_codes() -> Response:
        collection = live.get()  # this request's state of the collection (a changed store: the new one)
        rows = collection.map()["rows"]
        return _binary((collection.codes[rows] + 1).astype(np.uint16), f"{collection.key}-codes")

    def groups(collection: Collection, threshold: float):
        return collection.duplicate_groups(round(float(threshold), 4))

    @app.get("/api/duplicates", summary="Near-duplicate groups at a cosine threshold (paged); 202 with progress "
                                        "while the neighbour lists are first computed")
    def duplicates(threshold: float = Query(0.95), offset: int = Query(0, ge=0),
                   limit: int = Query(50, ge=1, le=MAX_PAGE)) -> Response:
        collection = live.get()  # this request's state of the collection (a changed store: the new one)
        check_threshold(threshold)
        progress = collection.start_neighbours()
        if not progress["ready"]:
            return JSONResponse({"status": "computing", **progress}, status_code=202)
        found = groups(collection, threshold)
        return JSONResponse({"threshold": threshold, "groups_total": len(found),
                             "duplicates_total": int(sum(len(g) - 1 for g in found)), "offset": offset,
                             "groups": [[item(collection, int(r)) for r in g] for g in found[offset:offset + limit]]})

    @app.get("/api/duplicates.tsv", summary="Every group at a threshold as group<TAB>id lines (imgfeat dedup --out)")
    def duplicates_tsv(threshold: float = Query(0.95)) -> Response:
        collection = live.get()  # this request's state of the collection (a changed store: the new one)
        check_threshold(threshold)
        found = groups(collection, threshold)
        text = "".join(f"{g}\t{collection.ids[r]}\n" for g, members in enumerate(found) for r in members.tolist())
        return PlainTextResponse(text, headers={"Content-Disposition": 'attachment; filename="duplicates.tsv"'})

    @app.get("/thumb/{id:path}", summary="A JPEG thumbnail of an id's image (404 and a placeholder when unreadable)")
    def thumb(id: str, request: Request) -> Response:
        collection = live.get()  # this request's state of the collection (a changed store: the new one)
        row = collection.row_of.get(id)
        if row is None:
            return Response(placeholder, 404, media_type="image/png", headers={"X-Error": "no such id"})
        path = collection.paths[row]
        etag = thumbs.etag(id, path)
        if request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers={"ETag": etag})
        result = thumbs.get(id, path)
        if isinstance(result, str):
            return Response(placeholder, 404, media_type="image/png",
                            headers={"X-Error": result.encode("ascii", "replace").decode()[:200],
                                     "Cache-Control": "no-store"})
        return Response(result, media_type="image/jpeg",
                        headers={"ETag": etag, "Cache-Control": "private, max-age=86400"})

    review = Review(config.audit, collection.cache) if config.audit else None

    def reviewing() -> Review:
        if review is None:
            raise ApiError(404, "no audit to review: start imgfeat serve with --audit REPORT (imgfeat audit --out)",
                           "audit")
        return review

    @app.get("/api/audit", summary="The audit under review: suspects per issue, decisions made")
    def audit_info() -> JSONResponse:
        return JSONResponse({"available": review is not None, **(review.summary() if review else {})})

    @app.get("/api/audit/decisions.tsv", summary="The decisions as id<TAB>decision<TAB>new_label (--corrections)")
    def audit_decisions() -> Response:
        return PlainTextResponse(reviewing().tsv(),
                                 headers={"Content-Disposition": 'attachment; filename="corrections.tsv"'})

    @app.get("/api/audit/{issue}", summary="Suspects of one issue, worst first, with the decisions made (paged)")
    def audit_page(issue: str, offset: int = Query(0, ge=0), limit: int = Query(50, ge=1, le=MAX_PAGE)) -> Response:
        collection = live.get()
        page_ = reviewing().page(issue, offset, limit)
        for item_ in page_["items"]:
            item_["in_collection"] = item_["id"] in collection.row_of
        return JSONResponse(page_)

    @app.post("/api/audit/decision", summary="Record a decision: keep, relabel (new_label) or drop an id")
    async def audit_decide(request: Request) -> JSONResponse:
        body = await _read_body(request, config.max_json, "the JSON body")
        try:
            parsed = json.loads(body)
            rid, decision = str(parsed["id"]), str(parsed["decision"])
            new_label = parsed.get("new_label")
        except (ValueError, KeyError, TypeError):
            raise ApiError(400, 'expected {"id": ..., "decision": "keep"|"relabel"|"drop", "new_label": ...}',
                           "body") from None
        return JSONResponse(reviewing().decide(rid, decision, None if new_label is None else str(new_label)))

    if config.cors:
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(config.cors), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])
    app.add_middleware(Guard, hosts=allowed_hosts(config.host, config.allow_hosts), token=config.token)
    return app


def _page(path: Path):
    def handler() -> FileResponse:
        return FileResponse(path, media_type="text/html", headers={"Cache-Control": "no-cache"})
    return handler


def _errors(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError):
        return _error(exc.status, exc.message, exc.parameter)

    @app.exception_handler(InvalidParameterError)
    async def bad_parameter(request: Request, exc: InvalidParameterError):
        return _error(400, str(exc), exc.param)

    @app.exception_handler(ImgfeatError)
    async def imgfeat_error(request: Request, exc: ImgfeatError):
        return _error(400, str(exc))

    @app.exception_handler(RequestValidationError)
    async def validation(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        loc = [str(x) for x in first.get("loc", ()) if x not in ("query", "path", "body")]
        param = loc[-1] if loc else None
        return _error(400, f"The '{param}' parameter: {first.get('msg', 'invalid')}", param)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        return _error(exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception):
        log.exception("error serving %s", request.url.path)
        return _error(500, "internal server error; the details are in the server's log")
