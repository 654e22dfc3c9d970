"""Versioned upload against the in-memory store: commit marker, resume without re-sending, abort, conflicts."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import pytest

from haihe.datasets import layout
from haihe.datasets.memory import MemoryStore, MemoryTransport
from haihe.datasets.push import LocalBackend, pull, push, scan_directory
from haihe.datasets.upload import FileSpec, Uploads, plan_part_size
from haihe.datasets.versions import committed_versions, delete_version, download_urls, read_manifest
from haihe.errors import Conflict, InvalidInput, NotFound, StorageUnavailable

PART = 1024


def _setup() -> tuple[MemoryStore, Uploads]:
    store = MemoryStore(min_part_size=PART)
    return store, Uploads(store, part_size=PART, min_part_size=PART, workers=2)


def _tree(root: Path, sizes: dict[str, int], seed: int = 0) -> Path:
    for i, (name, size) in enumerate(sizes.items()):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(size) if seed == 0 else bytes((i + seed) % 256 for _ in range(size)))
    return root


SIZES = {"a.bin": 5 * PART + 17, "sub/b.txt": 100, "sub/deeper/c.bin": 3 * PART, "empty": 0}


def test_push_commits_a_version_with_the_right_manifest(tmp_path: Path) -> None:
    store, uploads = _setup()
    src = _tree(tmp_path / "src", SIZES)
    seen: list[tuple[int, int]] = []
    m = push(
        src,
        LocalBackend(uploads, "org1", "ds", created_by="alice", licence="MIT"),
        MemoryTransport(store),
        workers=3,
        progress=lambda done, total: seen.append((done, total)),
    )
    assert m.version == 1 and m.created_by == "alice" and m.licence == "MIT"
    assert {f.path: f.size for f in m.files} == SIZES
    for f in m.files:
        assert f.sha256 == hashlib.sha256((src / f.path).read_bytes()).hexdigest()
        assert store.objects[layout.file_key("org1", "ds", 1, f.path)] == (src / f.path).read_bytes()
    assert seen[-1] == (sum(SIZES.values()), sum(SIZES.values()))
    assert committed_versions(store, "org1", "ds") == [1]
    assert read_manifest(store, "org1", "ds", 1) == m
    assert uploads.sessions("org1", "ds") == []  # the session record is gone
    # a second push is version 2
    assert push(src, LocalBackend(uploads, "org1", "ds"), MemoryTransport(store)).version == 2


def test_pull_through_presigned_urls_is_byte_identical(tmp_path: Path) -> None:
    store, uploads = _setup()
    src = _tree(tmp_path / "src", SIZES)
    m = push(src, LocalBackend(uploads, "org1", "ds"), MemoryTransport(store))
    out = pull(m, download_urls(store, m), tmp_path / "out", MemoryTransport(store), workers=2)
    for name in SIZES:
        assert (out / name).read_bytes() == (src / name).read_bytes()


def test_interrupted_push_resumes_without_resending_and_is_invisible_meanwhile(tmp_path: Path) -> None:
    store, uploads = _setup()
    src = _tree(tmp_path / "src", SIZES)
    backend = LocalBackend(uploads, "org1", "ds")
    with pytest.raises(StorageUnavailable) as err:
        push(src, backend, MemoryTransport(store, fail_after=4), workers=1)
    session_id = err.value.details["session_id"]
    assert committed_versions(store, "org1", "ds") == []
    with pytest.raises(NotFound):
        read_manifest(store, "org1", "ds", 1)
    sent_before = store.part_puts + store.object_puts
    assert sent_before == 4
    push(src, backend, MemoryTransport(store), session_id=session_id, workers=2)
    total_parts = 6 + 1 + 3 + 1  # a.bin: 5 full parts + a tail; b.txt and empty: one PUT each; c.bin: 3 parts
    assert store.part_puts + store.object_puts == total_parts  # every part sent exactly once in all
    assert committed_versions(store, "org1", "ds") == [1]


def test_complete_refuses_missing_parts_and_names_the_file(tmp_path: Path) -> None:
    store, uploads = _setup()
    session = uploads.start("org1", "ds", [FileSpec(path="big", size=3 * PART), FileSpec(path="small", size=10)])
    targets = {t.path: t for t in uploads.targets(session)}
    store.put_url(targets["big"].parts[0].url, b"x" * PART)
    with pytest.raises(InvalidInput) as err:
        uploads.complete(session, {"big": "0" * 64, "small": "0" * 64})
    assert "big: 2 of 3 parts not uploaded" in err.value.message
    assert "small: not uploaded" in err.value.message
    assert committed_versions(store, "org1", "ds") == []


def test_complete_checks_sizes_and_hashes_given(tmp_path: Path) -> None:
    store, uploads = _setup()
    session = uploads.start("org1", "ds", [FileSpec(path="f", size=10, sha256="1" * 64)])
    store.put_url(uploads.targets(session)[0].parts[0].url, b"x" * 9)
    with pytest.raises(InvalidInput, match="9 bytes uploaded, 10 declared"):
        uploads.complete(session)
    with pytest.raises(InvalidInput, match="differs"):
        uploads.complete(session, {"f": "2" * 64})


def test_complete_is_idempotent_and_verify_hashes_catches_a_lie(tmp_path: Path) -> None:
    store, uploads = _setup()
    data = b"hello world"
    session = uploads.start("org1", "ds", [FileSpec(path="f", size=len(data))])
    store.put_url(uploads.targets(session)[0].parts[0].url, data)
    from haihe.datasets.hashing import IntegrityError

    with pytest.raises(IntegrityError, match="f: sha256"):
        uploads.complete(session, {"f": "3" * 64}, verify_hashes=True)
    good = hashlib.sha256(data).hexdigest()
    m = uploads.complete(session, {"f": good}, verify_hashes=True)
    assert uploads.complete(session, {"f": good}) == m


def test_abort_cleans_parts_objects_and_session() -> None:
    store, uploads = _setup()
    session = uploads.start("org1", "ds", [FileSpec(path="big", size=3 * PART), FileSpec(path="small", size=5)])
    targets = {t.path: t for t in uploads.targets(session)}
    store.put_url(targets["big"].parts[0].url, b"x" * PART)
    store.put_url(targets["small"].parts[0].url, b"12345")
    uploads.abort(session)
    assert store.objects == {} and store.uploads == {}
    with pytest.raises(NotFound):
        uploads.get("org1", "ds", session.id)


def test_committed_versions_are_immutable() -> None:
    store, uploads = _setup()
    session = uploads.start("org1", "ds", [FileSpec(path="f", size=1)])
    store.put_url(uploads.targets(session)[0].parts[0].url, b"x")
    uploads.complete(session, {"f": hashlib.sha256(b"x").hexdigest()})
    with pytest.raises(Conflict):
        uploads.start("org1", "ds", [FileSpec(path="f", size=1)], version=1)
    with pytest.raises(Conflict):
        uploads.abort(session)


def test_concurrent_starts_get_distinct_versions() -> None:
    _, uploads = _setup()
    versions: list[int] = []
    lock = threading.Lock()

    def one() -> None:
        v = uploads.start("org1", "ds", [FileSpec(path="f", size=1)]).version
        with lock:
            versions.append(v)

    threads = [threading.Thread(target=one) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(versions) == [1, 2, 3, 4, 5, 6]


def test_bad_file_specs_are_refused_naming_the_field() -> None:
    _, uploads = _setup()
    with pytest.raises(InvalidInput) as err:
        uploads.start("org1", "ds", [FileSpec(path="ok", size=1), FileSpec(path="../../etc/passwd", size=1)])
    assert err.value.field == "files[1].path"
    with pytest.raises(InvalidInput) as err:
        uploads.start("org1", "ds", [FileSpec(path="x", size=1), FileSpec(path="x", size=2)])
    assert "twice" in err.value.message
    with pytest.raises(InvalidInput) as err:
        uploads.start("org1", "Bad/Name", [FileSpec(path="x", size=1)])
    assert err.value.field == "dataset"


def test_storage_down_is_storage_unavailable_and_nothing_commits(tmp_path: Path) -> None:
    store, uploads = _setup()
    src = _tree(tmp_path / "src", {"f": 10})
    store.down = True
    with pytest.raises(StorageUnavailable):
        push(src, LocalBackend(uploads, "org1", "ds"), MemoryTransport(store))
    store.down = False
    assert committed_versions(store, "org1", "ds") == []


def test_delete_version_removes_everything_manifest_first(tmp_path: Path) -> None:
    store, uploads = _setup()
    src = _tree(tmp_path / "src", SIZES)
    push(src, LocalBackend(uploads, "org1", "ds"), MemoryTransport(store))
    push(src, LocalBackend(uploads, "org1", "ds"), MemoryTransport(store))
    store.multipart(layout.file_key("org1", "ds", 1, "stray"))  # an orphaned upload under the prefix
    assert delete_version(store, "org1", "ds", 1) == len(SIZES)
    assert committed_versions(store, "org1", "ds") == [2]
    assert not [k for k in store.objects if k.startswith("org1/ds/v1/")]
    assert store.uploads == {}


def test_part_size_grows_for_huge_files() -> None:
    assert plan_part_size(10, 16 << 20) == 16 << 20
    big = plan_part_size(1 << 40, 16 << 20)
    assert big % (1 << 20) == 0 and (1 << 40) / big <= 10_000


def test_scan_refuses_unsafe_local_names(tmp_path: Path) -> None:
    (tmp_path / "a\\b").write_text("x")
    with pytest.raises(InvalidInput, match="backslash"):
        scan_directory(tmp_path)


def test_version_metadata_goes_from_start_into_the_manifest() -> None:
    store, uploads = _setup()
    session = uploads.start("org1", "ds", [FileSpec(path="f", size=3)], created_by="bob", description="d",
                            licence="CC-BY", data_format="raw", schema_hint={"cols": 2})
    store.put(layout.file_key("org1", "ds", session.version, "f"), b"abc")
    m = uploads.complete(session, {"f": hashlib.sha256(b"abc").hexdigest()})
    assert (m.created_by, m.description, m.licence, m.data_format, m.schema_hint) == ("bob", "d", "CC-BY", "raw",
                                                                                        {"cols": 2})
    bare = uploads.start("org1", "ds", [FileSpec(path="f", size=1)], schema_hint=None)
    assert (bare.created_by, bare.licence, bare.schema_hint) == ("", "", {})
    with pytest.raises(TypeError, match="licens"):
        uploads.start("org1", "ds", [FileSpec(path="f", size=1)], licens="MIT")  # type: ignore[call-arg]


def test_a_part_url_names_its_upload_and_part_one_by_default() -> None:
    from datetime import timedelta

    store = MemoryStore()
    url = store.presign("PUT", "k", expires=timedelta(seconds=60), upload_id="u1")
    assert url == "memory://datasets/k?method=PUT&expires=60&uploadId=u1&partNumber=1"
    assert store.presign("GET", "k", expires=timedelta(seconds=60)) == "memory://datasets/k?method=GET&expires=60"
