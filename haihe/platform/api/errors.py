"""One exception handler: the error tree to JSON with the status of its class; never a traceback to a client."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import InterfaceError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from haihe.errors import HaiheError, RateLimited

log = logging.getLogger(__name__)

_HTTP_CODES = {400: "bad_request", 401: "unauthenticated", 403: "forbidden", 404: "not_found",
               405: "method_not_allowed", 413: "payload_too_large", 415: "unsupported_media_type"}


def error_response(status: int, code: str, message: str, field: str | None = None,
                   details: dict[str, Any] | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    body: dict[str, Any] = {"code": code, "message": message}
    if field is not None:
        body["field"] = field
    if details:
        body["details"] = details
    return JSONResponse({"error": body}, status_code=status, headers=headers)


def _loc_to_field(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header", "cookie")]
    return ".".join(parts) or str(loc[0] if loc else "body")


async def _haihe_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HaiheError)
    headers = {}
    if isinstance(exc, RateLimited):
        headers["Retry-After"] = str(max(1, int(exc.retry_after + 0.999)))
    if exc.status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    if exc.status >= 500:
        log.warning("%s %s -> %s: %s", request.method, request.url.path, exc.code, exc.message)
    return error_response(exc.status, exc.code, exc.message, exc.field, exc.details or None, headers)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    first = errors[0] if errors else {"loc": ("body",), "msg": "invalid request", "type": ""}
    if first.get("type") == "json_invalid":
        return error_response(400, "malformed_json", f"request body is not valid JSON: {first.get('msg', '')}",
                              "body")
    field = _loc_to_field(tuple(first.get("loc", ())))
    msg = str(first.get("msg", "invalid value"))
    if first.get("type") == "extra_forbidden":
        msg = "unknown field"
    elif first.get("type") == "missing":
        msg = "field required"
    problems = [{"field": _loc_to_field(tuple(e.get("loc", ()))), "message": str(e.get("msg", ""))}
                for e in errors[:20]]
    return error_response(422, "invalid_input", f"{field}: {msg}", field, {"problems": problems})


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    field = "body" if exc.status_code == 400 else None  # FastAPI's own 400s are about the body it could not parse
    return error_response(exc.status_code, code, str(exc.detail), field, headers=getattr(exc, "headers", None))


async def _database_unavailable(request: Request, exc: Exception) -> JSONResponse:
    """The database cannot be reached (restart, failover, network): a 503 the client may retry, not a 500."""
    log.warning("%s %s -> database unavailable: %s", request.method, request.url.path,
                str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__)
    return error_response(503, "database_unavailable", "database unavailable; try again shortly",
                          headers={"Retry-After": "5"})


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(500, "internal", "internal error; it has been logged")


def install(app: FastAPI) -> None:
    app.add_exception_handler(HaiheError, _haihe_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    # OperationalError: connection refused/lost, server shutting down; InterfaceError: a connection closed under us
    app.add_exception_handler(OperationalError, _database_unavailable)
    app.add_exception_handler(InterfaceError, _database_unavailable)
    app.add_exception_handler(Exception, _unexpected)
