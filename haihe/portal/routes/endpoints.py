"""Pages: inference endpoints — list, deploy form, an endpoint (status, replicas, traffic charts, API keys, examples).

A new API key is shown exactly once, in the response to the post that created it (never stored in clear, never
put in a URL); the copy-paste examples use the gateway's public address from ``settings.public_url``.
"""

from __future__ import annotations

import json
import math
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, Response

from haihe.errors import HaiheError, InvalidInput
from haihe.platform.endpoints import service as svc
from haihe.platform.endpoints.rows import Endpoint
from haihe.platform.gateway.hub import EndpointsHub
from haihe.platform.identity import service as identity
from haihe.portal.forms import FormErrors
from haihe.portal.web import Page, PortalRoute, SignedIn, redirect

router = APIRouter(route_class=PortalRoute, include_in_schema=False)

NOTICES = ("created", "scaled", "revoked")
CREATE_FIELDS = ("org", "name", "model", "scheduler", "min_replicas", "max_replicas", "max_batch_size")
INT_FIELDS = ("min_replicas", "max_replicas", "max_batch_size")
DEFAULTS = {"min_replicas": "1", "max_replicas": "1", "max_batch_size": "16"}
KEY_PLACEHOLDER = "$HAIHE_KEY"
FALLBACK_ROW_SHAPE = [4]
RECIPE_ROW_SHAPES = {"digits-cnn": [1, 8, 8]}  # one 8x8 grey image (the recipe's DigitsCNN input)
CHART_W, CHART_H = 600, 160


def _hub(request: Request) -> EndpointsHub:
    hub: EndpointsHub = request.app.state.endpoints
    return hub


def _writable_orgs(page: Page) -> list[str]:
    return [o.name for o in identity.list_orgs(page.session, page.principal)
            if page.is_admin or o.id in page.principal.roles]


@router.get("/endpoints", response_class=HTMLResponse)
def endpoints_list(page: SignedIn, done: str = "") -> HTMLResponse:
    rows = svc.list_endpoints(page.session, page.principal)
    return page.render("endpoints.html", nav="endpoints", rows=rows, done=done if done == "deleted" else "")


def _form(page: Page, values: dict[str, str], errors: FormErrors, status: int = 200) -> HTMLResponse:
    return page.render("endpoint_new.html", status, nav="endpoints", values={**DEFAULTS, **values}, errors=errors,
                       orgs=_writable_orgs(page), schedulers=sorted(page.ctx.settings.schedulers))


@router.get("/endpoints/new", response_class=HTMLResponse)
def new_endpoint(page: SignedIn, model: Annotated[str, Query(max_length=200)] = "") -> HTMLResponse:
    return _form(page, {"model": model}, FormErrors())


@router.post("/endpoints/new", response_class=HTMLResponse)
def create_endpoint(page: SignedIn) -> Response:
    values = {k: page.field(k) for k in CREATE_FIELDS}
    errors = FormErrors()
    numbers: dict[str, int] = {}
    for k in INT_FIELDS:
        raw = values[k] or DEFAULTS[k]
        if not raw.isdigit():
            errors.add(k, page.t("ep.err.integer"))
        else:
            numbers[k] = int(raw)
    if errors:
        return _form(page, values, errors, 422)
    try:
        svc.create(_hub(page.request), page.session, page.principal, values["org"], name=values["name"],
                   model=values["model"], scheduler=values["scheduler"] or None,
                   min_replicas=numbers["min_replicas"], max_replicas=numbers["max_replicas"],
                   max_batch_size=numbers["max_batch_size"])
    except HaiheError as exc:
        page.session.rollback()
        errors.add(exc.field if exc.field in CREATE_FIELDS else "name", exc.message)
        return _form(page, values, errors, exc.status if exc.status < 500 else 503)
    return redirect(f"/endpoints/{values['org']}/{values['name']}?done=created")


def _chart(minutes: list[dict[str, Any]]) -> dict[str, Any]:
    """Requests and errors per minute as bar geometry for an inline SVG (newest minute on the right)."""
    peak = max((m["requests"] + m["errors"] for m in minutes), default=0) or 1
    width = CHART_W / max(len(minutes), 1)
    bars = []
    for i, m in enumerate(minutes):
        ok_h = CHART_H * m["requests"] / peak
        err_h = CHART_H * m["errors"] / peak
        bars.append({"x": round(i * width + 1, 1), "w": round(max(width - 2, 1), 1),
                     "ok_y": round(CHART_H - ok_h, 1), "ok_h": round(ok_h, 1),
                     "err_y": round(CHART_H - ok_h - err_h, 1), "err_h": round(err_h, 1),
                     "minute": m["minute"][11:16], "requests": m["requests"], "errors": m["errors"]})
    return {"bars": bars, "peak": peak, "w": CHART_W, "h": CHART_H}


