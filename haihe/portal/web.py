"""The portal's request plumbing: templates, the signed-in page context, CSRF on form posts, HTML error pages.

Pages authenticate with the same session cookie the API sets (``/api/v1/auth/session`` or the sign-in form) and
resolve it through ``identity.authenticate``, like the API does. Every unsafe request must carry the session's CSRF
token, as the hidden ``csrf_token`` form field or the ``X-CSRF-Token`` header; a post without it is refused (403)
and audited. Service errors render as HTML pages with the status the API would give (404 for other tenants' things).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Coroutine, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import jinja2
from fastapi import Depends, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.routing import APIRoute
from sqlalchemy.orm import Session

from haihe import __version__
from haihe.errors import HaiheError, ServiceUnavailable
from haihe.platform import audit
from haihe.platform.access import Principal
from haihe.platform.api.deps import CSRF_HEADER, SESSION_COOKIE, client_ip
from haihe.platform.context import PlatformContext
from haihe.platform.identity import security
from haihe.platform.identity import service as identity
from haihe.platform.models import Role
from haihe.portal.i18n import LANG_COOKIE, LANGUAGES, Translator, negotiate

TEMPLATE_DIR = Path(__file__).parent / "templates"
STATIC_DIR = Path(__file__).parent / "static"
STATIC_PREFIX = "/portal-static"
CSRF_FIELD = "csrf_token"
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# the model zoo and endpoints pages (routes/zoo.py, routes/endpoints.py): the navigation links to them
ZOO_PAGES = True
ENDPOINT_PAGES = True


class SignInRequired(Exception):
    """No valid portal session: send the browser to the sign-in page."""


class CsrfRefused(Exception):
    """An unsafe request without the session's CSRF token (a cross-site post)."""


def build_environment() -> jinja2.Environment:
    """Jinja with autoescaping always on (every value a user typed is data, never markup)."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATE_DIR),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.globals["static"] = lambda path: f"{STATIC_PREFIX}/{path}?v={__version__}"
    env.globals["languages"] = LANGUAGES
    env.filters["when"] = format_when
    env.filters["duration"] = format_duration
    env.filters["num"] = _num
    env.filters["urlq"] = lambda v: quote(str(v), safe="")
    return env


def format_when(value: dt.datetime | str | None) -> str:
    if value is None:
        return "—"
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    s = int(seconds)
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}"


def _num(value: float | int | None, digits: int = 2) -> str:
    if value is None:
        return "∞"
    if isinstance(value, int) or float(value).is_integer():
        return f"{int(value):,}"
    return f"{value:,.{digits}f}"


def translator_for(request: Request) -> Translator:
    return Translator(negotiate(request.cookies.get(LANG_COOKIE), request.headers.get("accept-language")))


def security_headers(response: Response, ctx: PlatformContext) -> None:
    """No framing, no inline scripts; the browser may talk to this origin and, for uploads, to S3."""
    connect = "'self'" + (f" {ctx.settings.s3_endpoint}" if ctx.settings.s3_endpoint else "")
    response.headers["Content-Security-Policy"] = (
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
        f"connect-src {connect}; frame-ancestors 'none'; form-action 'self'; base-uri 'none'")
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"


def render_template(request: Request, template: str, status_code: int = 200, **data: Any) -> HTMLResponse:
    env: jinja2.Environment = request.app.state.portal_env
    ctx: PlatformContext = request.app.state.ctx
    t = data.pop("t", None) or translator_for(request)
    base = {"t": t, "lang": t.lang, "request": request, "path": request.url.path, "user": None, "csrf": "",
            "nav": "", "is_admin": False, "show_admin": False, "has_zoo": False, "has_endpoints": False}
    html = env.get_template(template).render({**base, **data})
    response = HTMLResponse(html, status_code=status_code)
    security_headers(response, ctx)
    return response


@dataclass
class Page:
    """What every signed-in page handler gets: who, in which language, with which token, over which DB session."""

    request: Request
    ctx: PlatformContext
    session: Session
    principal: Principal
    t: Translator
    csrf: str
    form: Mapping[str, str] = field(default_factory=dict)

    @property
    def is_admin(self) -> bool:
        return self.principal.is_platform_admin

    def render(self, template: str, status_code: int = 200, **data: Any) -> HTMLResponse:
        show_admin = self.is_admin or any(r == Role.ORG_ADMIN for r in self.principal.roles.values())
        return render_template(self.request, template, status_code, t=self.t, user=self.principal, csrf=self.csrf,
                               is_admin=self.is_admin, show_admin=show_admin,
                               has_zoo=ZOO_PAGES, has_endpoints=ENDPOINT_PAGES, **data)

    def field(self, name: str, default: str = "") -> str:
        return str(self.form.get(name, default)).strip()


def get_db_session(request: Request) -> Iterator[Session]:
    ctx: PlatformContext = request.app.state.ctx
    with ctx.db.session() as s:
        request.state.db_session = s
        yield s


DbSession = Annotated[Session, Depends(get_db_session, scope="function")]  # committed before the response


def _authenticate(ctx: PlatformContext, session: Session, cookie: str, ip: str) -> Principal | None:
    result = identity.authenticate(session, cookie, ip)
    if isinstance(result, identity.AuthFailure):
        return None
    # a session belongs in the browser; a pasted API key or CLI token in the cookie is not a portal sign-in
    return result if result.credential_kind == "session" else None


async def signed_in(request: Request, session: DbSession) -> Page:
    ctx: PlatformContext = request.app.state.ctx
    cookie = request.cookies.get(SESSION_COOKIE)
    if not cookie:
        raise SignInRequired
    principal = await run_in_threadpool(_authenticate, ctx, session, cookie, client_ip(request))
    if principal is None:
        raise SignInRequired
    prefix = cookie.split("_")[1]
    form: dict[str, str] = {}
    if request.method not in _SAFE_METHODS:
        presented = request.headers.get(CSRF_HEADER)
        if request.headers.get("content-type", "").startswith(("application/x-www-form-urlencoded",
                                                                "multipart/form-data")):
            parsed = await request.form()
            form = {k: v for k, v in parsed.items() if isinstance(v, str)}
            presented = presented or form.get(CSRF_FIELD)
        if not security.check_csrf(ctx.settings.secret_key, prefix, presented):
            await run_in_threadpool(audit.record_separately, ctx.db.sessions, principal, "auth.csrf",
                                    outcome="denied", source_ip=client_ip(request),
                                    details={"path": request.url.path, "via": "portal"})
            raise CsrfRefused
    request.state.principal = principal
    return Page(request=request, ctx=ctx, session=session, principal=principal, t=translator_for(request),
                csrf=security.csrf_token(ctx.settings.secret_key, prefix), form=form)


SignedIn = Annotated[Page, Depends(signed_in)]


def safe_next(target: str | None, default: str = "/") -> str:
    """Only same-site paths: never ``//host`` or a scheme (an open redirect)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return default
    return target


