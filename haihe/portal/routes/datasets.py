"""Pages: datasets — list, create, a dataset (versions, manifest, sharing, lineage), and the folder upload.

The upload runs in the browser (static/upload.js): it asks the API for presigned multipart URLs and PUTs the bytes
straight to S3, so the server is never in the data path; this page only hosts it.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, Response

from haihe import names
from haihe.errors import HaiheError
from haihe.platform.datasets import service as svc
from haihe.platform.datasets.router import get_storage
from haihe.platform.identity import service as identity
from haihe.portal.forms import FormErrors
from haihe.portal.web import Page, PortalRoute, SignedIn, redirect

router = APIRouter(route_class=PortalRoute, include_in_schema=False)

VISIBILITIES = ("private", "org", "public")
NOTICES = ("created", "shared", "unshared", "visibility", "uploaded")


def _member_orgs(page: Page) -> list[str]:
    return [o.name for o in identity.list_orgs(page.session, page.principal)
            if page.is_admin or o.id in page.principal.roles]


def _list(page: Page, errors: FormErrors, values: dict[str, str], cursor: int | None, status: int = 200,
          org: str = "") -> HTMLResponse:
    result = svc.list_datasets(page.session, page.principal, org=org or None, cursor=cursor, limit=50)
    return page.render("datasets.html", status, nav="datasets", items=result.items, next_cursor=result.next_cursor,
                       orgs=_member_orgs(page), errors=errors, values=values, visibilities=VISIBILITIES, org=org)


@router.get("/datasets", response_class=HTMLResponse)
def datasets_list(page: SignedIn, cursor: Annotated[int | None, Query(ge=0, le=names.MAX_ROW_ID)] = None,
                  org: Annotated[str, Query(max_length=63)] = "") -> HTMLResponse:
    return _list(page, FormErrors(), {}, cursor, org=org)


@router.post("/datasets", response_class=HTMLResponse)
def create_dataset(page: SignedIn) -> Response:
    org, name = page.field("org"), page.field("name")
    try:
        svc.create(page.session, page.principal, org, name, description=page.field("description"),
                   licence=page.field("licence"), visibility=page.field("visibility", "private"))
    except HaiheError as exc:
        page.session.rollback()
        errors = FormErrors()
        errors.add(exc.field if exc.field in ("org", "name", "visibility") else "name", exc.message)
        return _list(page, errors, dict(page.form), None, 422)
    return redirect(f"/datasets/{org}/{name}?done=created")


@router.get("/datasets/{org}/{name}", response_class=HTMLResponse)
def dataset_page(org: str, name: str, request: Request, page: SignedIn,
                 version: Annotated[str, Query(max_length=20)] = "", done: str = "") -> HTMLResponse:
    return _dataset_page(page, request, org, name, version, done)


def _dataset_page(page: Page, request: Request, org: str, name: str, version: str = "", done: str = "",
                  errors: FormErrors | None = None, status: int = 200, values: dict[str, str] | None = None
                  ) -> HTMLResponse:
    svc.get_readable(page.session, page.principal, org, name)  # 404 for other tenants before storage is touched
    storage = get_storage(request, page.ctx)
    detail = svc.show(page.session, page.principal, storage, org, name, version or None)
    # a reader outside the owner org sees a non-public dataset only because it was shared with their org
    shared_with_me = (not page.is_admin and org not in _member_orgs(page)
                      and detail.dataset.visibility != "public")
    return page.render("dataset.html", status, nav="datasets", d=detail, org=org, name=name,
                       done=done if done in NOTICES else "", visibilities=VISIBILITIES,
                       errors=errors or FormErrors(), values=values or {}, shared_with_me=shared_with_me)


@router.post("/datasets/{org}/{name}/share", response_class=HTMLResponse)
def share_dataset(org: str, name: str, request: Request, page: SignedIn) -> Response:
    grant = page.field("action", "share") != "unshare"
    target = page.field("target")
    try:
        svc.share(page.session, page.principal, org, name, target, grant=grant)
    except HaiheError as exc:  # a mistyped org: said at the field, on the same page
        if exc.status >= 500 or exc.field not in ("org", "target", "target_org", None):
            raise
        page.session.rollback()
        svc.get_readable(page.session, page.principal, org, name)  # the dataset itself must still be readable
        errors = FormErrors()
        errors.add("target", exc.message if exc.status != 404 else page.t("ds.err.no_such_org", org=target))
        return _dataset_page(page, request, org, name, errors=errors, status=exc.status,
                             values={"target": target})
    return redirect(f"/datasets/{org}/{name}?done={'shared' if grant else 'unshared'}")


@router.post("/datasets/{org}/{name}/visibility", response_class=HTMLResponse)
def dataset_visibility(org: str, name: str, page: SignedIn) -> Response:
    svc.set_visibility(page.session, page.principal, org, name, page.field("visibility"))
    return redirect(f"/datasets/{org}/{name}?done=visibility")
