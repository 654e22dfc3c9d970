"""Routes: /healthz (the process answers), /readyz (its dependencies answer), /metrics (Prometheus)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response

from haihe.platform import health
from haihe.platform.api.deps import CtxDep

router = APIRouter(tags=["system"])


@router.get("/healthz", operation_id="healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", operation_id="readyz")
async def readyz(ctx: CtxDep) -> JSONResponse:
    results = await run_in_threadpool(health.readiness, ctx)
    ok = all(p.ok for p in results.values())
    body = {
        "status": "ok" if ok else "degraded",
        "components": {
            name: {"ok": p.ok, "detail": p.detail, "latency_ms": round(p.latency_ms, 1)} for name, p in results.items()
        },
    }
    return JSONResponse(body, status_code=200 if ok else 503)


@router.get("/metrics", operation_id="metrics", include_in_schema=False)
def metrics(request: Request) -> Response:
    return Response(request.app.state.metrics.render(), media_type="text/plain; version=0.0.4")
