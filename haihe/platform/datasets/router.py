"""Routes: datasets and their versions. Thin: body → ``datasets_service`` → response schema.

Bytes never pass through here: starting a version returns presigned part URLs, downloading returns presigned GETs.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, Field, StringConstraints

from haihe import names
from haihe.datasets.upload import FileSpec, FileTargets
from haihe.platform.access import require_platform_admin
from haihe.platform.api.deps import CtxDep, CurrentPrincipal, SessionDep
from haihe.platform.api.schemas import Body, Out
from haihe.platform.datasets import service as svc
from haihe.platform.datasets.rows import Dataset, DatasetVersion
from haihe.platform.settings import Settings

router = APIRouter(prefix="/api/v1", tags=["datasets"])

MAX_FILES_PER_REQUEST = 10_000  # the JSON body limit applies too; bigger trees are split into more files by tar
DsName = Annotated[str, StringConstraints(min_length=1, max_length=64)]
VisibilityName = Literal["private", "org", "public"]
Text = Annotated[str, StringConstraints(max_length=10_000)]


def get_storage(request: Request, ctx: CtxDep) -> svc.DatasetStorage:
    """The app's dataset storage, built on first use (tests put a ``DatasetStorage`` in ``app.state`` first)."""
    storage: svc.DatasetStorage | None = getattr(request.app.state, "dataset_storage", None)
    if storage is None:
        storage = svc.DatasetStorage.from_settings(ctx.settings)
        request.app.state.dataset_storage = storage
    return storage


StorageDep = Annotated[svc.DatasetStorage, Depends(get_storage)]


# -- schemas ----------------------------------------------------------------------------------------------------
class DatasetCreate(Body):
    name: DsName
    description: Text = ""
    licence: Annotated[str, StringConstraints(max_length=200)] = ""
    visibility: VisibilityName = "private"


class DatasetPublic(Out):
    org: str
    name: str
    description: str
    licence: str
    visibility: str
    created_by: str | None
    created_at: dt.datetime
    latest_version: int | None
    stored_bytes: int

    @classmethod
    def of(cls, d: Dataset, latest: int | None, stored_bytes: int) -> DatasetPublic:
        return cls(org=d.org.name, name=d.name, description=d.description, licence=d.licence,
                   visibility=d.visibility, created_by=d.created_by.username if d.created_by else None,
                   created_at=d.created_at, latest_version=latest, stored_bytes=stored_bytes)


class DatasetPage(BaseModel):
    items: list[DatasetPublic]
    next_cursor: int | None


class VersionPublic(Out):
    number: int
    state: str
    note: str
    total_bytes: int
    files: int
    created_by: str | None
    created_at: dt.datetime
    committed_at: dt.datetime | None

    @classmethod
    def of(cls, v: DatasetVersion) -> VersionPublic:
        return cls(number=v.number, state=v.state, note=v.note, total_bytes=v.total_bytes, files=v.files,
                   created_by=v.created_by.username if v.created_by else None, created_at=v.created_at,
                   committed_at=v.committed_at)


class JobReadPublic(BaseModel):
    id: str
    name: str
    org: str
    dataset: str
    state: str
    created_at: dt.datetime


class ModelFromPublic(BaseModel):
    model: str
    version: int


class LineagePublic(BaseModel):
    jobs: list[JobReadPublic]
    models: list[ModelFromPublic]
    models_note: str | None = Field(None, description="Why the model list may be incomplete, when it may be.")


class DatasetDetail(DatasetPublic):
    versions: list[VersionPublic]
    shown_version: int | None
    manifest: dict[str, Any] | None
    shares: list[str]
    can_write: bool
    lineage: LineagePublic


class FileIn(Body):
    path: Annotated[str, StringConstraints(min_length=1, max_length=1024)]
    size: int = Field(ge=0, le=5 * 1024**4)
    sha256: Annotated[str, StringConstraints(max_length=64)] | None = None


class VersionStart(Body):
    files: list[FileIn] = Field(min_length=1, max_length=MAX_FILES_PER_REQUEST)
    note: Text = ""
    data_format: Annotated[str, StringConstraints(max_length=50)] = ""
    schema_hint: dict[str, Any] = Field(default_factory=dict)


class PartPublic(BaseModel):
    number: int
    offset: int
    size: int
    url: str


class FileTargetsPublic(BaseModel):
    path: str
    size: int
    part_size: int
    parts: list[PartPublic]

    @classmethod
    def of(cls, t: FileTargets) -> FileTargetsPublic:
        return cls(path=t.path, size=t.size, part_size=t.part_size,
                   parts=[PartPublic(number=p.number, offset=p.offset, size=p.size, url=p.url) for p in t.parts])


class UploadTicketPublic(BaseModel):
    upload_id: str
    version: int
    files: list[FileTargetsPublic]

    @classmethod
    def of(cls, t: svc.Ticket) -> UploadTicketPublic:
        return cls(upload_id=t.session_id, version=t.version.number, files=[FileTargetsPublic.of(f) for f in t.files])


class VersionComplete(Body):
    hashes: dict[Annotated[str, StringConstraints(max_length=1024)], Annotated[str, StringConstraints(
        max_length=64)]] = Field(default_factory=dict, max_length=MAX_FILES_PER_REQUEST)


class VersionCommitted(BaseModel):
    version: VersionPublic
    manifest: dict[str, Any]


class DownloadPublic(BaseModel):
    version: int
    manifest: dict[str, Any]
    urls: dict[str, str]
    expires_at: dt.datetime


class VisibilityUpdate(Body):
    visibility: VisibilityName


class DatasetDeleted(BaseModel):
    org: str
    name: str
    deleted_at: dt.datetime
    purge_after: dt.datetime


class GcPublic(BaseModel):
    purged: list[str]
    objects_deleted: int
    uploads_expired: list[str]


def _detail(d: svc.Detail) -> DatasetDetail:
    base = DatasetPublic.of(d.dataset, max((v.number for v in d.versions if v.state == "committed"), default=None),
                            d.stored_bytes)
    return DatasetDetail(
        **base.model_dump(), versions=[VersionPublic.of(v) for v in d.versions], shown_version=d.shown,
        manifest=d.manifest.model_dump(mode="json") if d.manifest else None, shares=d.shares, can_write=d.can_write,
        lineage=LineagePublic(
            jobs=[JobReadPublic(id=j.id, name=j.name, org=j.org, dataset=j.dataset, state=j.state,
                                created_at=j.created_at) for j in d.jobs],
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
