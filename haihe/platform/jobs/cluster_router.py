"""Route: GET /api/v1/cluster — partitions, free GPUs, the queue, and why the caller's jobs wait."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from haihe.platform.api.deps import CtxDep, CurrentPrincipal, SessionDep
from haihe.platform.jobs import cluster_status

router = APIRouter(prefix="/api/v1", tags=["cluster"])


@router.get("/cluster", operation_id="cluster_status")
def get_cluster_status(ctx: CtxDep, principal: CurrentPrincipal, session: SessionDep) -> dict[str, Any]:
    """Every scheduler's partitions and nodes (free CPUs and GPUs, jobs waiting and running) and the caller's own
    waiting jobs with the reason in words. Any signed-in user."""
    return cluster_status.cluster_status(ctx, session, principal)
