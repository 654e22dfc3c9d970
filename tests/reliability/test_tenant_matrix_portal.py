"""The tenant matrix through the portal, generated from the app's route table: zero cross-tenant reads or writes.

Every portal route (a ``PortalRoute`` in ``app.routes``) is either exercised here or listed in ``NOT_TENANTED``
with the reason, so a new page cannot escape the matrix. Three orgs hold every resource type (projects, jobs with
logs, datasets with versions and an open upload, API keys, quotas, audit events). Signed in through the portal's own
cookie session as org A's researcher and as org A's org admin, every GET page and every form POST is made with org
C's identifiers: the answer must be a refusal (403/404, or a 422 form that says why), never a success, and the body
must not show any of C's identifiers the request did not itself carry. Forms posted without a CSRF token or with a
wrong one are refused (403) before anything else. A control proves the URLs address C's real resources.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from haihe.platform.api.deps import CSRF_COOKIE
from haihe.platform.context import PlatformContext
from haihe.platform.datasets import service as svc
from haihe.platform.settings import Settings
from haihe.portal.web import CSRF_FIELD, PortalRoute
from tests.fixtures.fake_scheduler import FakeFactory
from tests.fixtures.figures import Figures
from tests.fixtures.platform import PASSWORD, Tenancy, unique
from tests.reliability.test_tenant_matrix import PART, OrgWorld, _build_org

# portal routes that hold no tenant data, and why they are safe
NOT_TENANTED = {
    ("GET", "/login"): "the sign-in form",
    ("POST", "/login"): "sign-in: answers only with the caller's own session",
    ("POST", "/logout"): "acts on the caller's own session (CSRF checked below)",
    ("GET", "/lang/{code}"): "sets a language cookie, no data",
}
# pages without identifiers in the path that list things: C's org is put in the query, the body must show neither
# B's nor C's identifiers
LISTINGS = {"/", "/jobs", "/jobs/new", "/datasets", "/models", "/endpoints", "/endpoints/new", "/admin", "/cluster",
            "/admin/users", "/admin/usage", "/admin/usage.csv", "/admin/audit", "/admin/cluster"}
# pages whose resource the matrix's world cannot hold (no MLflow zoo, no serving runtime here): refused all the same
# (there is nothing of C's to find), but the control cannot read them
NO_CONTROL = {"/models/{org}/{name}", "/endpoints/{org}/{name}"}
CONTROL_STATUS = {"/admin/orgs/{org}": 200, "/datasets/{org}/{name}": 200, "/jobs/{job_id}": 200,
                  "/jobs/{job_id}/logs.txt": 200, "/jobs/{job_id}/logs/stream": 200}
REFUSED = (403, 404)
REFUSED_FORM = (403, 404, 422)
# a page of a kind this world has no backend for (no zoo) says so (422/503) before any lookup: no data either way
REFUSED_NO_RESOURCE = (403, 404, 422, 503)  # 422: the form comes back with the refusal written next to the field


@dataclass
class Visitor:
    who: str
    client: TestClient

    @property
    def csrf(self) -> str:
        return str(self.client.cookies.get(CSRF_COOKIE))


@dataclass
class World:
    app: Any
    client: TestClient
    tenancy: Tenancy
    orgs: dict[str, OrgWorld]
    visitors: dict[str, Visitor]  # org A's researcher and org admin
    victim_admin: Visitor  # org C's own org admin, for the control


def _visitor(app: Any, who: str, username: str) -> Visitor:
    client = TestClient(app, follow_redirects=False)
    r = client.post("/api/v1/auth/session", json={"username": username, "password": PASSWORD})
    assert r.status_code == 204, r.text
    assert client.cookies.get(CSRF_COOKIE), "the portal session sets a readable CSRF cookie"
    return Visitor(who, client)


def _org_admin_name(t: Tenancy, org: str) -> str:
    return t.user(org, "org_admin")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    from haihe.datasets.memory import MemoryStore
    from haihe.server import create_app

    tmp = tmp_path_factory.mktemp("portal-matrix")
    settings = Settings(database_url=f"sqlite:///{tmp / 'db.sqlite'}", schedulers={"fake": "fake://"},
                        default_scheduler="fake", reconcile_interval_s=0, maintenance_interval_s=0)
    ctx = PlatformContext.from_settings(settings)
    ctx.registry.register("fake", FakeFactory())
    store = MemoryStore(min_part_size=PART)
    app = create_app(settings, ctx=ctx)
    app.state.ctx.provide("datasets", svc.DatasetStorage.for_store(store, part_size=PART))
    with TestClient(app) as client:
        t = Tenancy(client).bootstrap()
        orgs = {k: _build_org(t, store, Path(tmp)) for k in ("a", "b", "c")}
        a, c = orgs["a"], orgs["c"]
        visitors = {"researcher": _visitor(app, "researcher of A", a.researcher),
                    "org_admin": _visitor(app, "org admin of A", _org_admin_name(t, a.name))}
        yield World(app, client, t, orgs, visitors, _visitor(app, "org admin of C", _org_admin_name(t, c.name)))


def _walk(routes: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(full path, route) of every route, inside included routers too (FastAPI keeps those as wrappers that hold
    the original router and the include's prefix)."""
    for route in routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:
            yield from _walk(inner.routes, prefix + route.include_context.prefix)
        elif isinstance(route, APIRoute):
            yield prefix + route.path, route


