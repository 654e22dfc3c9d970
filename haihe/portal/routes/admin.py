"""Admin pages: orgs, projects, users, quota editing, suspension. The services decide who may do each thing."""

from __future__ import annotations

import math
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import HTMLResponse, Response

from haihe.errors import HaiheError, PermissionDenied
from haihe.platform.identity import service as identity
from haihe.platform.models import Role, Status
from haihe.platform.quotas import ledger as quotas
from haihe.portal.forms import FormErrors, form_field
from haihe.portal.summaries import quota_bars
from haihe.portal.web import Page, PortalRoute, SignedIn, redirect

router = APIRouter(route_class=PortalRoute, include_in_schema=False)

QUOTA_FIELDS = ("gpu_hours", "cpu_hours", "storage_gb", "requests_per_month", "max_jobs", "max_gpus")
_GIB = 1024**3
NOTICES = ("org_created", "project_created", "user_created", "quota_saved", "org_suspended", "org_active")


def require_admin_area(page: Page) -> None:
    """Platform admins and org admins; everyone else never sees the admin pages."""
    if not (page.is_admin or any(r == Role.ORG_ADMIN for r in page.principal.roles.values())):
        raise PermissionDenied("the admin pages need an administrator")


def _quota_values(q: dict[str, Any] | None) -> dict[str, str]:
    q = q or {}
    out = {}
    for name in QUOTA_FIELDS:
        if name == "storage_gb":
            v = q.get("storage_bytes")
            out[name] = "" if v is None else f"{v / _GIB:g}"
        else:
            v = q.get(name)
            out[name] = "" if v is None else f"{v:g}"
    return out


def parse_quota_form(form: dict[str, str], errors: FormErrors, page: Page) -> dict[str, Any]:
    """Empty means unlimited; numbers must be non-negative; storage is typed in GiB."""
    limits: dict[str, Any] = {}
    for name in QUOTA_FIELDS:
        raw = form.get(name, "").strip()
        if not raw:
            limits["storage_bytes" if name == "storage_gb" else name] = None
            continue
        try:
            value = float(raw)
        except ValueError:
            errors.add(name, page.t("form.err.number"))
            continue
        if not math.isfinite(value):  # 1e309 is inf and nan is no number: neither is a limit
            errors.add(name, page.t("form.err.finite"))
            continue
        if value < 0:
            errors.add(name, page.t("form.err.negative"))
            continue
        field = "storage_bytes" if name == "storage_gb" else name
        top = quotas.ABSURD[field] / (_GIB if name == "storage_gb" else 1)
        if value > top:
            errors.add(name, page.t("form.err.too_large", max=f"{top:g}"))
            continue
        if name == "storage_gb":
            limits["storage_bytes"] = int(value * _GIB)
        elif name in ("gpu_hours", "cpu_hours"):
            limits[name] = value
        else:
            limits[name] = int(value)
    return limits


@router.get("/admin", response_class=HTMLResponse)
def admin_home(page: SignedIn, done: str = "") -> HTMLResponse:
    require_admin_area(page)
    orgs = identity.list_orgs(page.session, page.principal)
    return page.render("admin_orgs.html", nav="admin", sub="orgs", orgs=orgs, errors=FormErrors(), values={},
                       done=done if done in NOTICES else "")


@router.post("/admin/orgs", response_class=HTMLResponse)
def create_org(page: SignedIn) -> Response:
    require_admin_area(page)
    name = page.field("name")
    try:
        identity.create_org(page.session, page.principal, name, page.field("display_name"))
    except HaiheError as exc:
        page.session.rollback()
        errors = FormErrors()
        errors.add(form_field(exc.field) if exc.field != "name" else "name", exc.message)
        orgs = identity.list_orgs(page.session, page.principal)
        return page.render("admin_orgs.html", 422, nav="admin", sub="orgs", orgs=orgs, errors=errors,
                           values=dict(page.form), done="")
    return redirect(f"/admin/orgs/{name}?done=org_created")


