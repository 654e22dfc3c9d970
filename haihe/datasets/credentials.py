"""Temporary S3 credentials from a broker: a ``minio`` credentials provider that trades a bearer token for them.

A job never holds long-lived S3 keys. The platform hands it a token and a URL; :class:`BrokerCredentials` posts
the token there and receives ``{access_key, secret_key, session_token, expiration}``, scoped to what the job may
read and write. minio clients call ``provider.retrieve()`` before every request, so the cached credentials are
refreshed shortly before they expire without the caller noticing. A refused token (the job is over, or the
token is wrong) is a :class:`~haihe.errors.StorageUnavailable` that says why.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
import urllib.error
import urllib.request
from typing import Any

from minio.credentials import Credentials, Provider

from haihe.errors import StorageUnavailable

REFRESH_BEFORE_S = 60.0  # refresh this long before expiry (or at half the lifetime, for short-lived credentials)


def fetch(url: str, token: str, *, duration_s: int | None = None, timeout: float = 10.0) -> dict[str, Any]:
    """One call to the broker; its JSON answer, or StorageUnavailable naming the broker's reason."""
    if not url.startswith(("http://", "https://")):
        raise StorageUnavailable(f"storage credentials URL {url!r} is not http(s)", component="s3")
    body = json.dumps({"duration_s": duration_s} if duration_s else {}).encode()
    request = urllib.request.Request(url, data=body, method="POST", headers={  # noqa: S310 (checked above)
        "Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            answer = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        try:
            reason = json.loads(exc.read())["error"]["message"]
        except (ValueError, KeyError, TypeError):
            reason = exc.reason
        raise StorageUnavailable(f"storage credentials refused ({exc.code}): {reason}", component="s3") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise StorageUnavailable(f"storage credentials broker unreachable: {type(exc).__name__}",
                                 component="s3") from None
    if not isinstance(answer, dict) or not all(answer.get(k) for k in ("access_key", "secret_key", "expiration")):
        raise StorageUnavailable("storage credentials broker sent an unreadable answer", component="s3")
    return answer


def _expiry(text: str) -> dt.datetime:
    return dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)


class BrokerCredentials(Provider):
    """Credentials from the broker at ``url`` for ``token``, cached until shortly before they expire."""

    def __init__(self, url: str, token: str, *, duration_s: int | None = None) -> None:
        self.url = url
        self._token = token
        self.duration_s = duration_s
        self._cached: Credentials | None = None
        self._refresh_at = 0.0
        self._lock = threading.Lock()

    def retrieve(self) -> Credentials:
        with self._lock:
            if self._cached is None or time.time() >= self._refresh_at:
                answer = fetch(self.url, self._token, duration_s=self.duration_s)
                expiration = _expiry(str(answer["expiration"]))
                now = time.time()
                life = expiration.timestamp() - now
                self._refresh_at = now + max(0.0, min(life - REFRESH_BEFORE_S, life / 2))
                self._cached = Credentials(str(answer["access_key"]), str(answer["secret_key"]),
                                           str(answer.get("session_token") or "") or None, expiration)
            return self._cached

    def __getstate__(self) -> dict[str, Any]:
        # DataLoader workers and Ray pickle stores with their provider: ship the token, not a lock or credentials
        return {"url": self.url, "_token": self._token, "duration_s": self.duration_s}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["url"], state["_token"], duration_s=state["duration_s"])  # type: ignore[misc]

    def __repr__(self) -> str:
        return f"BrokerCredentials({self.url!r})"
