"""Datasets against the real S3 server (JuiceFS gateway): push/pull, resume, corruption, concurrent staging,
the loader's split across ranks and workers, and a server that stops in the middle of an upload."""

from __future__ import annotations

import io
import multiprocessing
import os
import tarfile
import threading
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from haihe.cluster.procs import free_port
from haihe.cluster.s3 import S3Server
from haihe.datasets import layout
from haihe.datasets.hashing import IntegrityError
from haihe.datasets.loader import stream_dataset
from haihe.datasets.presigned import HttpTransport
from haihe.datasets.push import LocalBackend, pull, push
from haihe.datasets.stage import stage
from haihe.datasets.store import MinioStore, ReadStream
from haihe.datasets.upload import Uploads
from haihe.datasets.versions import committed_versions, delete_version, download_urls, read_manifest
from haihe.errors import NotFound, StorageUnavailable

pytestmark = pytest.mark.s3

MiB = 1024 * 1024
BUCKET = "haihe-datasets"


@pytest.fixture
def store(s3_server: S3Server) -> MinioStore:
    return MinioStore(s3_server.endpoint, s3_server.access_key, s3_server.secret_key, BUCKET)


@pytest.fixture
def org() -> str:
    return f"org-{uuid.uuid4().hex[:10]}"


def _tree(root: Path) -> Path:
    """~23 MB: two multipart files, small files, an empty one, nested directories."""
    sizes = {"big.bin": 12 * MiB + 123, "data/mid.bin": 6 * MiB, "data/small.txt": 1000, "data/deep/e/empty": 0}
    sizes |= {f"many/{i:03d}.json": 100 + i for i in range(40)}
    for name, size in sizes.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(size))
    return root


def _same_tree(a: Path, b: Path) -> None:
    files_a = sorted(p.relative_to(a).as_posix() for p in a.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(b).as_posix() for p in b.rglob("*") if p.is_file())
    assert files_a == files_b
    for name in files_a:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


class CountingTransport(HttpTransport):
    """HttpTransport that counts part PUTs and can run a hook (fail, stop the server) before the n-th one."""

    def __init__(self, before: Callable[[int], None] | None = None) -> None:
        super().__init__(retries=1)
        self.puts = 0
        self.before = before
        self._lock = threading.Lock()

    def put(self, url: str, data: bytes) -> str:
        with self._lock:
            self.puts += 1
            n = self.puts
        if self.before is not None:
            self.before(n)
        return super().put(url, data)

    def get(self, url: str) -> ReadStream:
        return super().get(url)


def test_push_then_pull_and_stage_are_byte_identical(store: MinioStore, org: str, tmp_path: Path) -> None:
    src = _tree(tmp_path / "src")
    uploads = Uploads(store, part_size=5 * MiB)
    m = push(src, LocalBackend(uploads, org, "photos", created_by="alice"), HttpTransport(), workers=4)
    assert committed_versions(store, org, "photos") == [m.version] == [1]
    assert m.total_size == sum(p.stat().st_size for p in src.rglob("*") if p.is_file())
    pulled = pull(read_manifest(store, org, "photos", 1), download_urls(store, m), tmp_path / "pulled", HttpTransport())
    _same_tree(src, pulled)
    staged = stage(store, org, "photos", 1, tmp_path / "cache")
    _same_tree(src, staged)
    assert delete_version(store, org, "photos", 1) == len(m.files)
    assert committed_versions(store, org, "photos") == []


def test_interrupted_upload_resumes_without_resending_and_stays_invisible(
    store: MinioStore, org: str, tmp_path: Path
) -> None:
    src = _tree(tmp_path / "src")
    uploads = Uploads(store, part_size=5 * MiB)
    backend = LocalBackend(uploads, org, "ds")

    def cut(n: int) -> None:
        if n > 20:
            raise StorageUnavailable("link cut (test)")

    first = CountingTransport(cut)
    with pytest.raises(StorageUnavailable) as err:
        push(src, backend, first, workers=2)
    session_id = err.value.details["session_id"]
    # nobody sees a partial version meanwhile
    assert committed_versions(store, org, "ds") == []
    with pytest.raises(NotFound):
        read_manifest(store, org, "ds", 1)
    session = uploads.get(org, "ds", session_id)
    arrived = sum(len(parts) for parts in uploads.received(session).values())
    assert 0 < arrived <= 20
    total_parts = sum(f.part_count for f in session.files)
    second = CountingTransport()
    m = push(src, backend, second, session_id=session_id, workers=3)
    assert second.puts == total_parts - arrived  # finished parts were not sent again
    assert m.version == 1
    _same_tree(src, stage(store, org, "ds", 1, tmp_path / "cache"))


