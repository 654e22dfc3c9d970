"""The datasets service: create, push versions (presigned multipart, the API never carries bytes), list, show,
download, visibility and shares, soft delete, GC, and storage bytes for the quotas.

Who may read a dataset is decided in ONE function, :func:`readable_clause`: its creator and the owner org's admins
always; every member of the owner org when it is ``org``-visible; everyone when ``public``; members of orgs it is
shared with. Something you cannot read does not exist for you (404). Changing a dataset (new version, abort)
needs a writing role in the owner org; visibility, shares and delete need the owner org's admin (delete also its
creator) — a 403 when you can read it but not change it. Every create, commit, abort, share and delete is audited.

The database allocates version numbers (never reused) and passes ``version=`` to the library, which holds the
upload session in S3; a version becomes visible when the library commits its manifest and this service marks the
row committed. S3 errors are ``StorageUnavailable`` (503) and roll the request's transaction back.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ParamSpec, TypeVar

from sqlalchemy import ColumnElement, and_, false, func, or_, select, true
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from haihe.datasets import layout
from haihe.datasets.manifest import Manifest
from haihe.datasets.store import ObjectStore
from haihe.datasets.upload import FileSpec, Uploads, UploadSession
from haihe.datasets.versions import delete_version, download_urls, read_manifest
from haihe.errors import Conflict, HaiheError, InvalidInput, NotFound, PermissionDenied, StorageUnavailable
from haihe.platform import access, audit
from haihe.platform.access import Principal
from haihe.platform.context import PlatformContext
from haihe.platform.datasets.rows import Dataset, DatasetShare, DatasetVersion, VersionState, Visibility
from haihe.platform.datasets.schemas import JobReadPublic, Ticket
from haihe.platform.models import Job, Org, Role, utcnow
from haihe.platform.quotas import ledger as quotas
from haihe.platform.settings import Settings

log = logging.getLogger(__name__)

DOWNLOAD_TTL = dt.timedelta(hours=1)
UPLOAD_TTL = dt.timedelta(days=7)  # an upload left unfinished this long is expired by GC
MAX_LINEAGE = 50
VISIBILITIES = tuple(v.value for v in Visibility)

P = ParamSpec("P")
R = TypeVar("R")

ModelLookup = Callable[[str], list[tuple[str, int]]]  # "org/name@vN" -> [(zoo model "org/name", version)]


@dataclass
class DatasetStorage:
    """The S3 side of the service: the bucket's store, the upload sessions on it, and the zoo lineage lookup."""

    store: ObjectStore
    uploads: Uploads
    models_from_dataset: ModelLookup | None = None
    zoo_note: str = "the model zoo is not configured on this platform"

    @classmethod
    def from_settings(cls, settings: Settings) -> DatasetStorage:
        from haihe.datasets.store import MinioStore

        if not settings.s3_endpoint:
            raise StorageUnavailable("storage unavailable: this platform has no S3 endpoint configured",
                                     component="s3")
        store = MinioStore(settings.s3_endpoint, settings.s3_access_key, settings.s3_secret_key,
                           settings.datasets_bucket, region=settings.s3_region)
        lookup = _zoo_lookup(settings.mlflow_url) if settings.mlflow_url else None
        return cls(store=store, uploads=Uploads(store), models_from_dataset=lookup)

    @classmethod
    def for_store(cls, store: ObjectStore, **kw: Any) -> DatasetStorage:
        """A storage over any ``ObjectStore`` (unit tests pass ``haihe.datasets.memory.MemoryStore``)."""
        part_size = kw.pop("part_size", None)
        uploads = Uploads(store, part_size=part_size, min_part_size=part_size) if part_size else Uploads(store)
        return cls(store=store, uploads=uploads, **kw)


def _zoo_lookup(tracking_uri: str) -> ModelLookup:
    def lookup(ref: str) -> list[tuple[str, int]]:
        from haihe.model_zoo.registry import ModelZoo

        return [(str(v.ref.model), v.version) for v in ModelZoo.connect(tracking_uri).models_from_dataset(ref)]

    return lookup


def storage_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Say plainly that storage is down (503), whichever S3 call failed; the request's transaction rolls back."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except StorageUnavailable as exc:
            if exc.message.startswith("storage unavailable"):
                raise
            raise StorageUnavailable(f"storage unavailable: {exc.message}; nothing was committed, try again later",
                                     component="s3") from None

    return wrapper


