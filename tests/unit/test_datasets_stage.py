"""Staging into the node-local cache: hash checks, reuse, shared blobs, eviction, concurrent stagers."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import pytest

from haihe.datasets import layout
from haihe.datasets.hashing import IntegrityError
from haihe.datasets.memory import MemoryStore
from haihe.datasets.stage import DatasetCache, stage
from haihe.datasets.upload import FileSpec, Uploads
from haihe.errors import NotFound, StorageUnavailable


def _commit(store: MemoryStore, dataset: str, files: dict[str, bytes]) -> int:
    uploads = Uploads(store, part_size=1 << 20, min_part_size=1 << 20)
    session = uploads.start("org1", dataset, [FileSpec(path=p, size=len(d)) for p, d in files.items()])
    for target in uploads.targets(session):
        for part in target.parts:
            store.put_url(part.url, files[target.path][part.offset : part.offset + part.size])
    hashes = {p: hashlib.sha256(d).hexdigest() for p, d in files.items()}
    return uploads.complete(session, hashes).version


FILES = {"a.txt": b"alpha" * 100, "d/b.bin": bytes(range(256)) * 40, "d/e/c": b"", "dup": b"alpha" * 100}


def test_stage_downloads_verifies_and_reuses(tmp_path: Path) -> None:
    store = MemoryStore()
    v = _commit(store, "ds", FILES)
    seen: list[tuple[int, int]] = []
    tree = stage(store, "org1", "ds", v, tmp_path, progress=lambda d, t: seen.append((d, t)))
    for path, data in FILES.items():
        assert (tree / path).read_bytes() == data
    gets = store.gets
    assert seen[-1][0] == seen[-1][1]
    assert stage(store, "org1", "ds", v, tmp_path) == tree
    assert store.gets == gets  # second stage: nothing downloaded
    store.down = True
    assert stage(store, "org1", "ds", v, tmp_path) == tree  # staged versions work without the store
    assert DatasetCache(tmp_path).usage().blobs == 3  # 'dup' shares a.txt's blob


def test_latest_version_and_shared_blobs(tmp_path: Path) -> None:
    store = MemoryStore()
    _commit(store, "ds", FILES)
    v2 = _commit(store, "ds", {**FILES, "a.txt": b"changed"})
    gets = store.gets
    stage(store, "org1", "ds", 1, tmp_path)
    gets_v1 = store.gets - gets
    tree = stage(store, "org1", "ds", None, tmp_path)
    assert tree.name == f"v{v2}" and (tree / "a.txt").read_bytes() == b"changed"
    assert store.gets - gets - gets_v1 == 2  # v2's manifest and the one changed file


def test_corrupted_object_fails_loudly_naming_the_file(tmp_path: Path) -> None:
    store = MemoryStore()
    v = _commit(store, "ds", FILES)
    key = layout.file_key("org1", "ds", v, "d/b.bin")
    store.objects[key] = b"X" + store.objects[key][1:]
    with pytest.raises(IntegrityError) as err:
        stage(store, "org1", "ds", v, tmp_path)
    assert err.value.field == "d/b.bin" and "d/b.bin" in err.value.message
    cache = DatasetCache(tmp_path)
    assert not cache.marker("org1", "ds", v).exists()
    assert not list((tmp_path / "incoming").iterdir())
    assert not cache.blob(hashlib.sha256(FILES["d/b.bin"]).hexdigest()).exists()


def test_missing_version_and_storage_down(tmp_path: Path) -> None:
    store = MemoryStore()
    with pytest.raises(NotFound):
        stage(store, "org1", "ds", 1, tmp_path)
    _commit(store, "ds", FILES)
    store.down = True
    with pytest.raises(StorageUnavailable):
        stage(store, "org1", "ds", 1, tmp_path)


def test_eviction_drops_least_recently_used_versions(tmp_path: Path) -> None:
    store = MemoryStore()
    blob = 10_000
    versions = [_commit(store, f"ds{i}", {"f": bytes([i]) * blob}) for i in range(3)]
    assert versions == [1, 1, 1]
    cache = DatasetCache(tmp_path, max_bytes=2 * blob)
    cache.stage(store, "org1", "ds0", 1)
    cache.stage(store, "org1", "ds1", 1)
    cache.stage(store, "org1", "ds0", 1)  # ds0 used more recently than ds1 (mtime resolution permitting)
    import os

    os.utime(cache.marker("org1", "ds1", 1), (1, 1))
    cache.stage(store, "org1", "ds2", 1)
    assert cache.usage().bytes <= 2 * blob
    assert cache.marker("org1", "ds0", 1).exists() and cache.marker("org1", "ds2", 1).exists()
    assert not cache.marker("org1", "ds1", 1).exists() and not cache.tree("org1", "ds1", 1).exists()


def test_concurrent_stagers_of_one_version_download_once(tmp_path: Path) -> None:
    store = MemoryStore()
    v = _commit(store, "ds", FILES)
    gets = store.gets
    trees: list[Path] = []
    errors: list[BaseException] = []

    def one() -> None:
        try:
            trees.append(stage(store, "org1", "ds", v, tmp_path))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(set(trees)) == 1
    assert store.gets - gets == 1 + 3  # one manifest read, three distinct blobs
