"""OIP's error envelope for the ``/v2`` routes: ``{"error": "<message>"}``, and 400 for a request the model cannot
take.

The platform answers errors as ``{"error": {"code", "message", "field"}}`` (one table, ``platform.api.errors``);
the Open Inference Protocol wants the error to be a string, and Triton's client fails on anything else. So the
``/v2`` routes use :class:`OipRoute`, which lets the platform's own handler pick status and headers, then moves
``code`` and ``field`` beside a string ``error``. ``invalid_input`` (422 elsewhere) becomes 400, as the protocol
and Triton answer a malformed request.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute

Handler = Callable[[Request], Coroutine[Any, Any, Response]]


def oip_error(status: int, message: str, code: str = "", field: str | None = None,
              headers: dict[str, str] | None = None, details: dict[str, Any] | None = None) -> JSONResponse:
    body: dict[str, Any] = {"error": message}
    if code:
        body["code"] = code
    if field is not None:
        body["field"] = field
    if details:
        body["details"] = details
    return JSONResponse(body, status_code=400 if status == 422 else status, headers=headers)


def reshape(response: Response) -> Response:
    """A platform error response in OIP's envelope (anything else unchanged)."""
    try:
        body = json.loads(bytes(response.body))
    except ValueError:
        return response
    err = body.get("error") if isinstance(body, dict) else None
    if not isinstance(err, dict):
        return response
    headers = {k: v for k, v in response.headers.items() if k.lower() not in ("content-length", "content-type")}
    details = err.get("details")
    return oip_error(response.status_code, str(err.get("message", "error")), str(err.get("code", "")),
                     err.get("field"), headers, details if isinstance(details, dict) else None)


def _handler_for(request: Request, exc: Exception) -> Callable[..., Any] | None:
    handlers: dict[Any, Callable[..., Any]] = request.app.exception_handlers
    for cls in type(exc).__mro__:
        if cls in handlers:
            return handlers[cls]
    return None


class OipRoute(APIRoute):
    """A route whose errors leave in OIP's envelope; status, headers and logging stay the platform handler's."""

    def get_route_handler(self) -> Handler:
        inner = super().get_route_handler()

        async def handler(request: Request) -> Response:
            try:
                return await inner(request)
            except Exception as exc:
                handle = _handler_for(request, exc)
                if handle is None:
                    raise
                response = await handle(request, exc)
                return reshape(response) if isinstance(response, Response) else response

        return handler
