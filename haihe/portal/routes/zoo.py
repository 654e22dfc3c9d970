"""Pages: the model zoo — list and search, a model's card, versions, aliases and lineage graph, alias changes.

"Fine-tune" leads to the new-job form prefilled with the finetune recipe and ``model.from_zoo``; "deploy" leads to
the endpoint form with the model filled in. The lineage graph (dataset → job → version → endpoint) is laid out here
and drawn as inline SVG by the template, so it needs no script and shows what the caller may see only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import HTMLResponse, Response

from haihe.errors import HaiheError, InvalidInput
from haihe.model_zoo import ZooModelDetail
from haihe.platform.endpoints import service as endpoint_svc
from haihe.platform.zoo import catalog as zoo_catalog
from haihe.platform.zoo import service as svc
from haihe.platform.zoo.router import get_services
from haihe.portal.forms import FormErrors
from haihe.portal.web import Page, PortalRoute, SignedIn, redirect

router = APIRouter(route_class=PortalRoute, include_in_schema=False)

NOTICES = ("alias",)
# lineage graph layout (SVG user units)
COLUMNS = ("dataset", "job", "model", "endpoint")
COL_W, NODE_W, NODE_H, ROW_H, PAD = 190, 160, 34, 48, 12


def services(page: Page) -> zoo_catalog.ZooServices:
    return get_services(page.request, page.ctx)


@router.get("/models", response_class=HTMLResponse)
def models_list(page: SignedIn, q: Annotated[str, Query(max_length=200)] = "",
                task: Annotated[str, Query(max_length=64)] = "") -> HTMLResponse:
    models = zoo_catalog.list_models(services(page), page.session, page.principal, task=task or None, text=q or None)
    tasks = sorted({m.task for m in zoo_catalog.list_models(services(page), page.session, page.principal)} | (
        {task} if task else set()))
    return page.render("models.html", nav="models", models=models, q=q, task=task, tasks=tasks)


@dataclass(frozen=True)
class Node:
    kind: str
    key: str
    label: str
    href: str
    x: int
    y: int


def lineage_graph(detail: ZooModelDetail, lineages: Sequence[svc.VersionLineage],
                  endpoints: Sequence[Any]) -> dict[str, Any]:
    """Nodes in four columns (dataset, job, version, endpoint) and the edges between them, with SVG coordinates."""
    ref = detail.model.ref
    columns: dict[str, list[tuple[str, str, str]]] = {c: [] for c in COLUMNS}
    edges: set[tuple[str, str]] = set()

    def add(kind: str, key: str, label: str, href: str) -> str:
        if all(k != key for k, _, _ in columns[kind]):
            columns[kind].append((key, label, href))
        return key

    for lin in sorted(lineages, key=lambda v: v.version):
        version = add("model", f"m:{lin.version}", f"{ref.name}:{lin.version}", f"/models/{ref.org}/{ref.name}")
        job = None
        if lin.job is not None:
            job = add("job", f"j:{lin.job.id}", lin.job.name, f"/jobs/{lin.job.id}")
            edges.add((job, version))
        if lin.dataset:
            org, _, rest = lin.dataset.partition("/")
            ds = add("dataset", f"d:{lin.dataset}", lin.dataset, f"/datasets/{org}/{rest.split('@')[0]}")
            edges.add((ds, job or version))
    for ep in endpoints:
        version = f"m:{ep.model_version}"
        if any(k == version for k, _, _ in columns["model"]):
            e = add("endpoint", f"e:{ep.org.name}/{ep.name}", f"{ep.org.name}/{ep.name}",
                    f"/endpoints/{ep.org.name}/{ep.name}")
            edges.add((version, e))
    nodes: dict[str, Node] = {}
    for col, kind in enumerate(COLUMNS):
        for row, (key, label, href) in enumerate(columns[kind]):
            nodes[key] = Node(kind, key, label if len(label) <= 22 else label[:21] + "…", href,
                              PAD + col * COL_W, PAD + row * ROW_H)
    mid = NODE_H // 2
    lines = [{"x1": nodes[a].x + NODE_W, "y1": nodes[a].y + mid, "x2": nodes[b].x, "y2": nodes[b].y + mid}
             for a, b in sorted(edges) if a in nodes and b in nodes]
    rows = max((len(v) for v in columns.values()), default=0)
    return {"nodes": list(nodes.values()), "edges": lines, "width": PAD * 2 + (len(COLUMNS) - 1) * COL_W + NODE_W,
            "height": PAD * 2 + max(rows, 1) * ROW_H, "node_w": NODE_W, "node_h": NODE_H,
            "heads": [{"kind": k, "x": PAD + i * COL_W} for i, k in enumerate(COLUMNS)]}


def _endpoints_of(page: Page, org: str, name: str) -> list[Any]:
    """Endpoints the caller can see that serve a version of ``org/name``."""
    prefix = f"{org}/{name}"
    out = []
    for ep in endpoint_svc.list_endpoints(page.session, page.principal):
        base = ep.model_ref.split("@")[0].split(":")[0]
        if base == prefix:
            out.append(ep)
    return out


def _model_page(page: Page, org: str, name: str, errors: FormErrors, status: int = 200, done: str = "",
                values: dict[str, str] | None = None) -> HTMLResponse:
    zs = services(page)
    detail = zoo_catalog.get_model(zs, page.session, page.principal, f"{org}/{name}")  # 404 for other tenants' models
    lineages = svc.lineage(page.session, page.principal, detail.versions)
    can_write, can_admin = svc.permissions(page.session, page.principal, org)
    endpoints = _endpoints_of(page, org, name)
    latest = detail.versions[0] if detail.versions else None
    card = (latest.card if latest and latest.card else detail.model.card)
    deploy_ref = f"{org}/{name}@production" if "production" in detail.model.aliases else (
        f"{org}/{name}:{latest.version}" if latest else f"{org}/{name}")
    return page.render("model.html", status, nav="models", m=detail.model, versions=detail.versions, card=card,
                       lineage={v.version: v for v in lineages}, graph=lineage_graph(detail, lineages, endpoints),
                       can_write=can_write, can_admin=can_admin, endpoints=endpoints, deploy_ref=deploy_ref,
                       errors=errors, values=values or {}, done=done if done in NOTICES else "")


@router.get("/models/{org}/{name}", response_class=HTMLResponse)
def model_page(org: str, name: str, page: SignedIn, done: str = "") -> HTMLResponse:
    return _model_page(page, org, name, FormErrors(), done=done)


@router.post("/models/{org}/{name}/alias", response_class=HTMLResponse)
def set_alias(org: str, name: str, page: SignedIn) -> Response:
    alias, raw = page.field("alias"), page.field("version")
    try:
        if raw and not raw.isdigit():
            raise InvalidInput("version must be a number (empty removes the alias)", field="version")
        svc.set_alias(services(page), page.session, page.principal, f"{org}/{name}", alias,
                      int(raw) if raw else None)
    except InvalidInput as exc:
        page.session.rollback()
        errors = FormErrors()
        errors.add(exc.field if exc.field in ("alias", "version") else "alias", exc.message)
        return _model_page(page, org, name, errors, 422, values=dict(page.form))
    except HaiheError:
        page.session.rollback()
        raise
    return redirect(f"/models/{org}/{name}?done=alias")
