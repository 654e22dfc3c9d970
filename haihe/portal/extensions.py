"""Bridges to services that may not be installed in every build: the model zoo and the endpoints.

Each bridge imports its service lazily and answers "nothing" when the service module is absent or cannot be
reached, so the portal renders with whatever the platform has (a page never fails because MLflow is down).
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
from types import ModuleType
from typing import TYPE_CHECKING, Any

from haihe.errors import HaiheError

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from haihe.portal.web import Page

log = logging.getLogger(__name__)


def service(name: str) -> ModuleType | None:
    """``haihe.platform.<name>`` if this build has it."""
    full = f"haihe.platform.{name}"
    try:
        if importlib.util.find_spec(full) is None:
            return None
        return importlib.import_module(full)
    except ImportError:
        return None


def available(name: str) -> bool:
    return service(name) is not None


HEADLINE_KEYS = ("val_accuracy", "val_acc", "accuracy", "acc", "val_loss", "loss")
MAX_HEADLINE_JOBS = 8


def _zoo_services(page: Page) -> Any:
    """The app's zoo services (MLflow + registry), or None when this platform has no tracking configured."""
    if service("zoo") is None or not page.ctx.settings.mlflow_url:
        return None
    from haihe.platform.zoo.router import get_services

    try:
        return get_services(page.request, page.ctx)
    except HaiheError as exc:
        log.info("zoo unavailable: %s", exc)
        return None


def headline_metrics(page: Page, job_ids: list[str]) -> dict[str, dict[str, Any]]:
    """job id -> {"key", "value"}: the run's most telling latest metric (accuracy before loss)."""
    services = _zoo_services(page)
    if services is None or not job_ids:
        return {}
    from haihe.platform.zoo import service as zoo

    out: dict[str, dict[str, Any]] = {}
    for job_id in job_ids[:MAX_HEADLINE_JOBS]:
        try:
            runs = zoo.job_runs(services, page.session, page.principal, job_id)
        except (HaiheError, OSError) as exc:
            log.info("metrics of %s unavailable: %s", job_id, exc)
            return out  # MLflow is down: do not wait on it once per job
        for run in runs:
            key = next((k for k in HEADLINE_KEYS if k in run.metrics), None)
            if key is not None:
                out[job_id] = {"key": key, "value": float(run.metrics[key])}
                break
    return out


def job_metrics(page: Page, job_id: str, session: Session | None = None) -> dict[str, list[list[float]]]:
    """``metric`` (or ``run/metric`` for a sweep) -> [[step, value], ...] from the job's MLflow runs. ``session``:
    a live page's stream reads with its own short sessions (the page's own is closed by then)."""
    services = _zoo_services(page)
    if services is None:
        return {}
    from haihe.platform.zoo import service as zoo

    try:
        runs = zoo.job_metrics(services, session or page.session, page.principal, job_id)
    except (HaiheError, OSError) as exc:
        log.info("metrics of %s unavailable: %s", job_id, exc)
        return {}
    out: dict[str, list[list[float]]] = {}
    for rm in runs:
        for key, points in rm.histories.items():
            name = key if len(runs) == 1 else f"{rm.run.name}/{key}"
            series = [[float(p.step), float(p.value)] for p in points]
            if series:
                out[name] = series
    return out


def run_links(page: Page, job_id: str) -> dict[str, Any]:
    """Links into MLflow's own UI (served through the platform's proxy at ``/mlflow/``) for the job's runs, and a
    comparison of them when there are several (a sweep)."""
    services = _zoo_services(page)
    if services is None:
        return {}
    import json
    from urllib.parse import quote

    from haihe.platform.zoo import service as zoo

    try:
        runs = zoo.job_runs(services, page.session, page.principal, job_id)
    except (HaiheError, OSError) as exc:
        log.info("runs of %s unavailable: %s", job_id, exc)
        return {}
    out: dict[str, Any] = {"runs": [{"name": r.name or r.run_id[:8],
                                     "url": f"/mlflow/#/experiments/{r.experiment_id}/runs/{r.run_id}"}
                                    for r in runs]}
    if len(runs) > 1:
        ids = json.dumps([r.run_id for r in runs])
        exps = json.dumps(sorted({r.experiment_id for r in runs}))
        out["compare"] = f"/mlflow/#/compare-runs?runs={quote(ids)}&experiments={quote(exps)}"
    return out


def endpoint_summaries(page: Page) -> list[dict[str, Any]]:
    """My orgs' endpoints (name, status, replicas, traffic) when the endpoints service exists."""
    svc = service("endpoints")
    fn = getattr(svc, "list_endpoints", None) if svc else None
    if fn is None:
        return []
    try:
        rows = fn(page.session, page.principal)
    except HaiheError as exc:
        log.info("endpoints unavailable: %s", exc)
        return []
    return [_endpoint_dict(r) for r in rows]


def _endpoint_dict(row: Any) -> dict[str, Any]:
    get = (lambda k: row.get(k)) if isinstance(row, dict) else (lambda k: getattr(row, k, None))
    org = get("org")
    org_name = getattr(org, "name", org)
    return {"name": get("name"), "org": org_name, "status": get("state") or "", "reason": get("reason") or "",
            "replicas": get("max_replicas"), "model": get("model_ref") or ""}