def _latency(by_key: list[dict[str, Any]]) -> list[dict[str, Any]]:
    peak = max((float(k["max_latency_ms"] or 0) for k in by_key), default=0.0) or 1.0
    return [{**k, "pct_mean": round(100 * float(k["mean_latency_ms"] or 0) / peak, 1),
             "pct_max": round(100 * float(k["max_latency_ms"] or 0) / peak, 1)} for k in by_key]


def example_tensor(ep: Endpoint, input_shape: list[int] | None = None) -> dict[str, Any]:
    """One input row the served model accepts: a string for text models, else zeros of the model's input shape."""
    if "embedding" in ep.task or "text" in ep.task:
        return {"name": "text", "shape": [1], "datatype": "BYTES", "data": ["hello"]}
    shape = [1, *(max(d, 1) for d in (input_shape or FALLBACK_ROW_SHAPE))]
    return {"name": "x", "shape": shape, "datatype": "FP32", "data": [0.0] * math.prod(shape)}


def _row_shape(page: Page, ep: Endpoint) -> list[int] | None:
    """The shape of one input row of the served version: from its card's first tensor input, else from the
    built-in recipe that trained it (recipes register no card). None when neither says."""
    from haihe.platform.jobs import service as jobs
    from haihe.platform.zoo import catalog as zoo_catalog
    from haihe.platform.zoo.router import get_services

    try:
        ref = f"{ep.model_ref.split('@')[0].split(':')[0]}:{ep.model_version}"
        detail = zoo_catalog.get_model(get_services(page.request, page.ctx), page.session, page.principal, ref)
        version = detail.selected or detail.latest
        if version is None:
            return None
        for f in (version.card.input_schema if version.card else ()):
            if f.type == "tensor" and f.shape:
                return list(f.shape[1:])  # the first dimension is the batch
        if version.lineage.job_id:
            recipe = jobs.get_job(page.session, page.principal, version.lineage.job_id).spec.get("recipe")
            return RECIPE_ROW_SHAPES.get(str(recipe))
    except (HaiheError, OSError):
        return None  # the zoo is unreachable or the job is not the caller's: the generic example stays
    return None


def examples(base_url: str, ep: Endpoint, key: str, input_shape: list[int] | None = None) -> dict[str, str]:
    """Copy-paste calls of the endpoint through the gateway: curl, Python requests, the openai client."""
    base = base_url.rstrip("/")
    body = json.dumps({"inputs": [example_tensor(ep, input_shape)]})
    infer = f"{base}/v2/models/{ep.name}/infer"
    curl = (f"curl -s -H \"Authorization: Bearer {key}\" -H \"Content-Type: application/json\" \\\n"
            f"  {infer} \\\n  -d '{body}'")
    py = ("import requests\n\n"
          f"r = requests.post(\"{infer}\",\n"
          f"                  headers={{\"Authorization\": \"Bearer {key}\"}},\n"
          f"                  json={body}, timeout=60)\n"
          "r.raise_for_status()\nprint(r.json()[\"outputs\"])")
    if "embedding" in ep.task:  # the OpenAI-compatible route serves embedding models only
        openai = ("from openai import OpenAI\n\n"
                  f"client = OpenAI(base_url=\"{base}/v1\", api_key=\"{key}\")\n"
                  f"out = client.embeddings.create(model=\"{ep.name}\", input=[\"hello\"])\n"
                  "print(out.data[0].embedding[:4])")
        return {"curl": curl, "python": py, "openai": openai}
    tensor = example_tensor(ep, input_shape)
    host = base.split("://", 1)[-1]
    triton = ("import numpy as np\nimport tritonclient.http as httpclient\n\n"
              f"client = httpclient.InferenceServerClient(\"{host}\", ssl={base.startswith('https')})\n"
              f"headers = {{\"Authorization\": \"Bearer {key}\"}}\n"
              f"meta = client.get_model_metadata(\"{ep.name}\", headers=headers)  # inputs, outputs, shapes\n"
              f"x = httpclient.InferInput(\"{tensor['name']}\", {tensor['shape']}, \"{tensor['datatype']}\")\n"
              f"x.set_data_from_numpy(np.zeros({tuple(tensor['shape'])}, dtype=np.float32))\n"
              f"out = client.infer(\"{ep.name}\", [x], headers=headers)\n"
              "print(out.get_response()[\"outputs\"])")
    return {"curl": curl, "python": py, "tritonclient": triton}


