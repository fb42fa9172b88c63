"""The web app and HTTP API over one :class:`Collection` (FastAPI on uvicorn).

Pages (``/``, ``/map``, ``/duplicates``, ``/audit``) are static files shipped in the package; they call the API
under ``/api/`` and ``/thumb/{id}``, described at ``/openapi.json`` (the routers in ``routes/``: their response
models, request bodies, bounds and every status they answer). Blocking work (faiss, the model, decoding) runs in
the thread pool or the decode processes, never on the event loop. No path from a request reaches the file system:
ids are looked up in the collection. Every error is a JSON body ``{"error": ..., "parameter": ...}`` with a 4xx
status (a 405 with its ``Allow`` header); a 500 says only that the log has details.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from .._version import __version__
from ..errors import ImgfeatError, InvalidParameterError
from .collection import Collection, LiveCollection, UnknownLabel
from .media import DecodePool, Thumbnails, placeholder_png
from .review import Review
from .routes import audit, duplicates, maps, media, rows, search
from .config import ServeConfig
from .encoders import Encoders
from .routes.common import MAX_PAGE, ServerState
from .routes.errors import ApiError, error_response
from .security import Guard, allowed_hosts

__all__ = ["ServeConfig", "create_app", "ApiError", "MAX_PAGE", "PAGES"]

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"
PAGES = {"/": "search.html", "/map": "map.html", "/duplicates": "duplicates.html", "/audit": "audit.html"}


def create_app(collection: Collection, config: Optional[ServeConfig] = None) -> FastAPI:
    config = config or ServeConfig()
    app = FastAPI(title="imgfeat serve", version=__version__, docs_url=None, redoc_url=None,  # docs pages load a CDN
                  description="Search, map and review a collection of image feature vectors. Errors are "
                              "`{\"error\", \"parameter\"}` JSON bodies; binary columns are little-endian.")
    pool = DecodePool(config.decode_workers, config.decode_timeout, config.max_pixels)
    state = ServerState(config=config, live=LiveCollection(collection), pool=pool,
                        thumbs=Thumbnails(collection.cache, pool, config.thumb_size),
                        encoders=Encoders(collection, config), placeholder=placeholder_png(),
                        review=Review(config.audit, collection.cache_root) if config.audit else None)
    app.state.server = state
    app.state.live, app.state.pool, app.state.encoders = state.live, pool, state.encoders  # server.py, tests
    _errors(app)

    for route, name in PAGES.items():
        app.add_api_route(route, _page(STATIC / name), include_in_schema=False, methods=["GET"])
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    # routes this collection cannot serve still answer (a 400 saying why) but stay out of the schema
    app.include_router(search.make_router(state, text=bool(collection.manifest.get("text_tower")),
                                          images=collection.store is not None))
    app.include_router(rows.make_router(state))
    app.include_router(maps.make_router())
    app.include_router(duplicates.make_router())
    app.include_router(media.make_router())
    app.include_router(audit.make_router(state.review))
    app.openapi = lambda: _openapi(app, token=config.token is not None)

    if config.cors:
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(config.cors), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])
    app.add_middleware(Guard, hosts=allowed_hosts(config.host, config.allow_hosts), token=config.token)
    return app


def _openapi(app: FastAPI, token: bool = False) -> dict:
    """FastAPI's schema without its 422 answers (this server answers a parameter that fails validation with a 400
    and the shared error body), plus what ``security.Guard`` answers before any route: a 400 for a Host header this
    server does not answer to, and with ``--token`` the bearer scheme and its 401."""
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        error = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
        for path in schema.get("paths", {}).values():
            for operation in path.values():
                responses = operation.setdefault("responses", {})
                responses.pop("422", None)
                responses.setdefault("400", {"description": "A Host header this server does not answer to (the "
                                                            "DNS-rebinding guard)", "content": error})
                if token:
                    responses["401"] = {"description": "No valid token: send Authorization: Bearer TOKEN",
                                        "content": error}
        components = schema.setdefault("components", {})
        for name in ("HTTPValidationError", "ValidationError"):
            components.get("schemas", {}).pop(name, None)
        if token:
            components["securitySchemes"] = {"token": {"type": "http", "scheme": "bearer",
                                                       "description": "imgfeat serve --token SECRET"}}
            schema["security"] = [{"token": []}]
        app.openapi_schema = schema
    return app.openapi_schema


def _page(path: Path):
    def handler() -> FileResponse:
        return FileResponse(path, media_type="text/html", headers={"Cache-Control": "no-cache"})
    return handler


def _errors(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError):
        return error_response(exc.status, exc.message, exc.parameter)

    @app.exception_handler(UnknownLabel)
    async def unknown_label(request: Request, exc: UnknownLabel):
        return error_response(404, str(exc), "label")

    @app.exception_handler(InvalidParameterError)
    async def bad_parameter(request: Request, exc: InvalidParameterError):
        return error_response(400, str(exc), exc.param)

    @app.exception_handler(ImgfeatError)
    async def imgfeat_error(request: Request, exc: ImgfeatError):
        return error_response(400, str(exc))

    @app.exception_handler(RequestValidationError)
    async def validation(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        loc = [str(x) for x in first.get("loc", ()) if x not in ("query", "path", "body")]
        param = loc[-1] if loc else None
        return error_response(400, f"The '{param}' parameter: {first.get('msg', 'invalid')}", param)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        # keep the exception's headers: a 405 carries Allow (RFC 9110)
        return error_response(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception):
        log.exception("error serving %s", request.url.path)
        return error_response(500, "internal server error; the details are in the server's log")
