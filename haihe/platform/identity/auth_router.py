"""Routes: first-admin setup, login (CLI token or portal session), logout, whoami."""

from __future__ import annotations

import datetime as dt

from fastapi import APIRouter, Request, Response

from haihe.platform.api.deps import (
    CSRF_COOKIE,
    SESSION_COOKIE,
    CtxDep,
    CurrentPrincipal,
    SessionDep,
    client_ip,
)
from haihe.platform.identity import security
from haihe.platform.identity import service as identity
from haihe.platform.identity.schemas import LoginCreate, SetupCreate, TokenPublic, UserPublic, WhoAmI
from haihe.platform.models import CredentialKind, Org

router = APIRouter(prefix="/api/v1", tags=["auth"])


@router.post("/setup", operation_id="setup_create_admin", status_code=201, response_model=UserPublic)
def setup(body: SetupCreate, request: Request, session: SessionDep) -> UserPublic:
    """Create the first platform administrator. Refused (409) once the platform has any user."""
    user = identity.bootstrap_admin(session, body.username, body.password, client_ip(request))
    session.refresh(user, ["memberships"])
    return UserPublic.of(user)


def _login(body: LoginCreate, request: Request, session: SessionDep, ctx: CtxDep,
           kind: CredentialKind) -> identity.IssuedCredential:
    ttl = dt.timedelta(hours=ctx.settings.token_ttl_hours if kind == CredentialKind.TOKEN
                       else ctx.settings.session_ttl_hours)
    return identity.login(session, body.username, body.password, kind=kind, ttl=ttl, source_ip=client_ip(request),
                          max_failures=ctx.settings.login_max_failures,
                          lockout=dt.timedelta(seconds=ctx.settings.login_lockout_s))


@router.post("/auth/token", operation_id="auth_token", status_code=201, response_model=TokenPublic)
def login_token(body: LoginCreate, request: Request, session: SessionDep, ctx: CtxDep) -> TokenPublic:
    """Exchange a username and password for a bearer token (what `haihe login` stores)."""
    issued = _login(body, request, session, ctx, CredentialKind.TOKEN)
    return TokenPublic(token=issued.plaintext, prefix=issued.credential.prefix,
                       expires_at=issued.credential.expires_at)


@router.post("/auth/session", operation_id="auth_session", status_code=204)
def login_session(body: LoginCreate, request: Request, response: Response, session: SessionDep,
                  ctx: CtxDep) -> Response:
    """Portal sign-in: sets an HttpOnly session cookie and a readable CSRF cookie."""
    issued = _login(body, request, session, ctx, CredentialKind.SESSION)
    set_session_cookies(response, ctx, issued)
    response.status_code = 204
    return response


def set_session_cookies(response: Response, ctx: CtxDep, issued: identity.IssuedCredential) -> None:
    max_age = ctx.settings.session_ttl_hours * 3600
    secure = ctx.settings.secure_cookies
    response.set_cookie(SESSION_COOKIE, issued.plaintext, max_age=max_age, httponly=True, secure=secure,
                        samesite="lax", path="/")
    response.set_cookie(CSRF_COOKIE, security.csrf_token(ctx.settings.secret_key, issued.credential.prefix),
                        max_age=max_age, httponly=False, secure=secure, samesite="strict", path="/")


@router.post("/auth/logout", operation_id="auth_logout", status_code=204)
def logout(principal: CurrentPrincipal, session: SessionDep, response: Response) -> Response:
    """Revoke the token or session used for this request."""
    identity.logout(session, principal)
    response.delete_cookie(SESSION_COOKIE, path="/")
    response.delete_cookie(CSRF_COOKIE, path="/")
    response.status_code = 204
    return response


@router.get("/me", operation_id="whoami", response_model=WhoAmI)
def whoami(principal: CurrentPrincipal, session: SessionDep) -> WhoAmI:
    user = identity.get_user(session, principal, principal.username)
    bound = session.get(Org, principal.bound_org_id).name if principal.bound_org_id else None  # type: ignore[union-attr]
    return WhoAmI(user=UserPublic.of(user), credential_kind=principal.credential_kind,
                  scopes=list(principal.scopes), bound_org=bound)
