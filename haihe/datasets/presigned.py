"""Client side of presigned URLs: PUT a part, GET an object. The seam clients use instead of S3 credentials.

``HttpTransport`` speaks HTTP with urllib3 (short timeouts, a few retries); ``MemoryStore`` answers the same
protocol for its own ``memory://`` URLs so unit tests run the whole client path without a server.
"""

from __future__ import annotations

import contextlib
from typing import Any, Protocol

from haihe.datasets.store import ReadStream, body_readinto
from haihe.errors import InvalidInput, NotFound, StorageUnavailable


class Transport(Protocol):
    def put(self, url: str, data: bytes) -> str:
        """PUT ``data`` to a presigned URL; return the ETag the server gave it."""
        ...

    def get(self, url: str) -> ReadStream:
        """GET a presigned URL as a stream."""
        ...


def _redact(url: str) -> str:
    """The URL without its query string: signatures and credentials never reach a log or an error message."""
    return url.split("?", 1)[0]


class _HttpRead:
    def __init__(self, response: Any, url: str) -> None:
        self._response = response
        self._url = url

    def read(self, n: int = -1, /) -> bytes:
        from urllib3.exceptions import HTTPError

        try:
            return bytes(self._response.read(None if n < 0 else n))
        except (HTTPError, OSError) as exc:
            raise StorageUnavailable(f"GET {_redact(self._url)}: connection lost ({type(exc).__name__})") from None

    def read1(self, n: int, /) -> bytes:
        """Up to ``n`` bytes from one receive (``hashing.read_chunk``: cheaper than ``read(n)`` for bulk data)."""
        from urllib3.exceptions import HTTPError

        try:
            return bytes(self._response.read1(n))
        except (HTTPError, OSError) as exc:
            raise StorageUnavailable(f"GET {_redact(self._url)}: connection lost ({type(exc).__name__})") from None

    def readinto(self, view: memoryview, /) -> int:
        """Fill ``view`` from the body, received straight into it (``store.body_readinto``)."""
        from urllib3.exceptions import HTTPError

        try:
            return body_readinto(self._response, view)
        except (HTTPError, OSError) as exc:
            raise StorageUnavailable(f"GET {_redact(self._url)}: connection lost ({type(exc).__name__})") from None

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._response.release_conn()


class HttpTransport:
    """urllib3 pool shared by the threads of one push or pull."""

    def __init__(
        self, *, connect_timeout: float = 3.0, read_timeout: float = 60.0, retries: int = 3, pool_size: int = 32
    ) -> None:
        import urllib3

        self._http = urllib3.PoolManager(
            maxsize=pool_size,
            timeout=urllib3.Timeout(connect=connect_timeout, read=read_timeout),
            retries=urllib3.Retry(
                total=retries,
                backoff_factor=0.2,
                backoff_max=2.0,
                status_forcelist=[500, 502, 503, 504],
                allowed_methods=None,  # a part PUT is idempotent: the same bytes to the same part number
                raise_on_status=False,
            ),
        )

    def _request(self, method: str, url: str, body: bytes | None = None) -> Any:
        from urllib3.exceptions import HTTPError

        headers = {"Content-Length": str(len(body))} if body is not None else None
        try:
            response = self._http.request(method, url, body=body, headers=headers, preload_content=method != "GET")
        except (HTTPError, OSError) as exc:
            raise StorageUnavailable(
                f"{method} {_redact(url)}: cannot reach the S3 server ({type(exc).__name__})", component="s3"
            ) from None
        if response.status in (200, 204, 206):
            return response
        text = response.data[:300].decode(errors="replace") if response.status != 200 else ""
        with contextlib.suppress(Exception):
            response.release_conn()
        if response.status == 404:
            raise NotFound(f"{method} {_redact(url)}: not found")
        if response.status in (400, 403):
            raise InvalidInput(
                f"{method} {_redact(url)}: refused ({response.status}); the URL may have expired: {text}", field="url"
            )
        raise StorageUnavailable(f"{method} {_redact(url)}: HTTP {response.status}", component="s3")

    def put(self, url: str, data: bytes) -> str:
        response = self._request("PUT", url, data)
        return str(response.headers.get("ETag", "")).strip('"')

    def get(self, url: str) -> ReadStream:
        return _HttpRead(self._request("GET", url), url)
