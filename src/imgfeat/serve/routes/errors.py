"""The API's one error shape: ``{"error": ..., "parameter": ...}`` (``ErrorBody``) with its status, the statuses
each route declares (``errors(...)``: what ``/openapi.json`` lists) and ``ApiError``, which a route raises."""

from __future__ import annotations

from typing import Optional

from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field


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
