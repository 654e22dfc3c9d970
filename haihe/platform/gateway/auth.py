"""API-key checks for the gateway, with a short in-memory cache so a busy key costs no database read per request.

Keys are looked up by the SHA-256 of what was presented (never stored in the clear). A result is trusted for
``ttl_s`` (default 1 s): a revoked key stops working within that time. Failures are cached too, so a flood of bad
keys does not become a flood of queries.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable

from haihe.errors import AuthenticationRequired, PermissionDenied
from haihe.platform.access import Principal
from haihe.platform.db import Database
from haihe.platform.identity import service as identity

_MAX_ENTRIES = 50_000


class KeyCache:
    def __init__(self, db: Database, ttl_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._db = db
        self._ttl = ttl_s
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: dict[str, tuple[float, Principal | identity.AuthFailure]] = {}

    def cached(self, presented: str) -> Principal | identity.AuthFailure | None:
        key = hashlib.sha256(presented.encode()).hexdigest()
        hit = self._entries.get(key)
        if hit is not None and self._clock() - hit[0] < self._ttl:
            return hit[1]
        return None

    def resolve(self, presented: str, source_ip: str) -> Principal | identity.AuthFailure:
        """Blocking (reads the database on a miss): call from a worker thread."""
        hit = self.cached(presented)
        if hit is not None:
            return hit
        with self._db.session() as s:
            result = identity.authenticate(s, presented, source_ip)
        with self._lock:
            if len(self._entries) >= _MAX_ENTRIES:
                self._entries.clear()
            self._entries[hashlib.sha256(presented.encode()).hexdigest()] = (self._clock(), result)
        return result


def bearer(header: str | None) -> str:
    if not header:
        raise AuthenticationRequired("an API key is required: send 'Authorization: Bearer <key>'")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise AuthenticationRequired("Authorization header must be 'Bearer <API key>'")
    return value.strip()


def check_principal(result: Principal | identity.AuthFailure) -> Principal:
    if isinstance(result, identity.AuthFailure):
        raise AuthenticationRequired(f"invalid credentials: {result.reason}")
    return result


def check_scope(principal: Principal, endpoint: str) -> None:
    """API keys need the ``inference`` scope or ``endpoint:<name>``; login tokens act as their user."""
    if principal.credential_kind != "key":
        return
    if "inference" in principal.scopes or f"endpoint:{endpoint}" in principal.scopes:
        return
    raise PermissionDenied(f"this API key may not call endpoint {endpoint!r}: it needs the 'inference' or "
                           f"'endpoint:{endpoint}' scope", field="scopes")