# -- who may see what: the ONE rule -------------------------------------------------------------------------------
def _admin_orgs(principal: Principal) -> set[int]:
    if principal.is_platform_admin and principal.bound_org_id is not None:
        return {principal.bound_org_id}
    return {org for org in principal.roles if principal.role_in(org) == Role.ORG_ADMIN}


def readable_clause(principal: Principal) -> ColumnElement[bool]:
    """The dataset visibility rule, as a SQL condition on ``Dataset`` (used for lists and single reads alike)."""
    if principal.is_platform_admin and principal.bound_org_id is None:
        return true()
    members = principal.visible_org_ids() or set()
    shared = select(DatasetShare.dataset_id).where(DatasetShare.org_id.in_(members))
    return or_(
        Dataset.visibility == Visibility.PUBLIC.value,
        and_(Dataset.org_id.in_(members), Dataset.visibility == Visibility.ORG.value),
        and_(Dataset.org_id.in_(members), Dataset.created_by_id == principal.user_id),
        Dataset.org_id.in_(_admin_orgs(principal)) if _admin_orgs(principal) else false(),
        Dataset.id.in_(shared) if members else false(),
    )


def get_readable(session: Session, principal: Principal, org: str, name: str) -> Dataset:
    """The dataset if the caller may read it; NotFound otherwise (also when deleted)."""
    layout.check_name(org, "org")
    layout.check_name(name, "dataset")
    ds = session.scalar(
        select(Dataset).join(Org, Org.id == Dataset.org_id)
        .where(Org.name == org, Dataset.name == name, Dataset.deleted_at.is_(None), readable_clause(principal))
    )
    if ds is None:
        raise NotFound(f"dataset {org}/{name} not found", field="dataset")
    return ds


def _not_owner(ds: Dataset) -> PermissionDenied:
    return PermissionDenied(f"dataset {ds.org.name}/{ds.name} belongs to org {ds.org.name!r}: "
                            "you may read it but not change it")


def get_writable(session: Session, principal: Principal, org: str, name: str) -> Dataset:
    """The dataset if the caller may push to it: readable (else 404) and a writing role in the owner org (403)."""
    ds = get_readable(session, principal, org, name)
    if not principal.can_see_org(ds.org_id):
        raise _not_owner(ds)
    access.org_for_write(session, principal, ds.org.name)
    return ds


def get_administrable(session: Session, principal: Principal, org: str, name: str, *,
                      creator_may: bool = False) -> Dataset:
    """The dataset if the caller administers it: the owner org's admin (or, with ``creator_may``, its creator)."""
    ds = get_readable(session, principal, org, name)
    if not principal.can_see_org(ds.org_id):
        raise _not_owner(ds)
    if creator_may and ds.created_by_id == principal.user_id:
        access.org_for_write(session, principal, ds.org.name)
    else:
        access.org_for_admin(session, principal, ds.org.name)
    return ds


# -- create, list, show ---------------------------------------------------------------------------------------------
def _check_visibility(value: str) -> str:
    if value not in VISIBILITIES:
        raise InvalidInput(f"visibility must be one of {', '.join(VISIBILITIES)}", field="visibility")
    return value


def create(session: Session, principal: Principal, org: str, name: str, *, description: str = "",
           licence: str = "", visibility: str = Visibility.PRIVATE.value) -> Dataset:
    layout.check_name(name, "name")
    _check_visibility(visibility)
    org_row = access.org_for_write(session, principal, org)
    existing = session.scalar(select(Dataset).where(Dataset.org_id == org_row.id, Dataset.name == name))
    if existing is not None:
        if existing.deleted_at is not None:
            raise Conflict(f"dataset {org}/{name} was deleted and its name is held until its data is removed",
                           field="name")
        raise Conflict(f"dataset {org}/{name} already exists", field="name")
    ds = Dataset(org_id=org_row.id, name=name, description=description, licence=licence, visibility=visibility,
                 created_by_id=principal.user_id)
    session.add(ds)
    try:
        session.flush()
    except IntegrityError:
        session.rollback()
        raise Conflict(f"dataset {org}/{name} already exists", field="name") from None
    audit.record(session, principal, "dataset.create", target_type="dataset", target=f"{org}/{name}",
                 org_id=org_row.id, details={"visibility": visibility})
    session.commit()
    return ds