def portal_routes(app: Any) -> list[tuple[str, str]]:
    """(method, path) of every portal route, from the app's route table: every ``PortalRoute``."""
    found = sorted({(m, path) for path, r in _walk(app.routes) if isinstance(r, PortalRoute)
                    for m in (r.methods or set()) - {"HEAD"}})
    assert len(found) > 30, "the portal's routes were not found in the route table"
    return found


def _fill(path: str, victim: OrgWorld) -> str:
    values = {"org": victim.name, "job_id": victim.job_id, "prefix": victim.key_prefix,
              "name": victim.dataset if path.startswith("/datasets/") else "secret-" + path.split("/")[1]}
    out = path
    for param in re.findall(r"\{(\w+)\}", path):
        assert param in values, f"path parameter {{{param}}} of {path} has no tenant mapping: add it to _fill"
        out = out.replace("{" + param + "}", values[param])
    return out


def _form(path: str, victim: OrgWorld, attacker: OrgWorld) -> dict[str, str]:
    """A plausible form per POST route, naming the victim wherever the form names an org or its things."""
    forms: dict[str, dict[str, str]] = {
        "/datasets": {"org": victim.name, "name": unique("d"), "visibility": "private"},
        "/datasets/{org}/{name}/share": {"target": attacker.name, "action": "share"},
        "/datasets/{org}/{name}/visibility": {"visibility": "public"},
        "/jobs/new": {"target": f"{victim.name}/{victim.project}", "mode": "yaml",
                      "spec_yaml": "name: x\nentrypoint: 'true'\n"},
        "/jobs/{job_id}/cancel": {},
        "/jobs/{job_id}/resubmit": {},
        "/models/{org}/{name}/alias": {"alias": "production", "version": "1"},
        "/endpoints/new": {"org": victim.name, "name": unique("e"), "model": f"{victim.name}/m@1"},
        "/endpoints/{org}/{name}/keys": {"key_name": "x"},
        "/endpoints/{org}/{name}/keys/{prefix}/revoke": {},
        "/endpoints/{org}/{name}/scale": {"min_replicas": "1", "max_replicas": "2"},
        "/endpoints/{org}/{name}/delete": {},
        "/admin/orgs": {"name": unique("o")},
        "/admin/orgs/{org}/projects": {"name": unique("p")},
        "/admin/orgs/{org}/users": {"username": unique("u"), "role": "researcher", "password": PASSWORD + "x"},
        "/admin/orgs/{org}/quota": {"gpu_hours": "100000", "project": victim.project},
        "/admin/orgs/{org}/status": {"status": "suspended"},
    }
    assert path in forms, f"POST {path} has no example form in _form(): the matrix could not reach its access check"
    return forms[path]


def _get(client: TestClient, url: str) -> tuple[int, str]:
    """GET, reading a page whole (up to 1 MiB) but an event stream only to its first chunk: a log stream that
    wrongly opened would otherwise never end."""
    body = b""
    with client.stream("GET", url) as r:
        for chunk in r.iter_bytes():
            body += chunk
            if len(body) >= 1 << 20 or r.headers.get("content-type", "").startswith("text/event-stream"):
                break
    return r.status_code, body.decode(errors="replace")


def _leaks(body: str, victim: OrgWorld, sent: str) -> list[str]:
    """C's identifiers in the body that the request did not carry itself (echoing a typed name is no leak)."""
    return [s for s in [victim.name, *victim.secrets, victim.upload_id] if s in body and s not in sent]


def test_every_portal_route_is_classified(world: World) -> None:
    for method, path in portal_routes(world.app):
        if (method, path) in NOT_TENANTED:
            continue
        if method == "GET":
            assert "{" in path or path in LISTINGS, f"GET {path} is neither tenant-scoped nor a known listing"
        else:
            assert method == "POST", f"{method} {path}: the matrix only knows GET pages and form POSTs"
            _form(path, world.orgs["c"], world.orgs["a"])  # fails loudly when a new form has no example


