"""The one error tree of Haihe; every layer raises these, the API maps them to HTTP in one table.

::

    HaiheError                       500 internal (never shown with details)
    ├── InvalidInput                 422 invalid_input        (names the field)
    │   └── PayloadTooLarge          413 payload_too_large
    ├── AuthenticationRequired       401 unauthenticated
    ├── PermissionDenied             403 forbidden
    ├── NotFound                     404 not_found            (also: exists but not yours)
    ├── Conflict                     409 conflict
    ├── QuotaExceeded                402 quota_exceeded       (names quota, need, left)
    ├── RateLimited                  429 rate_limited         (Retry-After)
    ├── Unsupported                  422 unsupported          (a backend cannot do it, and why)
    └── ServiceUnavailable           503 unavailable          (names the component)
        ├── SchedulerUnavailable     503 scheduler_unavailable
        ├── StorageUnavailable       503 storage_unavailable
        └── TrackingUnavailable      503 tracking_unavailable

SDK errors (httpx, minio, ray, subprocess) are translated into these at the adapter that called the SDK.
This module is a leaf: it imports nothing from Haihe, so every layer may import it.
"""

from __future__ import annotations

from typing import Any, ClassVar


class HaiheError(Exception):
    """Base of every error Haihe raises on purpose."""

    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal"

    def __init__(self, message: str, *, field: str | None = None, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.field is not None:
            body["field"] = self.field
        if self.details:
            body["details"] = self.details
        return body


class InvalidInput(HaiheError):
    status = 422
    code = "invalid_input"


class PayloadTooLarge(InvalidInput):
    status = 413
    code = "payload_too_large"


class AuthenticationRequired(HaiheError):
    status = 401
    code = "unauthenticated"


class PermissionDenied(HaiheError):
    status = 403
    code = "forbidden"


class NotFound(HaiheError):
    status = 404
    code = "not_found"


class Conflict(HaiheError):
    status = 409
    code = "conflict"


class QuotaExceeded(HaiheError):
    status = 402
    code = "quota_exceeded"


class RateLimited(HaiheError):
    status = 429
    code = "rate_limited"

    def __init__(self, message: str, *, retry_after: float, **details: Any) -> None:
        super().__init__(message, retry_after=retry_after, **details)
        self.retry_after = retry_after


class Unsupported(HaiheError):
    status = 422
    code = "unsupported"


class ServiceUnavailable(HaiheError):
    status = 503
    code = "unavailable"


class SchedulerUnavailable(ServiceUnavailable):
    code = "scheduler_unavailable"


class StorageUnavailable(ServiceUnavailable):
    code = "storage_unavailable"


class TrackingUnavailable(ServiceUnavailable):
    code = "tracking_unavailable"