def test_corrupted_object_fails_staging_with_the_file_name(store: MinioStore, org: str, tmp_path: Path) -> None:
    src = _tree(tmp_path / "src")
    push(src, LocalBackend(Uploads(store), org, "ds"), HttpTransport())
    key = layout.file_key(org, "ds", 1, "data/small.txt")
    original = (src / "data/small.txt").read_bytes()
    changed = bytes([original[0] ^ 1]) + original[1:]
    store.client.put_object(BUCKET, key, io.BytesIO(changed), len(changed))  # behind the platform's back
    with pytest.raises(IntegrityError) as err:
        stage(store, org, "ds", 1, tmp_path / "cache")
    assert "data/small.txt" in err.value.message and err.value.field == "data/small.txt"


def _stage_in_child(args: tuple[str, str, str, str, str, str]) -> tuple[str, int]:
    endpoint, access, secret, org, cache, _ = args
    totals: list[int] = []
    tree = stage(
        MinioStore(endpoint, access, secret, BUCKET),
        org,
        "ds",
        1,
        Path(cache),
        progress=lambda done, total: totals.append(total),
    )
    return str(tree), max(totals, default=0)


def test_concurrent_staging_by_several_processes(
    store: MinioStore, s3_server: S3Server, org: str, tmp_path: Path
) -> None:
    src = _tree(tmp_path / "src")
    push(src, LocalBackend(Uploads(store), org, "ds"), HttpTransport())
    cache = tmp_path / "cache"
    args = [(s3_server.endpoint, s3_server.access_key, s3_server.secret_key, org, str(cache), str(i)) for i in range(3)]
    with multiprocessing.get_context("spawn").Pool(3) as pool:
        results = pool.map(_stage_in_child, args)
    trees = {tree for tree, _ in results}
    assert len(trees) == 1
    downloaded = [total for _, total in results if total > 0]
    assert len(downloaded) == 1  # one rank downloaded; the others waited on the lock and reused its tree
    _same_tree(src, Path(trees.pop()))


def _tar_shard(shard: int, samples: int) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for i in range(samples):
            data = f"{shard}:{i}".encode() * 100
            info = tarfile.TarInfo(f"{shard:03d}/{i:04d}.txt")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_loader_splits_shards_over_two_ranks_and_two_workers(
    store: MinioStore, org: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from torch.utils.data import DataLoader

    src = tmp_path / "shards"
    src.mkdir()
    for s in range(11):
        (src / f"train-{s:03d}.tar").write_bytes(_tar_shard(s, 20))
    push(src, LocalBackend(Uploads(store), org, "web", data_format="webdataset"), HttpTransport())
    per_rank: list[list[str]] = []
    for rank in range(2):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        loader = DataLoader(stream_dataset(store, org, "web", 1, prefetch=2), batch_size=None, num_workers=2)
        per_rank.append([sample["__key__"] for sample in loader])
    everything = per_rank[0] + per_rank[1]
    assert len(everything) == len(set(everything)) == 11 * 20  # no overlap, no loss
    assert set(everything) == {f"{s:03d}/{i:04d}" for s in range(11) for i in range(20)}
    assert per_rank[0] and per_rank[1]


@pytest.mark.timeout(240)
def test_s3_server_stopped_mid_upload_is_storage_unavailable_then_resumes(tmp_path: Path, org: str) -> None:
    server = S3Server(tmp_path / "own-s3", free_port(), access_key="stopme", secret_key=uuid.uuid4().hex)
    server.start(timeout=120)
    try:
        server.ensure_buckets([BUCKET])
        store = MinioStore(server.endpoint, server.access_key, server.secret_key, BUCKET, retries=1)
        src = _tree(tmp_path / "src")
        uploads = Uploads(store, part_size=5 * MiB)
        backend = LocalBackend(uploads, org, "ds")

        def stop_at(n: int) -> None:
            if n == 6:
                server.stop()

        with pytest.raises(StorageUnavailable) as err:
            push(src, backend, CountingTransport(stop_at), workers=2)
        session_id = err.value.details["session_id"]
        with pytest.raises(StorageUnavailable):
            committed_versions(store, org, "ds")
        server.start(timeout=120)
        assert committed_versions(store, org, "ds") == []  # nothing committed
        m = push(src, backend, CountingTransport(), session_id=session_id)
        _same_tree(src, stage(store, org, "ds", m.version, tmp_path / "cache"))
    finally:
        server.stop()
