"""Pages: sign in, sign out, language switch."""

from __future__ import annotations

import datetime as dt
import secrets
from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, Response

from haihe.errors import AuthenticationRequired, RateLimited
from haihe.platform.api.deps import CSRF_COOKIE, SESSION_COOKIE, client_ip
from haihe.platform.context import PlatformContext
from haihe.platform.identity import service as identity
from haihe.platform.identity.auth_router import set_session_cookies
from haihe.platform.models import CredentialKind
from haihe.portal.i18n import LANG_COOKIE, LANGUAGES
from haihe.portal.web import DbSession, PortalRoute, SignedIn, redirect, render_template, safe_next, translator_for

router = APIRouter(route_class=PortalRoute, include_in_schema=False)

# Sign-in happens before there is a session to bind a token to: a random cookie echoed in the form (double submit)
# stops another site from signing a victim into the attacker's account.
LOGIN_CSRF_COOKIE = "haihe_login_csrf"


def _login_page(request: Request, next_url: str, token: str, error: str = "", username: str = "",
                status: int = 200) -> HTMLResponse:
    response = render_template(request, "login.html", status, next_url=next_url, login_token=token, error=error,
                               username=username)
    ctx: PlatformContext = request.app.state.ctx
    response.set_cookie(LOGIN_CSRF_COOKIE, token, max_age=3600, httponly=True, samesite="strict",
                        secure=ctx.settings.secure_cookies, path="/login")
    return response


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request, next: str = "/") -> HTMLResponse:
    token = request.cookies.get(LOGIN_CSRF_COOKIE) or secrets.token_urlsafe(24)
    return _login_page(request, safe_next(next), token)


@router.post("/login", response_class=HTMLResponse)
async def login(
    request: Request,
    session: DbSession,
    username: Annotated[str, Form(max_length=63)] = "",
    password: Annotated[str, Form(max_length=1024)] = "",
    login_token: Annotated[str, Form(max_length=200)] = "",
    next: Annotated[str, Form(max_length=2000)] = "/",
) -> Response:
    ctx: PlatformContext = request.app.state.ctx
    t = translator_for(request)
    expected = request.cookies.get(LOGIN_CSRF_COOKIE)
    fresh = secrets.token_urlsafe(24)
    if not expected or not secrets.compare_digest(expected, login_token):
        return _login_page(request, safe_next(next), fresh, t("login.expired"), username, 403)
    settings = ctx.settings

    def _do() -> identity.IssuedCredential:
        issued = identity.login(session, username.strip(), password, kind=CredentialKind.SESSION,
                                ttl=dt.timedelta(hours=settings.session_ttl_hours), source_ip=client_ip(request),
                                max_failures=settings.login_max_failures,
                                lockout=dt.timedelta(seconds=settings.login_lockout_s))
        session.commit()
        return issued

    try:
        issued = await run_in_threadpool(_do)
    except AuthenticationRequired:
        return _login_page(request, safe_next(next), fresh, t("login.wrong"), username, 401)
    except RateLimited:
        return _login_page(request, safe_next(next), fresh, t("login.throttled"), username, 429)
    response = redirect(safe_next(next))
    set_session_cookies(response, ctx, issued)
    response.delete_cookie(LOGIN_CSRF_COOKIE, path="/login")
    return response


@router.post("/logout")
def logout(page: SignedIn) -> Response:
    identity.logout(page.session, page.principal)
    page.session.commit()
    response = redirect("/login")
    response.delete_cookie(SESSION_COOKIE, path="/")
    response.delete_cookie(CSRF_COOKIE, path="/")
    return response


@router.get("/lang/{code}")
def switch_language(code: str, request: Request, next: str = "/") -> Response:
    """Remember the language in a cookie for a year (harmless to set cross-site: it changes no data)."""
    response = redirect(safe_next(next))
    if code in LANGUAGES:
        ctx: PlatformContext = request.app.state.ctx
        response.set_cookie(LANG_COOKIE, code, max_age=365 * 86400, samesite="lax", path="/",
                            secure=ctx.settings.secure_cookies)
    return response