def _endpoint_keys(page: Page, org: str, name: str) -> list[Any]:
    """The caller's keys (all of the org's, for its admins) that may call this endpoint."""
    wanted = {"inference", f"endpoint:{name}"}
    return [k for k in identity.list_keys(page.session, page.principal, org)
            if wanted & set(k.scopes or ()) and k.revoked_at is None]


def _endpoint_page(page: Page, org: str, name: str, *, new_key: str = "", done: str = "",
                   errors: FormErrors | None = None, status: int = 200) -> HTMLResponse:
    ep = svc.get(page.session, page.principal, org, name)  # 404 for other tenants' endpoints
    usage = svc.usage(page.session, page.principal, org, name)
    return page.render("endpoint.html", status, nav="endpoints", ep=ep, usage=usage, chart=_chart(usage["minutes"]),
                       latency=_latency(usage["by_key"]), keys=_endpoint_keys(page, org, name), new_key=new_key,
                       examples=examples(page.ctx.settings.public_url, ep, new_key or KEY_PLACEHOLDER,
                                         _row_shape(page, ep)),
                       done=done if done in NOTICES else "", errors=errors or FormErrors())


@router.get("/endpoints/{org}/{name}", response_class=HTMLResponse)
def endpoint_page(org: str, name: str, page: SignedIn, done: str = "") -> HTMLResponse:
    return _endpoint_page(page, org, name, done=done)


@router.post("/endpoints/{org}/{name}/keys", response_class=HTMLResponse)
def create_key(org: str, name: str, page: SignedIn) -> HTMLResponse:
    """Issue a key scoped to this endpoint and show it once (this response is the only place it appears)."""
    svc.get(page.session, page.principal, org, name)
    key_name = page.field("key_name") or f"{name}-key"
    try:
        issued = identity.create_key(page.session, page.principal, org, key_name, scopes=[f"endpoint:{name}"])
    except InvalidInput as exc:
        page.session.rollback()
        errors = FormErrors()
        errors.add("key_name", exc.message)
        return _endpoint_page(page, org, name, errors=errors, status=422)
    page.session.commit()
    response = _endpoint_page(page, org, name, new_key=issued.plaintext)
    response.headers["Cache-Control"] = "no-store"
    return response


@router.post("/endpoints/{org}/{name}/keys/{prefix}/revoke", response_class=HTMLResponse)
def revoke_key(org: str, name: str, prefix: str, page: SignedIn) -> Response:
    svc.get(page.session, page.principal, org, name)
    identity.revoke_key(page.session, page.principal, prefix)
    return redirect(f"/endpoints/{org}/{name}?done=revoked")


@router.post("/endpoints/{org}/{name}/delete", response_class=HTMLResponse)
def delete_endpoint(org: str, name: str, page: SignedIn) -> Response:
    """Stop every replica and forget the endpoint (its usage stays in the ledger)."""
    svc.delete(_hub(page.request), page.session, page.principal, org, name)
    page.session.commit()
    return redirect("/endpoints?done=deleted")


@router.post("/endpoints/{org}/{name}/scale", response_class=HTMLResponse)
def scale_endpoint(org: str, name: str, page: SignedIn) -> Response:
    lo, hi = page.field("min_replicas"), page.field("max_replicas")
    if not (lo.isdigit() and hi.isdigit()):
        errors = FormErrors()
        errors.add("max_replicas", page.t("ep.err.integer"))
        return _endpoint_page(page, org, name, errors=errors, status=422)
    try:
        svc.scale(_hub(page.request), page.session, page.principal, org, name, min_replicas=int(lo),
                  max_replicas=int(hi))
    except HaiheError as exc:  # bad bounds (422), unsupported (422), no GPU/CPU-hours left (402)
        if exc.status >= 500:
            raise
        page.session.rollback()
        errors = FormErrors()
        errors.add("max_replicas", exc.message)
        return _endpoint_page(page, org, name, errors=errors, status=exc.status)
    return redirect(f"/endpoints/{org}/{name}?done=scaled")
