"""``/mlflow/…``: the authenticated MLflow proxy — the tracking server of job runtimes, and MLflow for people.

It checks the job token (``Authorization: Bearer hjt_…``, sent by MLflow's client from ``MLFLOW_TRACKING_TOKEN``)
and the job's row — or a person's API key or token (the stock MLflow client with ``MLFLOW_TRACKING_TOKEN``), or
their portal session (MLflow's own web UI at ``/mlflow/``, read-only) — asks
:class:`haihe.platform.tracking.proxy.Policy` whether the call is allowed, and forwards it to the real MLflow server.
Artifact uploads and downloads are streamed in both directions and never buffered.
Refusals use MLflow's error format, so MLflow's client raises its usual exceptions.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import parse_qs, quote

import httpx
from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response, StreamingResponse
from sqlalchemy import select
from starlette.background import BackgroundTask

from haihe.errors import AuthenticationRequired
from haihe.platform.access import WRITE_ROLES
from haihe.platform.api.deps import SESSION_COOKIE, CtxDep, client_ip
from haihe.platform.context import PlatformContext
from haihe.platform.identity import service as identity
from haihe.platform.models import Job, Org, Project, Status, utcnow
from haihe.platform.tracking.proxy import (
    ENDED_GRACE_S,
    ENDPOINT_SCOPE,
    TOKEN_PREFIX,
    Call,
    JobScope,
    Policy,
    Scope,
    UserScope,
    verify_token,
)
from haihe.schedulers.base import JobState

log = logging.getLogger(__name__)
router = APIRouter(tags=["tracking"], include_in_schema=False)

MAX_UPLOAD = 64 * 1024**3  # one artifact file a job uploads (a model checkpoint); streamed, never buffered
MAX_JSON_BODY = 16 * 1024 * 1024  # MLflow REST bodies (log-batch is capped far below this by MLflow itself)
_HOP = {"host", "authorization", "cookie", "connection", "keep-alive", "transfer-encoding", "te", "trailer",
        "upgrade", "proxy-authorization", "proxy-authenticate"}
_CACHE_MAX = 10_000


def _mlflow_error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error_code": code, "message": message}, status_code=status)


class _Upstream(Exception):
    """The MLflow server did not answer."""


class ProxyCache:
    """Answers of MLflow that the policy asks for over and over (run → experiment never changes)."""

    def __init__(self) -> None:
        self._data: dict[tuple[str, str], tuple[float, Any]] = {}

    def get(self, kind: str, key: str) -> tuple[bool, Any]:
        hit = self._data.get((kind, key))
        if hit is None or hit[0] < time.monotonic():
            return False, None
        return True, hit[1]

    def put(self, kind: str, key: str, value: Any, ttl_s: float) -> Any:
        if len(self._data) >= _CACHE_MAX:
            self._data.clear()
        self._data[(kind, key)] = (time.monotonic() + ttl_s, value)
        return value


class MlflowLookup:
    """The policy's questions, answered by MLflow's REST API (the policy's ``Lookup``)."""

    def __init__(self, http: httpx.AsyncClient, base: str, cache: ProxyCache) -> None:
        self.http = http
        self.base = base
        self.cache = cache

    async def _get(self, path: str, params: Mapping[str, str]) -> dict[str, Any] | None:
        try:
            response = await _send(self.http, self.http.build_request(
                "GET", f"{self.base}/api/2.0/mlflow/{path}", params=params), stream=False)
        except httpx.TransportError as exc:
            raise _Upstream(str(exc)) from exc
        if response.status_code >= 500:
            raise _Upstream(f"HTTP {response.status_code}")
        if not response.is_success:
            return None  # missing, or a malformed id: either way it is nothing the job may use
        body = response.json()
        return body if isinstance(body, dict) else None

    async def _cached(self, kind: str, key: str, ttl_s: float, path: str, params: Mapping[str, str],
                      pick: Any) -> Any:
        hit, value = self.cache.get(kind, key)
        if hit:
            return value
        body = await self._get(path, params)
        value = pick(body) if body is not None else None
        return self.cache.put(kind, key, value, ttl_s if value is not None else 2.0)

    async def experiment_name(self, experiment_id: str) -> str | None:
        return await self._cached("exp", experiment_id, 60.0, "experiments/get", {"experiment_id": experiment_id},
                                  lambda b: b["experiment"]["name"])

    async def run_experiment(self, run_id: str) -> str | None:
        return await self._cached("run", run_id, 3600.0, "runs/get", {"run_id": run_id},
                                  lambda b: str(b["run"]["info"]["experiment_id"]))

    async def logged_model_experiment(self, model_id: str) -> str | None:
        return await self._cached("lm", model_id, 3600.0, f"logged-models/{quote(model_id, safe='')}", {},
                                  lambda b: str(b["model"]["info"]["experiment_id"]))

    async def model_tags(self, name: str) -> Mapping[str, str] | None:
        return await self._cached("tags", name, 10.0, "registered-models/get", {"name": name},
                                  lambda b: {t["key"]: t.get("value", "")
                                             for t in b["registered_model"].get("tags", ())})

    async def models_of_logged_model(self, model_id: str) -> Sequence[str]:
        if not model_id.startswith("m-") or not model_id[2:].isalnum():
            return []
        found = await self._cached("lmv", model_id, 10.0, "model-versions/search",
                                   {"filter": f"source_path = 'models:/{model_id}'", "max_results": "100"},
                                   lambda b: sorted({v["name"] for v in b.get("model_versions", ())}))
        return found or []


SCOPE_TTL_S = 5.0  # a job's right to write, re-read this often: every metric a job logs passes here


def _scope_state(ctx: PlatformContext, scope: JobScope) -> bool:
    """Whether the token's job may still write (raises when the job is gone or does not match its token)."""
    with ctx.db.session() as session:
        if scope.job_id.startswith(ENDPOINT_SCOPE):  # an endpoint's model servers: read-only, while it exists
            from haihe.platform.endpoints.rows import Endpoint

            ep_id = scope.job_id[len(ENDPOINT_SCOPE):]
            ep = session.get(Endpoint, int(ep_id)) if ep_id.isdigit() else None
            if ep is None or ep.org.name != scope.org or scope.project:
                raise AuthenticationRequired("invalid or expired job token")
            return False
        row = session.execute(  # one round trip: the job with its org's and project's names and states
            select(Job.state, Job.ended_at, Org.status, Project.status)
            .join(Org, Org.id == Job.org_id).join(Project, Project.id == Job.project_id)
            .where(Job.id == scope.job_id, Org.name == scope.org, Project.name == scope.project)).first()
    if row is None:
        raise AuthenticationRequired("invalid or expired job token")
    state, ended_at, org_status, project_status = row
    if org_status != Status.ACTIVE.value or project_status != Status.ACTIVE.value:
        return False
    if JobState(state).is_terminal() and ended_at is not None:
        return (utcnow() - ended_at).total_seconds() <= ENDED_GRACE_S
    return True


async def _job_scope_state(ctx: PlatformContext, cache: ProxyCache, scope: JobScope) -> bool:
    """``_scope_state``, remembered for SCOPE_TTL_S: a job that ends, or an org suspended, loses its writes within
    seconds (a job's own end is later than its last write anyway); a token that matches no job is never cached."""
    key = f"{scope.job_id}|{scope.org}|{scope.project}"
    hit, writable = cache.get("scope", key)
    if hit:
        return bool(writable)
    writable = await run_in_threadpool(_scope_state, ctx, scope)
    return bool(cache.put("scope", key, writable, SCOPE_TTL_S))


def _user_scope(ctx: PlatformContext, credential: str, from_cookie: bool, ip: str) -> tuple[UserScope, bool]:
    """A person's scope: every org they belong to for reading, those where their role may change things for
    writing. A browser session is read-only here (MLflow's UI sends no CSRF token)."""
    with ctx.db.session() as session:
        principal = identity.authenticate(session, credential, ip)
        if isinstance(principal, identity.AuthFailure):
            raise AuthenticationRequired(f"invalid credentials: {principal.reason}")
        if principal.credential_kind == "key" and "api" not in principal.scopes:
            raise AuthenticationRequired("this API key may only call inference endpoints")
        visible = principal.visible_org_ids()
        q = select(Org) if visible is None else select(Org).where(Org.id.in_(visible))
        orgs = session.scalars(q).all()
        read = frozenset(o.name for o in orgs)
        write = frozenset(o.name for o in orgs if o.status == Status.ACTIVE.value
                          and principal.role_in(o.id) in WRITE_ROLES)
    scope = UserScope(principal.username, read, frozenset() if from_cookie else write, every_org=visible is None)
    return scope, not from_cookie


async def _authenticate(ctx: PlatformContext, request: Request) -> tuple[Scope, bool]:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if header and (scheme.lower() != "bearer" or not token):
        raise AuthenticationRequired("send 'Authorization: Bearer <job token, API key or token>'")
    if token.startswith(TOKEN_PREFIX):
        scope = verify_token(ctx.settings.secret_key, token)
        return scope, await _job_scope_state(ctx, _cache(request), scope)
    cookie = request.cookies.get(SESSION_COOKIE, "") if not token else ""
    if not token and not cookie:
        raise AuthenticationRequired("sign in to the portal, or set MLFLOW_TRACKING_TOKEN to your API key or "
                                     "token (jobs send their job token)")
    return await run_in_threadpool(_user_scope, ctx, token or cookie, not token, client_ip(request))


# a pooled connection MLflow closed (it restarted, or dropped an idle keep-alive) fails on its next use before
# any answer ("server disconnected without sending a response", a refused or unsent request): sent again once on
# a fresh connection. A body already streamed from the client cannot be sent again; that error goes back.
_STALE = (httpx.RemoteProtocolError, httpx.ConnectError, httpx.WriteError)


async def _send(http: httpx.AsyncClient, request: httpx.Request, *, stream: bool,
                replayable: bool = True) -> httpx.Response:
    try:
        return await http.send(request, stream=stream)
    except _STALE:
        if not replayable:
            raise
        log.info("MLflow closed a pooled connection; %s %s sent again", request.method, request.url.path)
        return await http.send(request, stream=stream)


def _http(request: Request) -> httpx.AsyncClient:
    """One pooled client per app for every proxied call: building one per request costs a TLS context each time
    (``ssl.create_default_context`` was most of the API's CPU while jobs logged). Closed by the app's lifespan."""
    loop = asyncio.get_running_loop()
    held: tuple[asyncio.AbstractEventLoop, httpx.AsyncClient] | None = getattr(request.app.state,
                                                                               "mlflow_proxy_http", None)
    if held is None or held[0] is not loop:  # a pool belongs to one event loop (test clients may run several)
        http = httpx.AsyncClient(timeout=httpx.Timeout(120.0, connect=3.0),
                                 limits=httpx.Limits(max_connections=256, max_keepalive_connections=64))
        request.app.state.mlflow_proxy_http = held = (loop, http)
    return held[1]


async def close_http(state: Any) -> None:
    held: tuple[asyncio.AbstractEventLoop, httpx.AsyncClient] | None = getattr(state, "mlflow_proxy_http", None)
    if held is not None and held[0] is asyncio.get_running_loop():
        state.mlflow_proxy_http = None
        await held[1].aclose()


def _cache(request: Request) -> ProxyCache:
    cache: ProxyCache | None = getattr(request.app.state, "mlflow_proxy_cache", None)
    if cache is None:
        cache = ProxyCache()
        request.app.state.mlflow_proxy_cache = cache
    return cache


@router.api_route("/mlflow/{path:path}", methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"],
                  include_in_schema=False)
async def mlflow_proxy(path: str, request: Request, ctx: CtxDep) -> Response:
    upstream = ctx.settings.mlflow_url.rstrip("/")
    if not upstream:
        return _mlflow_error(503, "TEMPORARILY_UNAVAILABLE", "this platform has no MLflow server configured")
    try:
        scope, writable = await _authenticate(ctx, request)
    except AuthenticationRequired as exc:
        return _mlflow_error(401, "UNAUTHENTICATED", exc.message)

    streaming = path.startswith("api/2.0/mlflow-artifacts/artifacts/") and request.method == "PUT"
    raw = b""
    body: dict[str, Any] = {}
    if not streaming and request.method not in ("GET", "HEAD"):
        raw = await request.body()
        if len(raw) > MAX_JSON_BODY:
            return _mlflow_error(413, "INVALID_PARAMETER_VALUE", "request body too large")
        if raw:
            try:
                parsed = json.loads(raw)
            except ValueError:
                parsed = None
            if not isinstance(parsed, dict):
                return _mlflow_error(400, "MALFORMED_REQUEST", "the request body must be a JSON object")
            body = parsed

    http = _http(request)
    try:
        policy = Policy(scope, MlflowLookup(http, upstream, _cache(request)), writable=writable)
        call = Call(request.method, path, parse_qs(request.url.query), body)
        decision = await policy.decide(call)
        if not decision.allowed:
            log.info("mlflow proxy refused %s /%s for job %s: %s", request.method, path, scope.job_id,
                     decision.message)
            return _mlflow_error(decision.status, decision.error_code, decision.message)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        url = f"{upstream}/{quote(path)}" + (f"?{request.url.query}" if request.url.query else "")
        content: Any = request.stream() if streaming else raw
        upstream_request = http.build_request(request.method, url, headers=headers, content=content)
        response = await _send(http, upstream_request, stream=True, replayable=not streaming)
    except _Upstream as exc:
        return _mlflow_error(503, "TEMPORARILY_UNAVAILABLE", f"the MLflow server is unreachable ({exc})")
    except httpx.TransportError as exc:
        return _mlflow_error(503, "TEMPORARILY_UNAVAILABLE",
                             f"the MLflow server is unreachable ({type(exc).__name__})")
    if decision.filter is not None and response.is_success:
        try:
            answer = json.loads(await response.aread())
            filtered = await policy.filter_body(decision.filter, answer if isinstance(answer, dict) else {})
        except (ValueError, _Upstream):
            filtered = None
        finally:
            await response.aclose()
        if filtered is None:
            return _mlflow_error(503, "TEMPORARILY_UNAVAILABLE", "the MLflow server sent an unreadable answer")
        return JSONResponse(filtered, status_code=response.status_code)

    out_headers = {k: v for k, v in response.headers.items() if k.lower() not in _HOP}
    return StreamingResponse(response.aiter_raw(), status_code=response.status_code, headers=out_headers,
                             background=BackgroundTask(response.aclose))