def test_no_cross_tenant_reads_or_writes_through_the_portal(world: World, figures: Figures) -> None:
    attacker, victim = world.orgs["a"], world.orgs["c"]
    others = [world.orgs["b"], victim]
    before = _victim_state(world)
    problems: list[str] = []
    pages = posts = 0
    for method, path in portal_routes(world.app):
        if (method, path) in NOT_TENANTED:
            continue
        for visitor in world.visitors.values():
            c = visitor.client
            url = _fill(path, victim)
            if method == "GET":
                pages += 1
                if path in LISTINGS:
                    url = f"{path}?org={victim.name}&project={victim.project}&month=2026-11"
                    status, text = _get(c, url)
                    for other in others:
                        if status < 400 and (leaked := _leaks(text, other, url)):
                            problems.append(f"{visitor.who}: GET {url} shows {other.name}'s {leaked}")
                    continue
                status, text = _get(c, url)
                sent = url
                ok = status in (REFUSED_NO_RESOURCE if path in NO_CONTROL else REFUSED)
            else:
                posts += 1
                form = {**_form(path, victim, attacker), CSRF_FIELD: visitor.csrf}
                r = c.post(url, data=form)
                sent = f"{url} {form}"
                status, text = r.status_code, r.text
                ok = status in REFUSED_FORM
            if not ok:
                problems.append(f"{visitor.who}: {method} {sent} -> {status}")
            elif leaked := _leaks(text, victim, sent):
                problems.append(f"{visitor.who}: {method} {sent} refused but shows C's {leaked}")
    after = _victim_state(world)
    if after != before:
        problems.append(f"org C changed: {before} -> {after}")
    figures.record("test_no_cross_tenant_reads_or_writes_through_the_portal",
                   "org A's researcher and org admin open every portal page and post every portal form with "
                   "org C's identifiers", {"pages": pages, "posts": posts, "cross_tenant_successes": len(problems)},
                   "passed" if not problems else "failed")
    assert pages > 30 and posts > 20
    assert not problems, "\n".join(problems)


def _items(body: Any) -> list[dict[str, Any]]:
    return list(body["items"] if isinstance(body, dict) else body)


def _victim_state(world: World) -> dict[str, Any]:
    """What a cross-tenant write would change in org C, read through the API by the platform admin."""
    c, v = world.client, world.orgs["c"]
    h = world.tenancy.admin_headers
    ds = c.get(f"/api/v1/orgs/{v.name}/datasets/{v.dataset}", headers=h).json()
    return {
        "org": c.get(f"/api/v1/orgs/{v.name}", headers=h).json().get("status"),
        "projects": sorted(p["name"] for p in c.get(f"/api/v1/orgs/{v.name}/projects", headers=h).json()),
        "users": sorted(u["username"] for u in _items(c.get(f"/api/v1/users?org={v.name}", headers=h).json())),
        "jobs": sorted((j["id"], j["state"]) for j in _items(c.get(f"/api/v1/jobs?org={v.name}", headers=h).json())),
        "datasets": sorted(d["name"] for d in _items(c.get(f"/api/v1/datasets?org={v.name}", headers=h).json())),
        "dataset": (ds["visibility"], ds["shares"], [x["state"] for x in ds["versions"]]),
        "quota": c.get(f"/api/v1/orgs/{v.name}/quota", headers=h).json(),
    }


def test_control_the_victims_own_admin_sees_what_was_refused(world: World) -> None:
    """Without this, a 404 in the matrix could just be a wrong URL (and an empty listing a broken one)."""
    victim = world.orgs["c"]
    bad = []
    own = world.victim_admin.client
    for url, shown in (("/datasets", victim.dataset), ("/jobs", victim.project), (f"/admin/orgs/{victim.name}",
                                                                                 victim.researcher)):
        r = own.get(url)
        if r.status_code != 200 or shown not in r.text:
            bad.append(f"GET {url} as C's admin -> {r.status_code}, {shown} shown: {shown in r.text}")
    for method, path in portal_routes(world.app):
        if method != "GET" or "{" not in path or (method, path) in NOT_TENANTED or path in NO_CONTROL:
            continue
        assert path in CONTROL_STATUS, f"GET {path}: add the status C's own admin gets to CONTROL_STATUS"
        with world.victim_admin.client.stream("GET", _fill(path, victim)) as r:
            if r.status_code != CONTROL_STATUS[path]:
                bad.append(f"GET {path} -> {r.status_code}")
    assert not bad, "\n".join(bad)


def test_forms_without_or_with_a_wrong_csrf_token_are_refused(world: World, figures: Figures) -> None:
    """On org A's own things (so that only the token can be the reason): no token, or another session's token."""
    a = world.orgs["a"]
    visitor = world.visitors["org_admin"]
    other = world.visitors["researcher"].csrf
    refused = 0
    wrong = []
    for method, path in portal_routes(world.app):
        if method != "POST" or path == "/login":
            continue
        url = _fill(path, a)
        form = _form(path, a, world.orgs["b"]) if path != "/logout" else {}
        for token in (None, other, "x" * 40):
            data = dict(form) if token is None else {**form, CSRF_FIELD: token}
            r = visitor.client.post(url, data=data)
            if r.status_code == 403 and "security token" in r.text:
                refused += 1
            else:
                wrong.append(f"POST {path} token={token!r:.12} -> {r.status_code}")
    figures.record("test_forms_without_or_with_a_wrong_csrf_token_are_refused",
                   "every portal form posted without a CSRF token, with another session's, with a made-up one",
                   {"posts": refused + len(wrong), "accepted": len(wrong)}, "passed" if not wrong else "failed")
    assert refused > 20
    assert not wrong, "\n".join(wrong)
