"""Server side of a version upload: start a session, hand out presigned part URLs, report what has arrived (resume),
complete (check, then commit by writing the manifest last) or abort.

Files are uploaded in place, under ``v<N>/``; an S3 object only appears when its PUT or multipart completion
finishes, and the version only appears when ``manifest.json`` is written, after every file has been checked — so a
crashed or interrupted upload never shows a version. The session record (``_uploads/<id>.json``) reserves ``N``
and remembers each file's multipart upload id, which makes the library stateless: any API replica can resume it.

Checks at completion: every file exists with exactly its declared size (multipart: every part present with the
planned size). The sha256 of each file is the client's, recorded in the manifest; reading every object back on the
API server would put it in the data path, so it is opt-in (``verify_hashes=True``, for a worker) — and staging and
streaming always verify sha256, so a wrong or corrupted file fails loudly at first use, naming the file.
"""

from __future__ import annotations

import contextlib
import math
import uuid
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Unpack, cast

from pydantic import BaseModel, Field

from haihe.datasets import layout
from haihe.datasets.hashing import check_bytes
from haihe.datasets.manifest import FileEntry, Manifest, VersionMeta, check_sha256, meta_fields
from haihe.datasets.store import ObjectStore, PartInfo, read_all
from haihe.datasets.versions import committed_versions, read_manifest
from haihe.errors import Conflict, InvalidInput, NotFound, PayloadTooLarge

MiB = 1024 * 1024
DEFAULT_PART_SIZE = 16 * MiB
MIN_PART_SIZE = 5 * MiB
MAX_PARTS = 10_000  # S3's limit per multipart upload
MAX_FILES = 1_000_000


class FileSpec(BaseModel):
    """A file the client means to upload (its sha256 may come now or at completion)."""

    path: str
    size: int = Field(ge=0, le=5 * 1024**4)  # S3's limit on one object: 5 TiB
    sha256: str | None = None


class FilePlan(BaseModel):
    path: str
    size: int
    key: str
    part_size: int
    upload_id: str | None = None  # None: the file is sent in one presigned PUT
    sha256: str | None = None

    @property
    def part_count(self) -> int:
        return max(1, math.ceil(self.size / self.part_size))

    def part_span(self, number: int) -> tuple[int, int]:
        """(offset, size) of part ``number`` (1-based)."""
        offset = (number - 1) * self.part_size
        return offset, min(self.part_size, self.size - offset)


class UploadSession(BaseModel):
    id: str
    org: str
    dataset: str
    version: int
    created_by: str = ""
    created_at: datetime
    description: str = ""
    licence: str = ""
    data_format: str = ""
    schema_hint: dict[str, Any] = Field(default_factory=dict)
    files: list[FilePlan]

    @property
    def total_size(self) -> int:
        return sum(f.size for f in self.files)

    def meta(self) -> VersionMeta:
        """What the version will say about itself, for its manifest."""
        return cast(VersionMeta, self.model_dump(include=set(VersionMeta.__annotations__)))


@dataclass(frozen=True)
class PartTarget:
    """Where one part goes: bytes [offset, offset+size) of the file, PUT to ``url``."""

    number: int
    offset: int
    size: int
    url: str


@dataclass(frozen=True)
class FileTargets:
    path: str
    size: int
    part_size: int
    parts: list[PartTarget]  # only the parts still to send when asked for the missing ones


def plan_part_size(size: int, preferred: int = DEFAULT_PART_SIZE) -> int:
    """The preferred part size, grown in whole MiB when a file would need more than S3's 10,000 parts."""
    needed = math.ceil(size / MAX_PARTS)
    return preferred if needed <= preferred else math.ceil(needed / MiB) * MiB


