"""An in-memory ``ObjectStore`` (and presigned-URL ``Transport``) with S3's multipart rules, for unit tests.

It keeps the behaviours the library relies on: an object appears only when its PUT or multipart completion
finishes, parts other than the last must reach a minimum size, a missing key is ``NotFound``, and ``down = True``
makes every call fail with ``StorageUnavailable`` as a stopped server would. Counters let tests prove that a
resumed upload did not send finished parts again.
"""

from __future__ import annotations

import hashlib
import io
import threading
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit

from haihe.datasets.store import HttpMethod, Multipart, ObjectInfo, ObjectStore, PartInfo, ReadStream
from haihe.errors import InvalidInput, NotFound, StorageUnavailable

MIN_PART_SIZE = 5 * 1024 * 1024  # S3's minimum for every part but the last


def _etag(data: bytes) -> str:
    """S3's ETag of a single PUT or part: the MD5 of its bytes (an identifier here, not a security measure)."""
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


@dataclass
class _Upload:
    key: str
    parts: dict[int, bytes] = field(default_factory=dict)


class _MemoryMultipart:
    def __init__(self, store: MemoryStore, key: str, upload_id: str) -> None:
        self._store = store
        self.key = key
        self.upload_id = upload_id

    def parts(self) -> list[PartInfo]:
        upload = self._store._upload(self.key, self.upload_id)
        return [PartInfo(n, len(b), _etag(b)) for n, b in sorted(upload.parts.items())]

    def complete(self, parts: Sequence[PartInfo]) -> None:
        store = self._store
        with store._lock:
            upload = store._upload(self.key, self.upload_id)
            numbers = [p.number for p in parts]
            if not parts or numbers != sorted(set(numbers)):
                raise InvalidInput("complete: parts must be listed once each, in order", field="parts")
            chunks = []
            for i, part in enumerate(parts):
                data = upload.parts.get(part.number)
                if data is None or _etag(data) != part.etag:
                    raise InvalidInput(f"complete: part {part.number} is missing or changed", field="parts")
                if i < len(parts) - 1 and len(data) < store.min_part_size:
                    raise InvalidInput(f"complete: part {part.number} is too small", field="parts")
                chunks.append(data)
            store.objects[self.key] = b"".join(chunks)
            del store.uploads[self.upload_id]

    def abort(self) -> None:
        with self._store._lock:
            self._store._upload(self.key, self.upload_id)
            del self._store.uploads[self.upload_id]


class MemoryStore(ObjectStore):
    """A bucket in a dict. Thread-safe; presigned URLs look like ``memory://bucket/key?...``."""

    def __init__(self, bucket: str = "datasets", *, min_part_size: int = MIN_PART_SIZE) -> None:
        self.bucket = bucket
        self.min_part_size = min_part_size
        self.objects: dict[str, bytes] = {}
        self.uploads: dict[str, _Upload] = {}
        self.down = False
        self.part_puts = 0  # PUTs of parts received through presigned URLs
        self.object_puts = 0  # whole-object PUTs received through presigned URLs
        self.gets = 0
        self._lock = threading.RLock()

    def _check_up(self) -> None:
        if self.down:
            raise StorageUnavailable("memory store is down", component="s3")

    def _upload(self, key: str, upload_id: str) -> _Upload:
        self._check_up()
        upload = self.uploads.get(upload_id)
        if upload is None or upload.key != key:
            raise NotFound(f"upload {upload_id} of {key}: not found (NoSuchUpload)")
        return upload

    # ObjectStore
    def put(self, key: str, data: bytes) -> None:
        self._check_up()
        with self._lock:
            self.objects[key] = bytes(data)

    def open(self, key: str, start: int = 0, length: int | None = None) -> ReadStream:
        self._check_up()
        with self._lock:
            if key not in self.objects:
                raise NotFound(f"read {key}: not found (NoSuchKey)")
            data = self.objects[key]
            self.gets += 1
        end = len(data) if length is None else start + length
        return io.BytesIO(data[start:end])

    def stat(self, key: str) -> ObjectInfo:
        self._check_up()
        with self._lock:
            if key not in self.objects:
                raise NotFound(f"stat {key}: not found (NoSuchKey)")
            data = self.objects[key]
        return ObjectInfo(key, len(data), _etag(data))

    def list(self, prefix: str, *, recursive: bool = True) -> Iterator[ObjectInfo]:
        self._check_up()
        with self._lock:
            keys = sorted(k for k in self.objects if k.startswith(prefix))
            sizes = {k: len(self.objects[k]) for k in keys}
        dirs: set[str] = set()
        for key in keys:
            rest = key[len(prefix) :]
            if not recursive and "/" in rest:
                sub = prefix + rest.split("/", 1)[0] + "/"
                if sub not in dirs:
                    dirs.add(sub)
                    yield ObjectInfo(sub, is_dir=True)
                continue
            yield ObjectInfo(key, sizes[key])

    def delete(self, keys: Iterable[str]) -> None:
        self._check_up()
        with self._lock:
            for key in keys:
                self.objects.pop(key, None)

    def _presign(self, method: HttpMethod, key: str, expires: timedelta, query: dict[str, str]) -> str:
        self._check_up()
        signed = urlencode({"method": method, "expires": int(expires.total_seconds()), **query})
        return f"memory://{self.bucket}/{quote(key)}?{signed}"

    def multipart(self, key: str, upload_id: str | None = None) -> Multipart:
        self._check_up()
        if upload_id is None:
            upload_id = uuid.uuid4().hex
            with self._lock:
                self.uploads[upload_id] = _Upload(key)
        return _MemoryMultipart(self, key, upload_id)

    def multiparts(self, prefix: str) -> Iterator[Multipart]:
        self._check_up()
        with self._lock:
            found = [(u.key, uid) for uid, u in self.uploads.items() if u.key.startswith(prefix)]
        for key, uid in sorted(found):
            yield _MemoryMultipart(self, key, uid)

    # Transport (the client side of presigned URLs)
    def _parse(self, url: str, method: str) -> tuple[str, dict[str, str]]:
        self._check_up()
        parts = urlsplit(url)
        if parts.scheme != "memory" or parts.netloc != self.bucket:
            raise InvalidInput(f"{url.split('?')[0]} is not a URL of this store", field="url")
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        if query.get("method") != method:
            raise InvalidInput(f"URL was signed for {query.get('method')}, not {method}", field="url")
        return unquote(parts.path.lstrip("/")), query

    def put_url(self, url: str, data: bytes) -> str:
        key, query = self._parse(url, "PUT")
        with self._lock:
            if "uploadId" in query:
                self._upload(key, query["uploadId"]).parts[int(query["partNumber"])] = bytes(data)
                self.part_puts += 1
            else:
                self.objects[key] = bytes(data)
                self.object_puts += 1
        return _etag(data)

    def get_url(self, url: str) -> ReadStream:
        key, _ = self._parse(url, "GET")
        return self.open(key)


class MemoryTransport:
    """``Transport`` for ``memory://`` URLs; ``fail_after`` PUTs it raises StorageUnavailable (a dropped link)."""

    def __init__(self, store: MemoryStore, *, fail_after: int | None = None) -> None:
        self.store = store
        self.fail_after = fail_after
        self.puts = 0
        self._lock = threading.Lock()

    def put(self, url: str, data: bytes) -> str:
        with self._lock:
            if self.fail_after is not None and self.puts >= self.fail_after:
                raise StorageUnavailable("connection dropped (test)", component="s3")
            self.puts += 1
        return self.store.put_url(url, data)

    def get(self, url: str) -> ReadStream:
        return self.store.get_url(url)