@dataclass(frozen=True)
class Summary:
    dataset: Dataset
    latest: int | None
    stored_bytes: int  # every committed version


@dataclass(frozen=True)
class Page:
    items: list[Summary]
    next_cursor: int | None


def list_datasets(session: Session, principal: Principal, *, org: str | None = None, cursor: int | None = None,
                  limit: int = 50) -> Page:
    """Datasets the caller may read, oldest first, keyset-paginated by id."""
    q = select(Dataset).where(Dataset.deleted_at.is_(None), readable_clause(principal))
    if org is not None:
        layout.check_name(org, "org")
        q = q.join(Org, Org.id == Dataset.org_id).where(Org.name == org)
    if cursor is not None:
        q = q.where(Dataset.id > cursor)
    rows = list(session.scalars(q.order_by(Dataset.id).limit(limit + 1)))
    page = rows[:limit]
    stats = committed_stats(session, [d.id for d in page])
    items = [Summary(d, *stats.get(d.id, (None, 0))) for d in page]
    return Page(items, page[-1].id if len(rows) > limit else None)


def committed_stats(session: Session, ids: Sequence[int]) -> dict[int, tuple[int | None, int]]:
    if not ids:
        return {}
    q = (select(DatasetVersion.dataset_id, func.max(DatasetVersion.number), func.sum(DatasetVersion.total_bytes))
         .where(DatasetVersion.dataset_id.in_(ids), DatasetVersion.state == VersionState.COMMITTED.value)
         .group_by(DatasetVersion.dataset_id))
    return {row[0]: (row[1], int(row[2] or 0)) for row in session.execute(q)}


@dataclass(frozen=True)
class Detail:
    dataset: Dataset
    versions: list[DatasetVersion]
    shown: int | None
    manifest: Manifest | None
    stored_bytes: int
    shares: list[str]
    jobs: list[JobReadPublic]
    models: list[tuple[str, int]]
    models_note: str | None
    can_write: bool


def _committed(ds: Dataset) -> list[DatasetVersion]:
    return [v for v in ds.versions if v.state == VersionState.COMMITTED.value]


def _resolve_version(ds: Dataset, version: int | str | None) -> DatasetVersion:
    committed = _committed(ds)
    if version in (None, "latest"):
        if not committed:
            raise NotFound(f"dataset {ds.org.name}/{ds.name} has no committed version yet", field="version")
        return committed[-1]
    number = _parse_version(version)
    for v in committed:
        if v.number == number:
            return v
    raise NotFound(f"dataset {ds.org.name}/{ds.name} has no version {number}", field="version")


def _parse_version(version: int | str | None) -> int:
    text = str(version).removeprefix("v")
    if not text.isdigit():
        raise InvalidInput("version must be a number, 'vN' or 'latest'", field="version")
    return layout.check_version(int(text))


@storage_errors
def show(session: Session, principal: Principal, storage: DatasetStorage, org: str, name: str,
         version: int | str | None = None) -> Detail:
    """A dataset with its versions, the manifest of one version (default latest), size, shares and lineage."""
    ds = get_readable(session, principal, org, name)
    committed = _committed(ds)
    shown = _resolve_version(ds, version) if (version is not None or committed) else None
    manifest = read_manifest(storage.store, org, name, shown.number) if shown else None
    can_write = principal.can_see_org(ds.org_id) and (
        principal.is_platform_admin or principal.role_in(ds.org_id) is not None)
    models: list[tuple[str, int]] = []
    note: str | None = None
    if shown is not None:
        models, note = _models(principal, storage, session, f"{org}/{name}@v{shown.number}")
    return Detail(
        dataset=ds, versions=list(ds.versions), shown=shown.number if shown else None, manifest=manifest,
        stored_bytes=sum(v.total_bytes for v in committed),
        shares=sorted(s.org.name for s in ds.shares) if can_write else [],
        jobs=_jobs_reading(session, principal, ds), models=models, models_note=note, can_write=can_write)


