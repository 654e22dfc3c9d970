"""Client side of a push and a pull: bytes go between the local disk and S3 through presigned URLs in parallel.

``push`` reads each file once, in order, hashing it (sha256 for the manifest) while a thread pool PUTs its parts;
to resume, it asks the ``UploadBackend`` which parts are still missing and sends only those (finished parts are
re-read to hash, never re-sent). The backend is the service: ``LocalBackend`` calls ``Uploads`` in-process, the
platform's HTTP client implements the same three calls over the REST API.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from haihe.datasets import layout
from haihe.datasets.hashing import download_verified
from haihe.datasets.manifest import Manifest
from haihe.datasets.presigned import Transport
from haihe.datasets.upload import FileSpec, FileTargets, Uploads
from haihe.errors import HaiheError, InvalidInput, StorageUnavailable

Progress = Callable[[int, int], None]  # (bytes done, bytes total), called from worker threads under a lock


@dataclass(frozen=True)
class UploadTicket:
    session_id: str
    version: int
    files: list[FileTargets]


class UploadBackend(Protocol):
    """What a pushing client needs from the service."""

    def begin(self, files: Sequence[FileSpec]) -> UploadTicket: ...

    def resume(self, session_id: str) -> UploadTicket: ...

    def finish(self, session_id: str, hashes: dict[str, str]) -> Manifest: ...


@dataclass
class LocalBackend:
    """``UploadBackend`` that calls ``Uploads`` directly (tests, benchmarks, admin tools with S3 credentials)."""

    uploads: Uploads
    org: str
    dataset: str
    created_by: str = ""
    description: str = ""
    licence: str = ""
    data_format: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def begin(self, files: Sequence[FileSpec]) -> UploadTicket:
        session = self.uploads.start(
            self.org,
            self.dataset,
            files,
            created_by=self.created_by,
            description=self.description,
            licence=self.licence,
            data_format=self.data_format,
            **self.extra,
        )
        return UploadTicket(session.id, session.version, self.uploads.targets(session))

    def resume(self, session_id: str) -> UploadTicket:
        session = self.uploads.get(self.org, self.dataset, session_id)
        return UploadTicket(session.id, session.version, self.uploads.targets(session, missing_only=True))

    def finish(self, session_id: str, hashes: dict[str, str]) -> Manifest:
        return self.uploads.complete(self.uploads.get(self.org, self.dataset, session_id), hashes)


@dataclass(frozen=True)
class LocalFile:
    path: str  # relative, '/'-separated: the path inside the version
    source: Path
    size: int


def scan_directory(root: Path) -> list[LocalFile]:
    """Regular files under ``root`` with their dataset paths; a name the dataset layout refuses is reported with
    the local file it came from."""
    root = Path(root)
    if not root.is_dir():
        raise InvalidInput(f"{root} is not a directory", field="source")
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            source = Path(dirpath) / name
            if not source.is_file():
                continue
            rel = source.relative_to(root).as_posix()
            try:
                layout.check_path(rel)
            except InvalidInput as exc:
                raise InvalidInput(f"{source}: {exc.message}", field="path") from None
            found.append(LocalFile(rel, source, source.stat().st_size))
    return found


class _Meter:
    def __init__(self, total: int, progress: Progress | None) -> None:
        self.total = total
        self.done = 0
        self._progress = progress
        self._lock = threading.Lock()

    def add(self, n: int) -> None:
        if self._progress is None:
            return
        with self._lock:
            self.done += n
            self._progress(self.done, self.total)


def push(
    root: Path,
    backend: UploadBackend,
    transport: Transport,
    *,
    session_id: str | None = None,
    workers: int = 8,
    progress: Progress | None = None,
) -> Manifest:
    """Upload the directory ``root`` as a new version (or finish session ``session_id``) and commit it.

    On a storage failure the error is StorageUnavailable carrying ``session_id`` in its details: call again with
    it to resume."""
    files = {f.path: f for f in scan_directory(Path(root))}
    if session_id is None:
        ticket = backend.begin([FileSpec(path=f.path, size=f.size) for f in files.values()])
    else:
        ticket = backend.resume(session_id)
    for target in ticket.files:
        local = files.get(target.path)
        if local is None or local.size != target.size:
            raise InvalidInput(
                f"{target.path}: the local file is missing or changed since the upload began", field="path"
            )
    meter = _Meter(sum(t.size for t in ticket.files), progress)
    try:
        hashes = _send_all(ticket, files, transport, workers, meter)
    except StorageUnavailable as exc:
        raise StorageUnavailable(
            f"upload interrupted: {exc.message}; resume with session {ticket.session_id}",
            component="s3",
            session_id=ticket.session_id,
            version=ticket.version,
        ) from None
    return backend.finish(ticket.session_id, hashes)


def _send_all(
    ticket: UploadTicket, files: dict[str, LocalFile], transport: Transport, workers: int, meter: _Meter
) -> dict[str, str]:
    hashes: dict[str, str] = {}
    # bound the parts held in memory: the reader waits while this many are queued or in flight
    slots = threading.BoundedSemaphore(workers * 2)
    pending: set[Future[None]] = set()

    def send(url: str, data: bytes) -> None:
        try:
            transport.put(url, data)
            meter.add(len(data))
        finally:
            slots.release()

    with ThreadPoolExecutor(workers) as pool:
        try:
            for target in ticket.files:
                wanted = {p.number: p for p in target.parts}
                digest = hashlib.sha256()
                with open(files[target.path].source, "rb") as fh:
                    number = 0
                    while True:
                        number += 1
                        data = fh.read(target.part_size)
                        if not data and number > 1:
                            break
                        digest.update(data)
                        part = wanted.get(number)
                        if part is None:
                            meter.add(len(data))
                            continue
                        if len(data) != part.size:
                            raise InvalidInput(f"{target.path}: the local file changed during the upload", field="path")
                        slots.acquire()
                        pending.add(pool.submit(send, part.url, data))
                        pending = _reap(pending)
                        if not data:
                            break
                hashes[target.path] = digest.hexdigest()
            done, _ = wait(pending, return_when=FIRST_EXCEPTION)
            _reap(done)
        except BaseException:
            for future in pending:
                future.cancel()
            raise
    return hashes


def _reap(futures: set[Future[None]]) -> set[Future[None]]:
    """Raise the first failure among finished futures; return the unfinished ones."""
    left = set()
    for future in futures:
        if future.done():
            exc = future.exception()
            if exc is not None:
                raise exc
        else:
            left.add(future)
    return left


def pull(
    manifest: Manifest,
    urls: dict[str, str],
    dest: Path,
    transport: Transport,
    *,
    workers: int = 8,
    progress: Progress | None = None,
) -> Path:
    """Download a version into ``dest`` through presigned GET URLs, verifying every file's size and sha256."""
    dest = Path(dest)
    meter = _Meter(manifest.total_size, progress)

    def one(path: str) -> None:
        entry = manifest.file(path)
        if path not in urls:
            raise InvalidInput(f"no download URL for {path}", field="urls")
        download_verified(
            transport.get(urls[path]),
            dest.joinpath(*path.split("/")),
            name=path,
            size=entry.size,
            sha256=entry.sha256,
            progress=meter.add,
        )

    with ThreadPoolExecutor(workers) as pool:
        futures = [pool.submit(one, e.path) for e in manifest.files]
        for future in futures:
            try:
                future.result()
            except HaiheError:
                for f in futures:
                    f.cancel()
                raise
    return dest