def _org_page(page: Page, org: str, errors: FormErrors | None = None, values: dict[str, str] | None = None,
              form: str = "", done: str = "", status: int = 200) -> HTMLResponse:
    s, p = page.session, page.principal
    org_row = identity.get_org(s, p, org)
    projects = identity.list_projects(s, p, org)
    users = identity.list_users(s, p, org)
    shown = quotas.show(s, p, org, None)
    project_quotas = []
    for proj in projects:
        try:
            pshown = quotas.show(s, p, org, proj.name)
        except HaiheError:
            continue
        project_quotas.append({"name": proj.name, "quota": _quota_values(pshown["quota"]),
                               "bars": quota_bars(pshown)})
    roles = {u.username: next((m.role for m in u.memberships if m.org_id == org_row.id), "") for u in users}
    return page.render("admin_org.html", status, nav="admin", sub="orgs", org=org_row, projects=projects,
                       users=users, roles=roles, quota=_quota_values(shown["quota"]), bars=quota_bars(shown),
                       period=shown["period"], events=shown["events"][:10], project_quotas=project_quotas,
                       errors=errors or FormErrors(), values=values or {}, form=form,
                       done=done if done in NOTICES else "", quota_fields=QUOTA_FIELDS,
                       roles_all=[r.value for r in Role])


@router.get("/admin/orgs/{org}", response_class=HTMLResponse)
def org_page(org: str, page: SignedIn, done: str = "") -> HTMLResponse:
    require_admin_area(page)
    return _org_page(page, org, done=done)


@router.post("/admin/orgs/{org}/projects", response_class=HTMLResponse)
def create_project(org: str, page: SignedIn) -> Response:
    require_admin_area(page)
    try:
        identity.create_project(page.session, page.principal, org, page.field("name"), page.field("description"))
    except HaiheError as exc:
        page.session.rollback()
        errors = FormErrors()
        errors.add("project_" + (exc.field or "name"), exc.message)
        return _org_page(page, org, errors, dict(page.form), "project", status=exc.status)
    return redirect(f"/admin/orgs/{org}?done=project_created")


@router.post("/admin/orgs/{org}/users", response_class=HTMLResponse)
def create_user(org: str, page: SignedIn) -> Response:
    require_admin_area(page)
    errors = FormErrors()
    role = page.field("role", Role.RESEARCHER.value)
    if role not in {r.value for r in Role}:
        errors.add("user_role", page.t("form.err.choice"))
    else:
        try:
            identity.create_user(page.session, page.principal, org, page.field("username"), Role(role),
                                 page.field("password") or None, page.field("display_name"), page.field("email"))
        except HaiheError as exc:
            page.session.rollback()
            errors.add("user_" + (exc.field or "username"), exc.message)
    if errors:
        values = {k: v for k, v in page.form.items() if k != "password"}
        return _org_page(page, org, errors, values, "user", status=422)
    return redirect(f"/admin/orgs/{org}?done=user_created")


@router.post("/admin/orgs/{org}/quota", response_class=HTMLResponse)
def save_quota(org: str, page: SignedIn) -> Response:
    require_admin_area(page)
    project = page.field("project") or None
    errors = FormErrors()
    limits = parse_quota_form(dict(page.form), errors, page)
    prefix = f"q_{project}_" if project else "q__"
    if not errors:
        try:
            quotas.set_quota(page.session, page.principal, org, project, limits)
        except HaiheError as exc:
            page.session.rollback()
            name = "storage_gb" if exc.field == "storage_bytes" else (exc.field or "gpu_hours")
            errors.add(name, exc.message)
    if errors:
        scoped = FormErrors({prefix + k: v for k, v in errors.by_field.items()})
        return _org_page(page, org, scoped, {prefix + k: v for k, v in page.form.items()}, "quota", status=422)
    return redirect(f"/admin/orgs/{org}?done=quota_saved")


@router.post("/admin/orgs/{org}/status", response_class=HTMLResponse)
def set_status(org: str, page: SignedIn,
               ) -> Response:
    require_admin_area(page)
    status = Status.SUSPENDED if page.field("status") == "suspended" else Status.ACTIVE
    identity.set_org_status(page.session, page.principal, org, status)
    return redirect(f"/admin/orgs/{org}?done=org_{status.value}")


@router.get("/admin/users", response_class=HTMLResponse)
def users_page(page: SignedIn, q: Annotated[str, Query(max_length=63)] = "") -> HTMLResponse:
    require_admin_area(page)
    users = [u for u in identity.list_users(page.session, page.principal) if q in u.username]
    return page.render("admin_users.html", nav="admin", sub="users", users=users[:500], q=q)