def _jobs_reading(session: Session, principal: Principal, ds: Dataset) -> list[JobReadPublic]:
    """Jobs (in orgs the caller can see) whose resolved dataset is this one, newest first."""
    q = (select(Job, Org.name).join(Org, Org.id == Job.org_id)
         .where(Job.dataset_ref.startswith(f"{ds.org.name}/{ds.name}@", autoescape=True))
         .order_by(Job.created_at.desc()).limit(MAX_LINEAGE))
    visible = principal.visible_org_ids()
    if visible is not None:
        q = q.where(Job.org_id.in_(visible))
    return [JobReadPublic(id=j.id, name=j.name, org=org_name, dataset=str(j.dataset_ref), state=j.state,
                          created_at=j.created_at) for j, org_name in session.execute(q)]


def _models(principal: Principal, storage: DatasetStorage, session: Session,
            ref: str) -> tuple[list[tuple[str, int]], str | None]:
    if storage.models_from_dataset is None:
        return [], storage.zoo_note
    try:
        found = storage.models_from_dataset(ref)
    except HaiheError as exc:
        return [], f"model lineage is unavailable right now: {exc.message}"
    visible = principal.visible_org_ids()
    if visible is None:
        return found, None
    names = set(session.scalars(select(Org.name).where(Org.id.in_(visible))))
    return [(model, v) for model, v in found if model.split("/", 1)[0] in names], None


# -- versions: start, resume, complete, abort -----------------------------------------------------------------------
@storage_errors
def start_version(session: Session, principal: Principal, storage: DatasetStorage, org: str, name: str,
                  files: Sequence[FileSpec | Mapping[str, Any]], *, note: str = "", data_format: str = "",
                  schema_hint: dict[str, Any] | None = None) -> Ticket:
    """Allocate the next version number, open the upload in S3 and return presigned part URLs."""
    ds = get_writable(session, principal, org, name)
    specs = [f if isinstance(f, FileSpec) else FileSpec.model_validate(dict(f)) for f in files]
    if not specs:
        raise InvalidInput("a version needs at least one file", field="files")
    quotas.check_storage(session, ds.org_id, sum(s.size for s in specs))  # 402 before anything reaches S3
    number = (session.scalar(select(func.max(DatasetVersion.number)).where(DatasetVersion.dataset_id == ds.id))
              or 0) + 1
    row = DatasetVersion(dataset_id=ds.id, number=number, state=VersionState.UPLOADING.value, note=note,
                         total_bytes=sum(s.size for s in specs), files=len(specs), created_by_id=principal.user_id)
    session.add(row)
    try:
        session.flush()
    except IntegrityError:
        session.rollback()
        raise Conflict(f"another upload of {org}/{name} took version {number}; try again", field="version") \
            from None
    creator = principal.username
    upload = storage.uploads.start(org, name, specs, created_by=creator, description=ds.description,
                                   licence=ds.licence, data_format=data_format, schema_hint=schema_hint,
                                   version=number)
    try:
        targets = storage.uploads.targets(upload)
        row.upload_id = upload.id
        audit.record(session, principal, "dataset.version.start", target_type="dataset",
                     target=f"{org}/{name}@v{number}", org_id=ds.org_id,
                     details={"files": len(specs), "bytes": row.total_bytes, "upload_id": upload.id})
        session.commit()
    except BaseException:
        session.rollback()
        with contextlib.suppress(HaiheError):  # nothing committed here, so leave nothing in S3 either
            storage.uploads.abort(upload)
        raise
    return Ticket(row, upload.id, targets)


def _upload_row(session: Session, principal: Principal, org: str, name: str,
                upload_id: str) -> tuple[Dataset, DatasetVersion]:
    layout.check_session_id(upload_id, "upload_id")
    ds = get_writable(session, principal, org, name)
    row = session.scalar(select(DatasetVersion).where(DatasetVersion.dataset_id == ds.id,
                                                      DatasetVersion.upload_id == upload_id))
    if row is None:
        raise NotFound(f"upload {upload_id} of {org}/{name} not found", field="upload_id")
    return ds, row


def _session(storage: DatasetStorage, ds: Dataset, row: DatasetVersion) -> UploadSession:
    assert row.upload_id is not None
    return storage.uploads.get(ds.org.name, ds.name, row.upload_id)


@storage_errors
def resume_version(session: Session, principal: Principal, storage: DatasetStorage, org: str, name: str,
                   upload_id: str) -> Ticket:
    """URLs for the parts that have not arrived yet (finished parts are never sent again)."""
    ds, row = _upload_row(session, principal, org, name, upload_id)
    if row.state != VersionState.UPLOADING.value:
        raise Conflict(f"upload {upload_id} of {org}/{name} is {row.state} (v{row.number})", field="upload_id",
                       state=row.state, version=row.number)
    upload = _session(storage, ds, row)
    return Ticket(row, upload_id, storage.uploads.targets(upload, missing_only=True))


