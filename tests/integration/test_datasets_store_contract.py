"""One contract for every ObjectStore: the in-memory fake and MinIO-client-over-the-real-S3-server agree."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta

import pytest

from haihe.datasets.memory import MemoryStore, MemoryTransport
from haihe.datasets.presigned import HttpTransport, Transport
from haihe.datasets.store import MinioStore, ObjectStore, PartInfo, read_all
from haihe.errors import NotFound

MiB = 1024 * 1024


@pytest.fixture(params=["memory", pytest.param("minio", marks=pytest.mark.s3)])
def store_and_transport(request: pytest.FixtureRequest) -> Iterator[tuple[ObjectStore, Transport, str]]:
    prefix = f"contract-{uuid.uuid4().hex[:10]}/"
    if request.param == "memory":
        store: ObjectStore = MemoryStore()
        transport: Transport = MemoryTransport(store)  # type: ignore[arg-type]
    else:
        s3 = request.getfixturevalue("s3_server")
        store = MinioStore(s3.endpoint, s3.access_key, s3.secret_key, "haihe-datasets")
        transport = HttpTransport()
    yield store, transport, prefix
    store.delete([i.key for i in store.list(prefix)])


def test_put_open_stat_list_delete(store_and_transport: tuple[ObjectStore, Transport, str]) -> None:
    store, _, p = store_and_transport
    store.put(p + "a/1", b"one")
    store.put(p + "a/2", b"two!")
    store.put(p + "b", b"")
    assert read_all(store, p + "a/2") == b"two!"
    stream = store.open(p + "a/2", start=1, length=2)
    assert stream.read() == b"wo"
    stream.close()
    assert store.stat(p + "a/2").size == 4
    assert [i.key for i in store.list(p)] == [p + "a/1", p + "a/2", p + "b"]
    top = list(store.list(p, recursive=False))
    assert sorted((i.key, i.is_dir) for i in top) == [(p + "a/", True), (p + "b", False)]
    store.delete([p + "a/1", p + "missing"])
    with pytest.raises(NotFound):
        store.stat(p + "a/1")
    with pytest.raises(NotFound):
        store.open(p + "a/1")


def test_multipart_through_presigned_urls(store_and_transport: tuple[ObjectStore, Transport, str]) -> None:
    store, transport, p = store_and_transport
    key = p + "big.bin"
    upload = store.multipart(key)
    first, last = b"a" * (5 * MiB), b"tail"
    etag2 = transport.put(
        store.presign("PUT", key, expires=timedelta(minutes=5), upload_id=upload.upload_id, part_number=2), last
    )
    again = store.multipart(key, upload.upload_id)
    assert [(x.number, x.size) for x in again.parts()] == [(2, 4)]
    transport.put(
        store.presign("PUT", key, expires=timedelta(minutes=5), upload_id=upload.upload_id, part_number=1), first
    )
    parts = again.parts()
    assert [(x.number, x.size) for x in parts] == [(1, 5 * MiB), (2, 4)]
    assert parts[1].etag == etag2
    assert [u.upload_id for u in store.multiparts(p)] == [upload.upload_id]
    with pytest.raises(NotFound):
        store.stat(key)  # nothing visible before completion
    again.complete(parts)
    assert read_all(store, key) == first + last
    assert list(store.multiparts(p)) == []
    with pytest.raises(NotFound):
        again.parts()


def test_abort_and_presigned_get_put(store_and_transport: tuple[ObjectStore, Transport, str]) -> None:
    store, transport, p = store_and_transport
    upload = store.multipart(p + "x")
    transport.put(
        store.presign("PUT", p + "x", expires=timedelta(minutes=5), upload_id=upload.upload_id, part_number=1), b"123"
    )
    upload.abort()
    assert list(store.multiparts(p)) == []
    with pytest.raises(NotFound):
        store.multipart(p + "x", upload.upload_id).parts()
    transport.put(store.presign("PUT", p + "small", expires=timedelta(minutes=5)), b"hello")
    stream = transport.get(store.presign("GET", p + "small", expires=timedelta(minutes=5)))
    assert stream.read() == b"hello"
    stream.close()
    with pytest.raises(NotFound):
        transport.get(store.presign("GET", p + "nope", expires=timedelta(minutes=5)))
    assert PartInfo(1, 3, "e") == PartInfo(1, 3, "e")
