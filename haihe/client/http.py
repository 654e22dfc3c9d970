"""The client's transport: the API's URL and saved credentials, one path segment quoted, and an error answer
raised as the :mod:`haihe.errors` class the server raised (by its ``code``), with the server's message and field.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel

from haihe import errors

DEFAULT_URL = "http://127.0.0.1:8000"
M = TypeVar("M", bound=BaseModel)


def model(cls: type[M], data: Any) -> M:
    """An answer as the model the API serves (extra fields a newer server adds are ignored)."""
    return cls.model_validate(data)


def models(cls: type[M], data: Any) -> list[M]:
    return [cls.model_validate(item) for item in data]


_BY_CODE: dict[str, type[errors.HaiheError]] = {
    cls.code: cls
    for cls in (
        errors.InvalidInput, errors.PayloadTooLarge, errors.AuthenticationRequired, errors.PermissionDenied,
        errors.NotFound, errors.Conflict, errors.QuotaExceeded, errors.Unsupported, errors.ServiceUnavailable,
        errors.SchedulerUnavailable, errors.StorageUnavailable, errors.TrackingUnavailable,
    )
}
_BY_STATUS: dict[int, type[errors.HaiheError]] = {400: errors.InvalidInput, 401: errors.AuthenticationRequired,
                                                  403: errors.PermissionDenied, 404: errors.NotFound,
                                                  409: errors.Conflict, 413: errors.PayloadTooLarge,
                                                  422: errors.InvalidInput, 503: errors.ServiceUnavailable}


def seg(value: str) -> str:
    """One URL path segment: a name holding '/' or '..' can never address another route."""
    return quote(value, safe="")


def credentials_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "haihe" / "credentials.json"


def load_credentials() -> dict[str, str]:
    try:
        data = json.loads(credentials_path().read_text())
        return {k: str(v) for k, v in data.items()}
    except (OSError, ValueError):
        return {}


def save_credentials(url: str, token: str, username: str) -> Path:
    path = credentials_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.parent.chmod(0o700)  # the login token is a bearer secret: no other account may read it
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # a stale tmp file keeps its old mode through O_CREAT
    with os.fdopen(fd, "w") as f:
        json.dump({"url": url, "token": token, "username": username}, f)
    tmp.replace(path)
    return path


def raise_for_error(response: httpx.Response) -> None:
    if response.is_success:
        return
    try:
        body = response.json().get("error", {})
    except ValueError:
        body = {}
    message = body.get("message") or f"HTTP {response.status_code}: {response.text[:200]}"
    code = body.get("code", "")
    if response.status_code == 429:
        retry = float(response.headers.get("retry-after", "1"))
        raise errors.RateLimited(message, retry_after=retry)
    cls = _BY_CODE.get(code) or _BY_STATUS.get(response.status_code, errors.HaiheError)
    exc = cls(message, field=body.get("field"), **(body.get("details") or {}))
    exc.status_code = response.status_code  # type: ignore[attr-defined]
    raise exc