@storage_errors
def complete_version(session: Session, principal: Principal, storage: DatasetStorage, org: str, name: str,
                     upload_id: str, hashes: Mapping[str, str]) -> tuple[DatasetVersion, Manifest]:
    """Check every part and size in S3, commit the manifest (the library), then mark the version committed."""
    ds, row = _upload_row(session, principal, org, name, upload_id)
    if row.state == VersionState.ABORTED.value:
        raise Conflict(f"upload {upload_id} of {org}/{name} was aborted", field="upload_id")
    if row.state == VersionState.COMMITTED.value:
        return row, read_manifest(storage.store, org, name, row.number)
    try:
        upload = _session(storage, ds, row)
    except NotFound:
        # the manifest may already be written (a commit whose database update was lost): adopt it
        manifest = read_manifest(storage.store, org, name, row.number)
        if manifest.upload_id != upload_id:
            raise
    else:
        manifest = storage.uploads.complete(upload, dict(hashes))
    row.state = VersionState.COMMITTED.value
    row.total_bytes = manifest.total_size
    row.files = len(manifest.files)
    row.committed_at = utcnow()
    audit.record(session, principal, "dataset.version.commit", target_type="dataset",
                 target=f"{org}/{name}@v{row.number}", org_id=ds.org_id,
                 details={"files": row.files, "bytes": row.total_bytes, "upload_id": upload_id})
    session.commit()
    return row, manifest


@storage_errors
def abort_version(session: Session, principal: Principal, storage: DatasetStorage, org: str, name: str,
                  upload_id: str) -> DatasetVersion:
    ds, row = _upload_row(session, principal, org, name, upload_id)
    if row.state == VersionState.COMMITTED.value:
        raise Conflict(f"v{row.number} of {org}/{name} is committed; versions are immutable", field="upload_id")
    if row.state == VersionState.UPLOADING.value:
        with contextlib.suppress(NotFound):  # the session record is gone already: GC removes any leftovers
            storage.uploads.abort(_session(storage, ds, row))
        row.state = VersionState.ABORTED.value
        audit.record(session, principal, "dataset.version.abort", target_type="dataset",
                     target=f"{org}/{name}@v{row.number}", org_id=ds.org_id, details={"upload_id": upload_id})
        session.commit()
    return row


# -- download -------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Download:
    manifest: Manifest
    urls: dict[str, str]
    expires_at: dt.datetime


@storage_errors
def download(session: Session, principal: Principal, storage: DatasetStorage, org: str, name: str,
             version: int | str | None = "latest") -> Download:
    """Presigned GET URLs for every file of a committed version (the bytes never pass through the API)."""
    ds = get_readable(session, principal, org, name)
    row = _resolve_version(ds, version)
    manifest = read_manifest(storage.store, org, name, row.number)
    return Download(manifest, download_urls(storage.store, manifest, expires=DOWNLOAD_TTL), utcnow() + DOWNLOAD_TTL)


def resolve_ref(session: Session, principal: Principal, ref: str) -> tuple[str, str, int]:
    """``org/name@vN`` or ``org/name@latest`` → (org, name, N) if the caller may read it (for job submission)."""
    base, _, version = ref.partition("@")
    org, _, name = base.partition("/")
    ds = get_readable(session, principal, org, name)
    return org, name, _resolve_version(ds, version or "latest").number


# -- visibility, shares, delete -------------------------------------------------------------------------------------
def set_visibility(session: Session, principal: Principal, org: str, name: str, visibility: str) -> Dataset:
    _check_visibility(visibility)
    ds = get_administrable(session, principal, org, name)
    if ds.visibility != visibility:
        audit.record(session, principal, "dataset.visibility", target_type="dataset", target=f"{org}/{name}",
                     org_id=ds.org_id, details={"from": ds.visibility, "to": visibility})
        ds.visibility = visibility
        session.commit()
    return ds


