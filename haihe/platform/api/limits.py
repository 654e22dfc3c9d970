"""Request body size limit as pure ASGI middleware: refuses on Content-Length, and bounds chunked bodies."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class BodyLimit:
    """413 for any request body over ``max_bytes``; ``overrides`` maps path prefixes to their own limits."""

    def __init__(self, app: ASGIApp, max_bytes: int, overrides: dict[str, int] | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.overrides = overrides or {}

    def _limit(self, path: str) -> int:
        for prefix, limit in self.overrides.items():
            if path.startswith(prefix):
                return limit
        return self.max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self._limit(scope.get("path", ""))
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await _reject(send, 400, "bad_request", "invalid Content-Length header")
                    return
                if declared > limit:
                    await _reject(send, 413, "payload_too_large", f"request body over the {limit}-byte limit")
                    return
        if any(name == b"content-length" for name, _ in scope.get("headers", [])):
            # the server holds the client to its declared length, so the check above is enough
            await self.app(scope, receive, send)
            return
        # no declared length (chunked): read the body up to the limit first, then replay it to the app
        chunks: list[bytes] = []
        seen = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                await self.app(scope, _replay([], message, receive), send)
                return
            body = message.get("body", b"")
            seen += len(body)
            if seen > limit:
                await _reject(send, 413, "payload_too_large", f"request body over the {limit}-byte limit")
                return
            chunks.append(body)
            if not message.get("more_body", False):
                break
        await self.app(scope, _replay(chunks, None, receive), send)


def _replay(chunks: list[bytes], first: Message | None, receive: Receive) -> Receive:
    """A receive() that hands back the buffered body as one message, then waits for the real disconnect.

    Answering ``http.disconnect`` at once would make Starlette cancel every streaming response mid-body."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            if first is not None:
                return first
            return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
        return await receive()

    return replay


async def _reject(send: Send, status: int, code: str, message: str) -> None:
    body = json.dumps({"error": {"code": code, "message": message, "field": "body"}}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})
