"""Request body limits as pure ASGI middleware: size (413) and slow clients (408).

Size: a declared Content-Length over the limit is refused before the app runs; a chunked body is read up to the
limit first (or, on prefixes whose limit is too large to buffer, counted as the app streams it).

Slow clients: every wait for the next body chunk is bounded. A client must send something at least every
``body_read_timeout_s`` seconds, and the whole body by ``body_read_timeout_s + bytes_sent / body_min_rate`` seconds
after the first wait, so dribbling a byte at a time (slowloris) is cut off with 408 and frees the connection, while
a large upload at any sane speed keeps earning time.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

BUFFER_MAX = 16 * 2**20  # a chunked body is buffered before the app only up to this limit; above it, counted


class BodyReadConfig(BaseSettings):
    """Slow-client knobs, from ``HAIHE_BODY_*`` environment variables.

    They sit beside the platform's Settings rather than inside it only because Settings is owned elsewhere."""

    model_config = SettingsConfigDict(env_prefix="HAIHE_", extra="ignore")

    body_read_timeout_s: float = Field(30.0, gt=0, description="Longest wait for the next chunk of a request body, "
                                       "and the base allowance for the whole body.")
    body_min_rate: float = Field(1024.0, gt=0, description="Bytes per second a client earns extra time with while "
                                 "sending a body; a slower sender is cut off with 408.")


@dataclass(frozen=True)
class Refusal:
    """What the client is answered instead of the app's response."""

    status: int
    code: str
    message: str


class _TimedBody:
    """``receive()`` with deadlines while the body is incomplete; after its last chunk, a plain pass-through
    (streaming responses wait on receive() for the disconnect, which may rightly take forever).

    A client that is too slow (or, when counting, sends too much) is reported to the app as a disconnect, never as
    an exception: Starlette's BaseHTTPMiddleware would wrap one in an ExceptionGroup and FastAPI would answer 400.
    The middleware then answers with :attr:`refusal` in place of whatever the app says."""

    def __init__(self, receive: Receive, cfg: BodyReadConfig, count_limit: int | None = None) -> None:
        self._receive = receive
        self._cfg = cfg
        self._count_limit = count_limit
        self._start: float | None = None
        self.seen = 0
        self.done = False
        self.refusal: Refusal | None = None

    async def next(self) -> Message:
        if self.done:
            return await self._receive()
        now = time.monotonic()
        if self._start is None:
            self._start = now
        deadline = self._start + self._cfg.body_read_timeout_s + self.seen / self._cfg.body_min_rate
        wait = min(self._cfg.body_read_timeout_s, deadline - now)
        try:
            if wait <= 0:
                raise TimeoutError
            async with asyncio.timeout(wait):  # no extra task per chunk, unlike wait_for
                message = await self._receive()
        except TimeoutError:
            return self._refuse(Refusal(408, "request_timeout", f"request body not received within "
                                        f"{self._cfg.body_read_timeout_s:g} s; send it faster"))
        if message["type"] != "http.request":
            self.done = True
            return message
        self.seen += len(message.get("body", b""))
        if self._count_limit is not None and self.seen > self._count_limit:
            return self._refuse(Refusal(413, "payload_too_large",
                                        f"request body over the {self._count_limit}-byte limit"))
        if not message.get("more_body", False):
            self.done = True
        return message

    def _refuse(self, refusal: Refusal) -> Message:
        self.refusal = refusal
        self.done = True  # later calls wait for the real disconnect (uvicorn sends it once we close)
        return {"type": "http.disconnect"}


class BodyLimit:
    """413 for any request body over ``max_bytes`` (``overrides`` maps path prefixes to their own limits), and 408
    for a client that sends its body too slowly (see :class:`BodyReadConfig`)."""

    def __init__(self, app: ASGIApp, max_bytes: int, overrides: dict[str, int] | None = None,
                 read: BodyReadConfig | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.overrides = overrides or {}
        self.read = read or BodyReadConfig()

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
        declared_length = False
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                declared_length = True
                try:
                    declared = int(value)
                except ValueError:
                    await _reject(send, 400, "bad_request", "invalid Content-Length header")
                    return
                if declared > limit:
                    await _reject(send, 413, "payload_too_large", f"request body over the {limit}-byte limit")
                    return
        if declared_length or limit > BUFFER_MAX:
            # a declared length: the server holds the client to it, so the check above is enough;
            # a limit too large to buffer (artifact uploads): count while the app streams it
            await self._run(scope, _TimedBody(receive, self.read, None if declared_length else limit), send)
            return
        # no declared length (chunked): read the body up to the limit first, then replay it to the app
        body = _TimedBody(receive, self.read)
        chunks: list[bytes] = []
        while True:
            message = await body.next()
            if body.refusal is not None:
                await _reject(send, body.refusal.status, body.refusal.code, body.refusal.message)
                return
            if message["type"] != "http.request":
                await self.app(scope, _replay([], message, receive), send)
                return
            chunks.append(message.get("body", b""))
            if body.seen > limit:
                await _reject(send, 413, "payload_too_large", f"request body over the {limit}-byte limit")
                return
            if not message.get("more_body", False):
                break
        await self.app(scope, _replay(chunks, None, receive), send)

    async def _run(self, scope: Scope, body: _TimedBody, send: Send) -> None:
        """Run the app on the timed receive; once the body is refused, the refusal replaces the app's answer."""
        answered = False

        async def guarded_send(message: Message) -> None:
            nonlocal answered
            if body.refusal is None:
                if message["type"] == "http.response.start":
                    answered = True
                await send(message)
            elif not answered and message["type"] == "http.response.start":
                answered = True
                await _reject(send, body.refusal.status, body.refusal.code, body.refusal.message)
            # anything else the app sends after a refusal goes nowhere

        await self.app(scope, body.next, guarded_send)
        if body.refusal is not None and not answered:
            await _reject(send, body.refusal.status, body.refusal.code, body.refusal.message)


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