def redirect(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


def error_page(request: Request, status: int, title_key: str, message: str = "", detail: str = "") -> HTMLResponse:
    principal = getattr(request.state, "principal", None)
    return render_template(request, "error.html", status, user=principal, title_key=title_key, message=message,
                           detail=detail, status=status)


_ERROR_TITLES = {401: "error.unauthenticated", 403: "error.forbidden", 404: "error.not_found",
                 409: "error.conflict", 402: "error.quota", 422: "error.invalid", 429: "error.rate_limited",
                 503: "error.unavailable"}


class PortalRoute(APIRoute):
    """Routes of the portal: errors become HTML pages, a missing session becomes a redirect to sign-in."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        original = super().get_route_handler()

        async def handler(request: Request) -> Response:
            try:
                return await original(request)
            except (SignInRequired, CsrfRefused, HaiheError) as exc:
                # the error page is a normal response: nothing half-done by the handler may be committed after it
                db: Session | None = getattr(request.state, "db_session", None)
                if db is not None:
                    db.rollback()
                return _error_response(request, exc)

        return handler


def _error_response(request: Request, exc: Exception) -> Response:
    if isinstance(exc, SignInRequired):
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return redirect(f"/login?next={quote(target, safe='')}")
    if isinstance(exc, CsrfRefused):
        return error_page(request, 403, "error.csrf")
    assert isinstance(exc, HaiheError)
    status = exc.status if exc.status < 500 else 503
    message = exc.message if exc.status < 500 or exc.status == 503 else ""
    detail = ""
    if isinstance(exc, ServiceUnavailable):  # said in the reader's language; the service's own words as detail
        t = translator_for(request)
        if t.has(f"service.{exc.code}"):
            message, detail = t(f"service.{exc.code}"), exc.message
    return error_page(request, status, _ERROR_TITLES.get(status, "error.generic"), message, detail)