class Uploads:
    """Upload sessions of datasets in one bucket. Stateless: everything lives in the store."""

    def __init__(
        self,
        store: ObjectStore,
        *,
        part_size: int = DEFAULT_PART_SIZE,
        url_ttl: timedelta = timedelta(hours=12),
        workers: int = 8,
        min_part_size: int = MIN_PART_SIZE,
    ) -> None:
        if part_size < min_part_size:
            raise InvalidInput(f"part_size must be at least {min_part_size} bytes", field="part_size")
        self.store = store
        self.part_size = part_size
        self.url_ttl = url_ttl
        self.workers = workers

    # -- start ----------------------------------------------------------------------------------------------
    def start(
        self,
        org: str,
        dataset: str,
        files: Sequence[FileSpec],
        *,
        version: int | None = None,
        **meta: Unpack[VersionMeta],
    ) -> UploadSession:
        """Reserve a version number and open a multipart upload for each large file.

        A service with a database should allocate ``version`` there; without one the next free number is taken,
        and two sessions that race for it are told apart by their record (the older one keeps the number)."""
        layout.dataset_prefix(org, dataset)
        specs = _check_specs(files)
        session = UploadSession(
            id=uuid.uuid4().hex,
            org=org,
            dataset=dataset,
            version=1,
            created_at=datetime.now(UTC),
            files=[],
            **meta_fields(meta),
        )
        session.version = self._reserve(session, version)
        try:
            plans = []
            for spec in specs:
                part_size = plan_part_size(spec.size, self.part_size)
                key = layout.file_key(org, dataset, session.version, spec.path)
                upload_id = None
                if spec.size > part_size:
                    upload_id = self.store.multipart(key).upload_id
                plans.append(
                    FilePlan(
                        path=spec.path,
                        size=spec.size,
                        key=key,
                        part_size=part_size,
                        upload_id=upload_id,
                        sha256=spec.sha256,
                    )
                )
            session.files = plans
            self._save(session)
        except BaseException:
            self.abort(session)
            raise
        return session

    def _reserve(self, session: UploadSession, wanted: int | None) -> int:
        org, dataset = session.org, session.dataset
        for _attempt in range(20):
            if wanted is not None:
                number = layout.check_version(wanted)
                if number in committed_versions(self.store, org, dataset):
                    raise Conflict(f"{org}/{dataset} v{number} is already committed (versions are immutable)")
            else:
                taken = set(committed_versions(self.store, org, dataset))
                taken |= {s.version for s in self.sessions(org, dataset)}
                number = max(taken, default=0) + 1
            session.version = number
            self._save(session)
            # read-after-write: every racer now sees every claim; the oldest claim on a number wins it
            rivals = [s for s in self.sessions(org, dataset) if s.version == number]
            winner = min(rivals, key=lambda s: (s.created_at, s.id))
            if winner.id == session.id:
                return number
            self.store.delete([layout.session_key(org, dataset, session.id)])
            if wanted is not None:
                raise Conflict(f"{org}/{dataset} v{number} is being uploaded by another session")
        raise Conflict(f"{org}/{dataset}: could not reserve a version number; try again")

    def _save(self, session: UploadSession) -> None:
        key = layout.session_key(session.org, session.dataset, session.id)
        self.store.put(key, session.model_dump_json().encode())

    # -- look up --------------------------------------------------------------------------------------------
    def get(self, org: str, dataset: str, session_id: str) -> UploadSession:
        key = layout.session_key(org, dataset, session_id)
        try:
            return UploadSession.model_validate_json(read_all(self.store, key))
        except NotFound:
            raise NotFound(
                f"upload {session_id} of {org}/{dataset} not found (finished, aborted or never started)"
            ) from None

    def sessions(self, org: str, dataset: str) -> list[UploadSession]:
        """Open upload sessions of a dataset (a crashed client's session stays here until aborted or expired)."""
        found = []
        for info in self.store.list(layout.uploads_prefix(org, dataset)):
            try:
                found.append(UploadSession.model_validate_json(read_all(self.store, info.key)))
            except NotFound:  # finished between the listing and the read
                continue
        return found

    def received(self, session: UploadSession) -> dict[str, list[PartInfo]]:
        """The parts that have arrived, per file path: what a resuming client may skip."""

        def one(plan: FilePlan) -> list[PartInfo]:
            if plan.upload_id is None:
                try:
                    info = self.store.stat(plan.key)
                except NotFound:
                    return []
                return [PartInfo(1, info.size, info.etag)] if info.size == plan.size else []
            try:
                parts = self.store.multipart(plan.key, plan.upload_id).parts()
            except NotFound:  # completed already (or aborted): the object tells which
                try:
                    done = self.store.stat(plan.key).size == plan.size
                except NotFound:
                    done = False
                return [PartInfo(n, plan.part_span(n)[1], "") for n in range(1, plan.part_count + 1)] if done else []
            return [p for p in parts if 1 <= p.number <= plan.part_count and p.size == plan.part_span(p.number)[1]]

        with ThreadPoolExecutor(self.workers) as pool:
            return dict(zip([f.path for f in session.files], pool.map(one, session.files), strict=True))

    def targets(self, session: UploadSession, *, missing_only: bool = False) -> list[FileTargets]:
        """Presigned URLs for every part (or only the parts that have not arrived, to resume)."""
        have = self.received(session) if missing_only else {}
        result = []
        for plan in session.files:
            done = {p.number for p in have.get(plan.path, [])}
            parts = []
            for number in range(1, plan.part_count + 1):
                if number in done:
                    continue
                offset, size = plan.part_span(number)
                url = self.store.presign(
                    "PUT",
                    plan.key,
                    expires=self.url_ttl,
                    upload_id=plan.upload_id,
                    part_number=number if plan.upload_id else None,
                )
                parts.append(PartTarget(number, offset, size, url))
            result.append(FileTargets(plan.path, plan.size, plan.part_size, parts))
        return result

    # -- finish ---------------------------------------------------------------------------------------------
    def complete(
        self,
        session: UploadSession,
        hashes: Mapping[str, str] | None = None,
        *,
        verify_hashes: bool = False,
    ) -> Manifest:
        """Check every file, complete the multipart uploads, then commit by writing the manifest last.

        Idempotent: completing a session that has already committed returns its manifest."""
        try:
            existing = read_manifest(self.store, session.org, session.dataset, session.version)
        except NotFound:
            existing = None
        if existing is not None:
            if existing.upload_id == session.id:
                return existing
            raise Conflict(f"{session.org}/{session.dataset} v{session.version} is already committed")
        entries = [FileEntry(path=p.path, size=p.size, sha256=_final_hash(p, hashes)) for p in session.files]
        with ThreadPoolExecutor(self.workers) as pool:
            problems = [msg for msg in pool.map(self._finish_file, session.files) if msg]
        if problems:
            more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
            raise InvalidInput("upload incomplete: " + "; ".join(problems[:5]) + more, field="files")
        if verify_hashes:
            for entry, plan in zip(entries, session.files, strict=True):
                check_bytes(read_all(self.store, plan.key), name=entry.path, size=entry.size, sha256=entry.sha256)
        manifest = Manifest.build(
            org=session.org,
            dataset=session.dataset,
            version=session.version,
            files=entries,
            upload_id=session.id,
            **session.meta(),
        )
        self.store.put(layout.manifest_key(session.org, session.dataset, session.version), manifest.to_json())
        self.store.delete([layout.session_key(session.org, session.dataset, session.id)])
        return manifest

    def _finish_file(self, plan: FilePlan) -> str | None:
        """Complete one file's upload if all its parts are there; return what is wrong, or None."""
        if plan.upload_id is not None:
            upload = self.store.multipart(plan.key, plan.upload_id)
            try:
                parts = {p.number: p for p in upload.parts()}
            except NotFound:
                parts = None  # completed by an earlier attempt: the object is checked below
            if parts is not None:
                missing = [n for n in range(1, plan.part_count + 1) if n not in parts]
                if missing:
                    return f"{plan.path}: {len(missing)} of {plan.part_count} parts not uploaded"
                wrong = [n for n in range(1, plan.part_count + 1) if parts[n].size != plan.part_span(n)[1]]
                if wrong:
                    return f"{plan.path}: parts {wrong[:5]} have the wrong size"
                upload.complete([parts[n] for n in range(1, plan.part_count + 1)])
        try:
            size = self.store.stat(plan.key).size
        except NotFound:
            return f"{plan.path}: not uploaded"
        if size != plan.size:
            return f"{plan.path}: {size} bytes uploaded, {plan.size} declared"
        return None

    def abort(self, session: UploadSession) -> None:
        """Abort the multipart uploads and delete whatever arrived; refused once the version is committed."""
        if session.files:
            try:
                read_manifest(self.store, session.org, session.dataset, session.version)
            except NotFound:
                pass
            else:
                raise Conflict(f"{session.org}/{session.dataset} v{session.version} is committed; delete it instead")
        for plan in session.files:
            if plan.upload_id is not None:
                with contextlib.suppress(NotFound):
                    self.store.multipart(plan.key, plan.upload_id).abort()
        self.store.delete([plan.key for plan in session.files])
        self.store.delete([layout.session_key(session.org, session.dataset, session.id)])

    def expire(self, org: str, dataset: str, older_than: timedelta) -> list[str]:
        """Abort sessions abandoned for longer than ``older_than`` (crashed clients); returns their ids."""
        cutoff = datetime.now(UTC) - older_than
        stale = [s for s in self.sessions(org, dataset) if s.created_at < cutoff]
        for session in stale:
            self.abort(session)
        return [s.id for s in stale]


