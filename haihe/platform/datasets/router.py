"""Routes: datasets and their versions. Thin: body → ``datasets_service`` → response schema.

Bytes never pass through here: starting a version returns presigned part URLs, downloading returns presigned GETs.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request

from haihe import names
from haihe.datasets.upload import FileSpec
from haihe.platform.access import require_platform_admin
from haihe.platform.api.deps import CtxDep, CurrentPrincipal, SessionDep
from haihe.platform.datasets import service as svc
from haihe.platform.datasets.rows import Dataset
from haihe.platform.datasets.schemas import (
    DatasetCreate,
    DatasetDeleted,
    DatasetDetail,
    DatasetPage,
    DatasetPublic,
    DownloadPublic,
    GcPublic,
    LineagePublic,
    ModelFromPublic,
    UploadTicketPublic,
    VersionCommitted,
    VersionComplete,
    VersionPublic,
    VersionStart,
    VisibilityUpdate,
)
from haihe.platform.settings import Settings

router = APIRouter(prefix="/api/v1", tags=["datasets"])


def get_storage(request: Request, ctx: CtxDep) -> svc.DatasetStorage:
    """The process's dataset storage (``service.storage``: one per context, built on first use)."""
    return svc.storage(ctx)


StorageDep = Annotated[svc.DatasetStorage, Depends(get_storage)]


def _detail(d: svc.Detail) -> DatasetDetail:
    base = DatasetPublic.of(d.dataset, max((v.number for v in d.versions if v.state == "committed"), default=None),
                            d.stored_bytes)
    return DatasetDetail(
        **base.model_dump(), versions=[VersionPublic.of(v) for v in d.versions], shown_version=d.shown,
        manifest=d.manifest.model_dump(mode="json") if d.manifest else None, shares=d.shares, can_write=d.can_write,
        lineage=LineagePublic(
            jobs=d.jobs,
            models=[ModelFromPublic(model=m, version=v) for m, v in d.models], models_note=d.models_note))


def _public(session: SessionDep, ds: Dataset) -> DatasetPublic:
    stats = svc.committed_stats(session, [ds.id]).get(ds.id, (None, 0))
    return DatasetPublic.of(ds, *stats)


# -- routes -----------------------------------------------------------------------------------------------------
@router.post("/orgs/{org}/datasets", operation_id="datasets_create", status_code=201, response_model=DatasetPublic)
def create_dataset(org: str, body: DatasetCreate, principal: CurrentPrincipal, session: SessionDep) -> DatasetPublic:
    ds = svc.create(session, principal, org, body.name, description=body.description, licence=body.licence,
                    visibility=body.visibility)
    return DatasetPublic.of(ds, None, 0)


