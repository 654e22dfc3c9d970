"""The datasets API's bodies and answers (pydantic), shared by the router and the SDK.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, Field, StringConstraints

from haihe.platform.api.schemas import Body, Out

if TYPE_CHECKING:
    from haihe.datasets.upload import FileTargets
    from haihe.platform.datasets.rows import Dataset, DatasetVersion

MAX_FILES_PER_REQUEST = 10_000  # the JSON body limit applies too; bigger trees are split into more files by tar


DsName = Annotated[str, StringConstraints(min_length=1, max_length=64)]


VisibilityName = Literal["private", "org", "public"]


Text = Annotated[str, StringConstraints(max_length=10_000)]


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


@dataclass(frozen=True)
class Ticket:
    version: DatasetVersion
    session_id: str
    files: list[FileTargets]


class UploadTicketPublic(BaseModel):
    upload_id: str
    version: int
    files: list[FileTargetsPublic]

    @classmethod
    def of(cls, t: Ticket) -> UploadTicketPublic:
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
