"""Routes: the model zoo (list/search, show with versions and lineage, alias, publish, delete, register, download)
and a job's MLflow runs and metric histories. Thin: body → ``haihe.platform.zoo.service`` → response schema.

Model downloads hand out presigned S3 URLs where the artifacts sit in the platform's S3 server, so the bytes do
not pass through the API; otherwise ``?path=`` streams one file through it.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import StringConstraints
from starlette.background import BackgroundTask

from haihe.platform.api.deps import CtxDep, CurrentPrincipal, SessionDep
from haihe.platform.zoo import catalog as zoo_catalog
from haihe.platform.zoo import service as svc
from haihe.platform.zoo.schemas import (
    AliasSet,
    DatasetModelPublic,
    DownloadPublic,
    FilePublic,
    MetricPointPublic,
    ModelDetail,
    ModelPublic,
    ModelRegister,
    RunMetricsPublic,
    RunPublic,
    VersionPublic,
    VisibilityName,
    VisibilitySet,
)

router = APIRouter(prefix="/api/v1", tags=["models"])

OrgName = Annotated[str, StringConstraints(min_length=1, max_length=64)]
ModelName = Annotated[str, StringConstraints(min_length=1, max_length=64)]


def get_services(request: Request, ctx: CtxDep) -> zoo_catalog.ZooServices:
    """The platform's zoo services, built on first use (tests ``ctx.provide("zoo", …)`` first)."""
    return zoo_catalog.services(ctx)


ServicesDep = Annotated[zoo_catalog.ZooServices, Depends(get_services)]


def optional_services(request: Request, ctx: CtxDep) -> zoo_catalog.ZooServices | None:
    """None when the platform tracks nothing (no MLflow configured): a job then simply has no runs."""
    return get_services(request, ctx) if ctx.settings.mlflow_url else None


OptionalServicesDep = Annotated[zoo_catalog.ZooServices | None, Depends(optional_services)]


# -- routes ----------------------------------------------------------------------------------------------------------
def _ref(org: str, name: str) -> str:
    return f"{org}/{name}"


@router.get("/models", operation_id="models_list", response_model=list[ModelPublic])
def list_models(
    principal: CurrentPrincipal,
    session: SessionDep,
    services: ServicesDep,
    task: Annotated[str | None, Query(max_length=63)] = None,
    q: Annotated[str | None, Query(max_length=200, description="Text in name, task, description, use.")] = None,
    org: Annotated[str | None, Query(max_length=64)] = None,
    visibility: VisibilityName | None = None,
) -> list[ModelPublic]:
    models = zoo_catalog.list_models(services, session, principal, task=task, text=q, org=org, visibility=visibility)
    return [ModelPublic.of(m) for m in models]


@router.get("/models/{org}/{name}", operation_id="models_get", response_model=ModelDetail)
def get_model(org: OrgName, name: ModelName, principal: CurrentPrincipal, session: SessionDep,
              services: ServicesDep) -> ModelDetail:
    detail = zoo_catalog.get_model(services, session, principal, _ref(org, name))
    lineage = {lin.version: lin for lin in svc.lineage(session, principal, detail.versions)}
    can_write, can_admin = svc.permissions(session, principal, org)
    base = ModelPublic.of(detail.model)
    return ModelDetail(**base.model_dump(), can_write=can_write, can_admin=can_admin,
                       versions=[VersionPublic.of(v, lineage.get(v.version)) for v in detail.versions])


@router.put("/models/{org}/{name}/aliases/{alias}", operation_id="models_set_alias",
            response_model=VersionPublic | None)
def set_alias(org: OrgName, name: ModelName, alias: Annotated[str, StringConstraints(max_length=63)],
              body: AliasSet, principal: CurrentPrincipal, session: SessionDep,
              services: ServicesDep) -> VersionPublic | None:
    """Point ``alias`` (``production``, ``staging`` or a custom word) at a version; ``version: null`` removes it."""
    version = svc.set_alias(services, session, principal, _ref(org, name), alias, body.version)
    return VersionPublic.of(version) if version is not None else None


@router.put("/models/{org}/{name}/visibility", operation_id="models_set_visibility", response_model=ModelPublic)
def set_visibility(org: OrgName, name: ModelName, body: VisibilitySet, principal: CurrentPrincipal,
                   session: SessionDep, services: ServicesDep) -> ModelPublic:
    """Publish to the public zoo (``public``) or take back (``org``/``private``): the owner org's admin."""
    return ModelPublic.of(svc.set_visibility(services, session, principal, _ref(org, name), body.visibility))