@router.get("/datasets", operation_id="datasets_list", response_model=DatasetPage)
def list_datasets(
    principal: CurrentPrincipal,
    session: SessionDep,
    org: Annotated[str | None, Query(max_length=64)] = None,
    cursor: Annotated[int | None, Query(ge=0, le=names.MAX_ROW_ID)] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> DatasetPage:
    page = svc.list_datasets(session, principal, org=org, cursor=cursor, limit=limit)
    return DatasetPage(items=[DatasetPublic.of(s.dataset, s.latest, s.stored_bytes) for s in page.items],
                       next_cursor=page.next_cursor)


@router.get("/orgs/{org}/datasets/{name}", operation_id="datasets_get", response_model=DatasetDetail)
def get_dataset(org: str, name: str, principal: CurrentPrincipal, session: SessionDep, storage: StorageDep,
                version: Annotated[str | None, Query(max_length=12)] = None) -> DatasetDetail:
    return _detail(svc.show(session, principal, storage, org, name, version))


@router.post("/orgs/{org}/datasets/{name}/versions", operation_id="dataset_versions_start", status_code=201,
             response_model=UploadTicketPublic)
def start_version(org: str, name: str, body: VersionStart, principal: CurrentPrincipal, session: SessionDep,
                  storage: StorageDep) -> UploadTicketPublic:
    files = [FileSpec(path=f.path, size=f.size, sha256=f.sha256) for f in body.files]
    ticket = svc.start_version(session, principal, storage, org, name, files, note=body.note,
                               data_format=body.data_format, schema_hint=body.schema_hint)
    return UploadTicketPublic.of(ticket)


@router.get("/orgs/{org}/datasets/{name}/uploads/{upload_id}", operation_id="dataset_versions_resume",
            response_model=UploadTicketPublic)
def resume_version(org: str, name: str, upload_id: str, principal: CurrentPrincipal, session: SessionDep,
                   storage: StorageDep) -> UploadTicketPublic:
    return UploadTicketPublic.of(svc.resume_version(session, principal, storage, org, name, upload_id))


@router.post("/orgs/{org}/datasets/{name}/uploads/{upload_id}/complete", operation_id="dataset_versions_complete",
             response_model=VersionCommitted)
def complete_version(org: str, name: str, upload_id: str, body: VersionComplete, principal: CurrentPrincipal,
                     session: SessionDep, storage: StorageDep) -> VersionCommitted:
    row, manifest = svc.complete_version(session, principal, storage, org, name, upload_id, body.hashes)
    return VersionCommitted(version=VersionPublic.of(row), manifest=manifest.model_dump(mode="json"))


@router.delete("/orgs/{org}/datasets/{name}/uploads/{upload_id}", operation_id="dataset_versions_abort",
               response_model=VersionPublic)
def abort_version(org: str, name: str, upload_id: str, principal: CurrentPrincipal, session: SessionDep,
                  storage: StorageDep) -> VersionPublic:
    return VersionPublic.of(svc.abort_version(session, principal, storage, org, name, upload_id))


@router.get("/orgs/{org}/datasets/{name}/versions/{version}/download", operation_id="dataset_versions_download",
            response_model=DownloadPublic)
def download_version(org: str, name: str, version: str, principal: CurrentPrincipal, session: SessionDep,
                     storage: StorageDep) -> DownloadPublic:
    d = svc.download(session, principal, storage, org, name, version)
    return DownloadPublic(version=d.manifest.version, manifest=d.manifest.model_dump(mode="json"), urls=d.urls,
                          expires_at=d.expires_at)


@router.put("/orgs/{org}/datasets/{name}/shares/{target}", operation_id="datasets_share",
            response_model=DatasetDetail)
def share_dataset(org: str, name: str, target: str, principal: CurrentPrincipal, session: SessionDep,
                  storage: StorageDep) -> DatasetDetail:
    svc.share(session, principal, org, name, target, grant=True)
    return _detail(svc.show(session, principal, storage, org, name))


@router.delete("/orgs/{org}/datasets/{name}/shares/{target}", operation_id="datasets_unshare",
               response_model=DatasetDetail)
def unshare_dataset(org: str, name: str, target: str, principal: CurrentPrincipal, session: SessionDep,
                    storage: StorageDep) -> DatasetDetail:
    svc.share(session, principal, org, name, target, grant=False)
    return _detail(svc.show(session, principal, storage, org, name))


@router.put("/orgs/{org}/datasets/{name}/visibility", operation_id="datasets_set_visibility",
            response_model=DatasetPublic)
def set_visibility(org: str, name: str, body: VisibilityUpdate, principal: CurrentPrincipal,
                   session: SessionDep) -> DatasetPublic:
    return _public(session, svc.set_visibility(session, principal, org, name, body.visibility))


@router.delete("/orgs/{org}/datasets/{name}", operation_id="datasets_delete", response_model=DatasetDeleted)
def delete_dataset(org: str, name: str, principal: CurrentPrincipal, session: SessionDep,
                   ctx: CtxDep) -> DatasetDeleted:
    settings: Settings = ctx.settings
    ds = svc.delete(session, principal, settings, org, name)
    purge = svc.purge_after(ds, settings)
    assert ds.deleted_at is not None and purge is not None
    return DatasetDeleted(org=org, name=name, deleted_at=ds.deleted_at, purge_after=purge)


@router.post("/admin/datasets/gc", operation_id="datasets_gc", response_model=GcPublic)
def collect_garbage(principal: CurrentPrincipal, session: SessionDep, storage: StorageDep,
                    ctx: CtxDep) -> GcPublic:
    """Purge datasets past their retention window and expire abandoned uploads (platform admins)."""
    require_platform_admin(principal)
    report = svc.collect_garbage(session, storage, ctx.settings)
    return GcPublic(purged=report.purged, objects_deleted=report.objects_deleted,
                    uploads_expired=report.uploads_expired)
