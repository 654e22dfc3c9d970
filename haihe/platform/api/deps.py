"""Request dependencies: the context, a unit-of-work session, the caller, and role gates.

Authentication happens here once per request: a Bearer token/API key in ``Authorization``, or the portal's session
cookie (then unsafe methods must carry the CSRF token). Refusals are audited in their own transaction.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from haihe.errors import AuthenticationRequired, PermissionDenied
from haihe.platform import access, audit
from haihe.platform.access import Principal
from haihe.platform.context import PlatformContext
from haihe.platform.identity import security
from haihe.platform.identity import service as identity

SESSION_COOKIE = "haihe_session"
CSRF_COOKIE = "haihe_csrf"
CSRF_HEADER = "x-csrf-token"
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


async def get_ctx(request: Request) -> PlatformContext:
    """Async on purpose: FastAPI runs a plain ``def`` dependency in its thread pool, a hop (two context switches
    and a queue) per request for what is an attribute read."""
    ctx: PlatformContext = request.app.state.ctx
    return ctx


CtxDep = Annotated[PlatformContext, Depends(get_ctx)]


def get_session(ctx: CtxDep) -> Iterator[Session]:
    with ctx.db.session() as s:
        yield s


# "function": committed before the response is sent, so a client's next request reads what this one wrote
SessionDep = Annotated[Session, Depends(get_session, scope="function")]


def client_ip(request: Request) -> str:
    return request.client.host if request.client else ""


def _presented_credential(request: Request) -> tuple[str | None, bool]:
    """(credential, from_cookie)."""
    header = request.headers.get("authorization", "")
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise AuthenticationRequired("Authorization header must be 'Bearer <token or API key>'")
        return value.strip(), False
    cookie = request.cookies.get(SESSION_COOKIE)
    return (cookie, True) if cookie else (None, False)


def resolve_principal(request: Request, ctx: PlatformContext, session: Session) -> Principal | None:
    presented, from_cookie = _presented_credential(request)
    if presented is None:
        return None
    ip = client_ip(request)
    result = identity.authenticate(session, presented, ip)
    if isinstance(result, identity.AuthFailure):
        audit.record_separately(ctx.db.sessions, None, "auth.credential", target_type="credential",
                                target=result.prefix or "", outcome="denied", source_ip=ip,
                                details={"reason": result.reason, "path": request.url.path})
        raise AuthenticationRequired(f"invalid credentials: {result.reason}")
    if from_cookie and request.method not in _SAFE_METHODS:
        presented_csrf = request.headers.get(CSRF_HEADER)
        if not security.check_csrf(ctx.settings.secret_key, presented.split("_")[1], presented_csrf):
            audit.record_separately(ctx.db.sessions, result, "auth.csrf", outcome="denied", source_ip=ip,
                                    details={"path": request.url.path})
            raise PermissionDenied("missing or wrong CSRF token (send the X-CSRF-Token header)")
    request.state.principal = result
    return result


def optional_principal(request: Request, ctx: CtxDep, session: SessionDep) -> Principal | None:
    return resolve_principal(request, ctx, session)


def current_principal(request: Request, ctx: CtxDep, session: SessionDep) -> Principal:
    return require_principal(request, ctx, session)


def require_principal(request: Request, ctx: PlatformContext, session: Session) -> Principal:
    """The authenticated caller with the API scope (what ``CurrentPrincipal`` gives a route)."""
    principal = resolve_principal(request, ctx, session)
    if principal is None:
        raise AuthenticationRequired("authentication required: send 'Authorization: Bearer <token or API key>'")
    if "api" not in principal.scopes and principal.credential_kind == "key":
        raise PermissionDenied("this API key has no 'api' scope (it may only call inference endpoints)")
    return principal


CurrentPrincipal = Annotated[Principal, Depends(current_principal)]
OptionalPrincipal = Annotated[Principal | None, Depends(optional_principal)]


async def admin_principal(principal: CurrentPrincipal) -> Principal:
    access.require_platform_admin(principal)  # no I/O: no thread-pool hop
    return principal


AdminPrincipal = Annotated[Principal, Depends(admin_principal)]