def _check_specs(files: Sequence[FileSpec]) -> list[FileSpec]:
    if len(files) > MAX_FILES:
        raise PayloadTooLarge(f"a version may hold at most {MAX_FILES} files", field="files")
    seen: set[str] = set()
    specs = []
    for i, spec in enumerate(files):
        spec = spec if isinstance(spec, FileSpec) else FileSpec.model_validate(spec)
        layout.check_path(spec.path, f"files[{i}].path")
        if spec.sha256 is not None:
            check_sha256(spec.sha256, f"files[{i}].sha256")
        if spec.path in seen:
            raise InvalidInput(f"files[{i}].path {spec.path!r} is listed twice", field=f"files[{i}].path")
        seen.add(spec.path)
        specs.append(spec)
    return sorted(specs, key=lambda s: s.path)


def _final_hash(plan: FilePlan, hashes: Mapping[str, str] | None) -> str:
    given = (hashes or {}).get(plan.path)
    field = f"hashes[{plan.path}]"
    if given is not None:
        check_sha256(given, field)
        if plan.sha256 is not None and plan.sha256 != given:
            raise InvalidInput(f"{plan.path}: sha256 differs from the one given at start", field=field)
        return given
    if plan.sha256 is None:
        raise InvalidInput(f"{plan.path}: no sha256 given", field=field)
    return plan.sha256