def share(session: Session, principal: Principal, org: str, name: str, target_org: str, *,
          grant: bool = True) -> Dataset:
    """Give (or take back) read access to every member of ``target_org``."""
    ds = get_administrable(session, principal, org, name)
    layout.check_name(target_org, "org")
    target = session.scalar(select(Org).where(Org.name == target_org))
    if target is None:
        raise NotFound(f"org {target_org!r} not found", field="org")
    if target.id == ds.org_id:
        raise InvalidInput("a dataset is always readable by its own org as its visibility says", field="org")
    existing = next((s for s in ds.shares if s.org_id == target.id), None)
    if grant and existing is None:
        ds.shares.append(DatasetShare(org_id=target.id, created_by_id=principal.user_id))
    elif not grant and existing is not None:
        ds.shares.remove(existing)
    else:
        return ds
    audit.record(session, principal, "dataset.share" if grant else "dataset.unshare", target_type="dataset",
                 target=f"{org}/{name}", org_id=ds.org_id, details={"org": target_org})
    session.commit()
    session.refresh(ds)
    return ds


def delete(session: Session, principal: Principal, settings: Settings, org: str, name: str) -> Dataset:
    """Soft delete: gone at once for everyone; objects are removed by GC after the retention window."""
    ds = get_administrable(session, principal, org, name, creator_may=True)
    ds.deleted_at = utcnow()
    audit.record(session, principal, "dataset.delete", target_type="dataset", target=f"{org}/{name}",
                 org_id=ds.org_id, details={"purge_after_days": settings.dataset_retention_days})
    session.commit()
    return ds


def purge_after(ds: Dataset, settings: Settings) -> dt.datetime | None:
    return ds.deleted_at + dt.timedelta(days=settings.dataset_retention_days) if ds.deleted_at else None


# -- GC and storage accounting --------------------------------------------------------------------------------------
@dataclass
class GcReport:
    purged: list[str] = field(default_factory=list)
    objects_deleted: int = 0
    uploads_expired: list[str] = field(default_factory=list)


@storage_errors
def collect_garbage(session: Session, storage: DatasetStorage, settings: Settings, *,
                    now: dt.datetime | None = None, upload_ttl: dt.timedelta = UPLOAD_TTL) -> GcReport:
    """Remove the objects and rows of datasets deleted longer ago than the retention window, and expire uploads
    abandoned for longer than ``upload_ttl``. Each dataset is committed on its own, so a storage outage half-way
    leaves the rest for the next run."""
    now = now or utcnow()
    report = GcReport()
    cutoff = now - dt.timedelta(days=settings.dataset_retention_days)
    expired = select(Dataset).where(Dataset.deleted_at.is_not(None), Dataset.deleted_at <= cutoff)
    for ds in list(session.scalars(expired)):
        org, name = ds.org.name, ds.name
        for upload in storage.uploads.sessions(org, name):
            storage.uploads.abort(upload)
        for v in ds.versions:
            report.objects_deleted += delete_version(storage.store, org, name, v.number)
        leftovers = [info.key for info in storage.store.list(layout.dataset_prefix(org, name)) if not info.is_dir]
        storage.store.delete(leftovers)
        report.objects_deleted += len(leftovers)
        audit.record(session, None, "dataset.purge", actor="gc", target_type="dataset", target=f"{org}/{name}",
                     org_id=ds.org_id)
        session.delete(ds)
        session.commit()
        report.purged.append(f"{org}/{name}")
    stale = session.scalars(select(DatasetVersion).where(DatasetVersion.state == VersionState.UPLOADING.value,
                                                         DatasetVersion.created_at <= now - upload_ttl))
    for row in list(stale):
        ds = row.dataset
        if row.upload_id is not None:
            with contextlib.suppress(NotFound):
                storage.uploads.abort(_session(storage, ds, row))
        row.state = VersionState.ABORTED.value
        audit.record(session, None, "dataset.version.expire", actor="gc", target_type="dataset",
                     target=f"{ds.org.name}/{ds.name}@v{row.number}", org_id=ds.org_id)
        session.commit()
        report.uploads_expired.append(f"{ds.org.name}/{ds.name}@v{row.number}")
    return report


def storage(ctx: PlatformContext) -> DatasetStorage:
    """The process's dataset storage (S3 client, part size), built on first use; tests ``ctx.provide("datasets", …)``
    a store of their own first."""
    return ctx.service("datasets", lambda: DatasetStorage.from_settings(ctx.settings))