@router.delete("/models/{org}/{name}", operation_id="models_delete", status_code=204)
def delete_model(org: OrgName, name: ModelName, principal: CurrentPrincipal, session: SessionDep,
                 services: ServicesDep, version: Annotated[int | None, Query(ge=1)] = None) -> None:
    svc.delete(services, session, principal, _ref(org, name), version)


@router.post("/models/{org}/{name}/versions", operation_id="models_register", status_code=201,
             response_model=VersionPublic)
def register_model(org: OrgName, name: ModelName, body: ModelRegister, principal: CurrentPrincipal,
                   session: SessionDep, services: ServicesDep) -> VersionPublic:
    """Register the model a job logged (``artifact_path`` of its run) with a card; lineage is filled in."""
    version = svc.register(services, session, principal, _ref(org, name), body.card, job_id=body.job_id,
                           artifact_path=body.artifact_path, run_id=body.run_id, visibility=body.visibility)
    return VersionPublic.of(version)


@router.get("/models/{org}/{name}/download", operation_id="models_download", response_model=DownloadPublic)
def download_model(
    org: OrgName,
    name: ModelName,
    request: Request,
    principal: CurrentPrincipal,
    session: SessionDep,
    services: ServicesDep,
    version: Annotated[int | None, Query(ge=1)] = None,
    alias: Annotated[str | None, Query(max_length=63)] = None,
    path: Annotated[str | None, Query(max_length=1024, description="Stream this one file instead.")] = None,
) -> Any:
    """The files of a version (newest, ``version=N`` or ``alias=…``) with URLs to fetch them; ``path=`` streams
    one file through the API (the fallback when the artifacts are not in the platform's S3 server)."""
    ref = _ref(org, name) + (f":{version}" if version is not None else f"@{alias}" if alias else "")
    if path is not None:
        client, response = svc.open_file(services, session, principal, ref, path)

        def close() -> None:
            response.close()
            client.close()

        headers = {k: v for k, v in response.headers.items() if k.lower() in ("content-length", "content-type")}
        return StreamingResponse(response.iter_bytes(), headers=headers, background=BackgroundTask(close))
    manifest = svc.download(services, session, principal, ref, request.url.path)
    return DownloadPublic(ref=manifest.ref, version=manifest.version, source=manifest.source,
                          presigned=manifest.presigned,
                          files=[FilePublic(path=f.path, size=f.size, url=f.url) for f in manifest.files])


@router.get("/dataset-models", operation_id="models_for_dataset", response_model=list[DatasetModelPublic])
def models_for_dataset(dataset: Annotated[str, Query(max_length=200, description="org/name@vN")],
                       principal: CurrentPrincipal, session: SessionDep,
                       services: ServicesDep) -> list[DatasetModelPublic]:
    """Zoo versions trained on a dataset version (the other direction of lineage), that the caller may see."""
    return [DatasetModelPublic(model=str(v.ref.model), version=v.version, ref=str(v.ref), job_id=v.lineage.job_id,
                               run_id=v.lineage.run_id)
            for v in svc.models_for_dataset(services, session, principal, dataset)]


@router.get("/jobs/{job_id}/run", operation_id="jobs_run", response_model=list[RunPublic])
def job_run(job_id: str, principal: CurrentPrincipal, session: SessionDep,
            services: OptionalServicesDep) -> list[RunPublic]:
    """The job's MLflow runs (one, or one per sweep point): status, params, latest metrics, tags."""
    return [RunPublic.of(r) for r in svc.job_runs(services, session, principal, job_id)]


@router.get("/jobs/{job_id}/metrics", operation_id="jobs_metrics", response_model=list[RunMetricsPublic])
def job_metrics(job_id: str, principal: CurrentPrincipal, session: SessionDep, services: OptionalServicesDep,
                key: Annotated[list[str] | None, Query(max_length=50)] = None) -> list[RunMetricsPublic]:
    """Each run of the job with the full history of its metrics (the loss curves), or only ``key=…``."""
    out = []
    for rm in svc.job_metrics(services, session, principal, job_id, key or ()):
        histories = {k: [MetricPointPublic(step=p.step, value=p.value, timestamp_ms=p.timestamp_ms) for p in pts]
                     for k, pts in rm.histories.items()}
        out.append(RunMetricsPublic(**RunPublic.of(rm.run).model_dump(), histories=histories))
    return out
