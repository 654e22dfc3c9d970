"""Stage a dataset version into a node-local cache: content-addressed blobs, a tree of hard links per version,
sha256 checked on every download, safe when several ranks of a job stage at once, evicted LRU beyond a size cap.

::

    <cache>/blobs/ab/abcdef…             one file per distinct sha256 (read-only)
    <cache>/trees/<org>/<ds>/v<N>/…      the version's files, hard links to the blobs
    <cache>/trees/<org>/<ds>/v<N>.json   its manifest: the tree's completion marker (its mtime = last use)
    <cache>/locks/…                      file locks: one per version, one for the cache index
    <cache>/incoming/…                   downloads in progress (verified, then moved into blobs/)

Ranks of one node share the cache: the first to take a version's lock downloads, the others wait on the lock and
then find the marker. Blobs are shared by versions, so a new version that changes one file downloads one file.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from haihe.datasets import layout
from haihe.datasets.hashing import IntegrityError, check_digest, download_verified, fill
from haihe.datasets.manifest import FileEntry, Manifest
from haihe.datasets.store import ObjectStore
from haihe.datasets.versions import latest_version, read_manifest
from haihe.errors import HaiheError

Progress = Callable[[int, int], None]  # (bytes done, bytes total)
RANGE_SIZE = 16 * 1024 * 1024  # below glibc's largest mmap threshold, so range buffers are reused, not re-faulted


@dataclass(frozen=True)
class CacheUsage:
    bytes: int
    blobs: int
    versions: int


class DatasetCache:
    """The node-local cache directory."""

    def __init__(
        self, root: Path, *, max_bytes: int | None = None, lock_timeout: float = 3600.0, range_size: int = RANGE_SIZE
    ) -> None:
        self.root = Path(root)
        self.max_bytes = max_bytes
        self.lock_timeout = lock_timeout
        self.range_size = range_size  # files larger than this may be fetched as parallel ranged GETs
        for sub in ("blobs", "trees", "locks", "incoming"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)

    def _lock(self, name: str) -> contextlib.AbstractContextManager[object]:
        from filelock import FileLock

        path = self.root / "locks" / f"{name}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        return FileLock(str(path), timeout=self.lock_timeout)

    def blob(self, sha256: str) -> Path:
        return self.root / "blobs" / sha256[:2] / sha256

    def tree(self, org: str, dataset: str, version: int) -> Path:
        return self.root / "trees" / org / dataset / f"v{version}"

    def marker(self, org: str, dataset: str, version: int) -> Path:
        return self.root / "trees" / org / dataset / f"v{version}.json"

    # -- staging --------------------------------------------------------------------------------------------
    def stage(
        self,
        store: ObjectStore,
        org: str,
        dataset: str,
        version: int | None = None,
        *,
        progress: Progress | None = None,
        workers: int = 8,
    ) -> Path:
        """Return a directory holding the version's files, downloading only blobs the cache lacks."""
        layout.dataset_prefix(org, dataset)
        number = latest_version(store, org, dataset) if version is None else layout.check_version(version)
        tree, marker = self.tree(org, dataset, number), self.marker(org, dataset, number)
        with self._lock(f"{org}/{dataset}/v{number}"):
            if marker.exists() and tree.is_dir():
                _touch(marker)
                if progress is not None:
                    progress(0, 0)
                return tree
            manifest = read_manifest(store, org, dataset, number)
            for _attempt in range(3):
                incoming = Path(tempfile.mkdtemp(dir=self.root / "incoming"))
                try:
                    self._fetch_missing(store, manifest, incoming, progress, workers)
                    with self._lock("index"):
                        # downloads join blobs/ only under the index lock, so eviction (which drops blobs no tree
                        # links) cannot remove one between its download and its link
                        for done in incoming.iterdir():
                            if not done.name.startswith("."):
                                blob = self.blob(done.name)
                                blob.parent.mkdir(parents=True, exist_ok=True)
                                os.replace(done, blob)
                        if any(not self.blob(e.sha256).exists() for e in manifest.files):
                            continue  # another job's eviction took a blob we meant to reuse: fetch it again
                        self._link_tree(manifest, tree)
                        marker.write_bytes(manifest.to_json())  # the tree is complete only once this exists
                        self._evict(keep=marker)
                        return tree
                finally:
                    shutil.rmtree(incoming, ignore_errors=True)
            raise HaiheError(f"{org}/{dataset} v{number}: the cache is evicting faster than it can stage")

    def _fetch_missing(
        self, store: ObjectStore, manifest: Manifest, incoming: Path, progress: Progress | None, workers: int
    ) -> None:
        """Download (and verify) every blob the cache lacks into ``incoming``."""
        wanted: dict[str, FileEntry] = {}
        for entry in manifest.files:
            if not self.blob(entry.sha256).exists():
                wanted.setdefault(entry.sha256, entry)
        total = sum(e.size for e in wanted.values())
        done = 0
        lock = threading.Lock()

        def count(n: int) -> None:
            nonlocal done
            if progress is None:
                return
            with lock:
                done += n
                progress(done, total)

        # fewer files than workers: split each large file into ranged GETs, so one big file is not limited to
        # the speed of one connection
        per_file = max(1, workers // max(1, len(wanted)))

        def fetch(entry: FileEntry) -> None:
            key = layout.file_key(manifest.org, manifest.dataset, manifest.version, entry.path)
            target = incoming / entry.sha256
            if per_file > 1 and entry.size > self.range_size:
                download_ranges(
                    store,
                    key,
                    target,
                    name=entry.path,
                    size=entry.size,
                    sha256=entry.sha256,
                    parallel=per_file,
                    range_size=self.range_size,
                    progress=count,
                )
            else:
                download_verified(
                    store.open(key), target, name=entry.path, size=entry.size, sha256=entry.sha256, progress=count
                )
            target.chmod(0o444)

        if progress is not None:
            progress(0, total)
        with ThreadPoolExecutor(workers) as pool:
            futures = [pool.submit(fetch, e) for e in wanted.values()]
            try:
                for future in futures:
                    future.result()
            except HaiheError:
                for f in futures:
                    f.cancel()
                raise

    def _link_tree(self, manifest: Manifest, tree: Path) -> None:
        """(Re)build the version's tree from blobs. Called under the index lock, so eviction cannot remove a blob
        between its download and its link."""
        if tree.exists():
            shutil.rmtree(tree)  # a tree without its marker is a leftover of a crash
        for entry in manifest.files:
            blob = self.blob(entry.sha256)
            if not blob.exists():
                raise HaiheError(f"{entry.path}: blob vanished from the cache during staging")
            dest = tree.joinpath(*entry.path.split("/"))
            dest.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(blob, dest)
            except OSError:  # a file system without hard links: copy
                shutil.copyfile(blob, dest)

    # -- size and eviction ----------------------------------------------------------------------------------
    def usage(self) -> CacheUsage:
        blobs = [p for p in (self.root / "blobs").glob("*/*") if p.is_file()]
        markers = list((self.root / "trees").glob("*/*/v*.json"))
        return CacheUsage(sum(p.stat().st_size for p in blobs), len(blobs), len(markers))

    def evict(self) -> CacheUsage:
        with self._lock("index"):
            self._evict(keep=None)
        return self.usage()

    def _evict(self, keep: Path | None) -> None:
        """Drop least-recently-used version trees (never ``keep``) until the blobs fit in ``max_bytes``; a blob
        goes when no tree links it any more."""
        if self.max_bytes is None:
            return
        markers = sorted(
            (m for m in (self.root / "trees").glob("*/*/v*.json") if m != keep), key=lambda m: m.stat().st_mtime
        )
        self._drop_unlinked_blobs()
        for marker in markers:
            if self.usage().bytes <= self.max_bytes:
                return
            marker.unlink()  # first the marker: a half-removed tree is never taken for a complete one
            shutil.rmtree(marker.with_suffix(""), ignore_errors=True)
            self._drop_unlinked_blobs()

    def _drop_unlinked_blobs(self) -> None:
        for blob in (self.root / "blobs").glob("*/*"):
            with contextlib.suppress(FileNotFoundError):
                if blob.stat().st_nlink <= 1:
                    blob.unlink()


def download_ranges(
    store: ObjectStore,
    key: str,
    dest: Path,
    *,
    name: str,
    size: int,
    sha256: str,
    parallel: int,
    range_size: int = RANGE_SIZE,
    progress: Callable[[int], None] | None = None,
) -> None:
    """Fetch one object as ``parallel`` concurrent ranged GETs written in place into a temporary file, hashing the
    ranges in order as they arrive (whichever thread completes the next range hashes it: no second pass over the
    file); ``dest`` appears only if size and sha256 match the manifest's."""
    actual = store.stat(key).size  # a range past the end would be an S3 error, not a clear size mismatch
    if actual != size:
        check_digest("", actual, name=name, size=size, sha256=sha256)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=".part-")
    tmp = Path(tmp_name)
    digest = hashlib.sha256()
    hashed = [0]  # bytes hashed so far: the offset of the next range to hash
    ready: dict[int, tuple[memoryview, bytearray]] = {}
    spare: list[bytearray] = []
    lock = threading.Lock()

    def one(start: int) -> None:
        length = min(range_size, size - start)
        with lock:
            buffer = spare.pop() if spare else bytearray(range_size)
        view = memoryview(buffer)[:length]
        stream = store.open(key, start, length)
        try:
            got = fill(stream, view)
        finally:
            stream.close()
        if got != length:
            raise IntegrityError(f"{name}: bytes {start}-{start + length} came back short ({got})", field=name)
        written = 0
        while written < length:
            written += os.pwrite(fd, view[written:], start + written)
        with lock:
            ready[start] = (view, buffer)
            while hashed[0] in ready:
                block, done = ready.pop(hashed[0])
                digest.update(block)
                hashed[0] += len(block)
                block.release()
                spare.append(done)
        if progress is not None:
            progress(length)

    try:
        with ThreadPoolExecutor(parallel) as pool:
            inflight: deque[Future[None]] = deque()
            try:
                for start in range(0, size, range_size):
                    if len(inflight) >= 2 * parallel:  # bounds the ranges waiting in memory for their turn to hash
                        inflight.popleft().result()
                    inflight.append(pool.submit(one, start))
                while inflight:
                    inflight.popleft().result()
            except BaseException:
                for future in inflight:
                    future.cancel()
                raise
        os.close(fd)
        fd = -1
        check_digest(digest.hexdigest(), hashed[0], name=name, size=size, sha256=sha256)
        os.replace(tmp, dest)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _touch(path: Path) -> None:
    with contextlib.suppress(OSError):
        os.utime(path)


def stage(
    store: ObjectStore,
    org: str,
    dataset: str,
    version: int | None,
    cache_dir: Path,
    progress: Progress | None = None,
    *,
    max_bytes: int | None = None,
    workers: int = 8,
    range_size: int = RANGE_SIZE,
) -> Path:
    """Stage ``org/dataset`` version ``version`` (None: the latest) under ``cache_dir``; return the tree's path."""
    cache = DatasetCache(Path(cache_dir), max_bytes=max_bytes, range_size=range_size)
    return cache.stage(store, org, dataset, version, progress=progress, workers=workers)
