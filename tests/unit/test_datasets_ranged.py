"""Parallel ranged GETs (stage of a large file, loader of a large shard) and the reused-buffer read paths: the
bytes come back identical, and a corrupted, truncated or extended object fails naming its file."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from pathlib import Path

import pytest

from haihe.datasets import layout
from haihe.datasets.hashing import IntegrityError
from haihe.datasets.loader import ShardReader, decode_tar
from haihe.datasets.memory import MemoryStore
from haihe.datasets.stage import DatasetCache, download_ranges
from haihe.datasets.upload import FileSpec, Uploads
from haihe.datasets.versions import read_manifest

KiB = 1024


def _commit(store: MemoryStore, files: dict[str, bytes]) -> int:
    uploads = Uploads(store, part_size=1 << 20, min_part_size=1 << 20)
    session = uploads.start("org1", "ds", [FileSpec(path=p, size=len(d)) for p, d in files.items()])
    for target in uploads.targets(session):
        for part in target.parts:
            store.put_url(part.url, files[target.path][part.offset : part.offset + part.size])
    return uploads.complete(session, {p: hashlib.sha256(d).hexdigest() for p, d in files.items()}).version


def _tar(n: int, size: int) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for i in range(n):
            data = os.urandom(size)
            info = tarfile.TarInfo(f"d/{i:04d}.bin")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.mark.parametrize("size", [0, 1, 64 * KiB - 1, 64 * KiB, 64 * KiB + 1, 1000 * KiB + 7])
def test_download_ranges_writes_the_exact_bytes(tmp_path: Path, size: int) -> None:
    store = MemoryStore()
    data = os.urandom(size)
    store.put("k", data)
    dest = tmp_path / "out" / "f"
    download_ranges(store, "k", dest, name="f", size=size, sha256=hashlib.sha256(data).hexdigest(), parallel=3,
                    range_size=64 * KiB)
    assert dest.read_bytes() == data
    assert [p.name for p in dest.parent.iterdir()] == ["f"]  # no temporary file left


@pytest.mark.parametrize("change", ["flip", "truncate", "extend"])
def test_download_ranges_refuses_changed_bytes_naming_the_file(tmp_path: Path, change: str) -> None:
    store = MemoryStore()
    data = os.urandom(300 * KiB)
    digest = hashlib.sha256(data).hexdigest()
    store.put("k", {"flip": data[:150 * KiB] + b"!" + data[150 * KiB + 1 :], "truncate": data[:-1],
                    "extend": data + b"x"}[change])
    with pytest.raises(IntegrityError, match=r"big/file\.bin"):
        download_ranges(store, "k", tmp_path / "f", name="big/file.bin", size=len(data), sha256=digest, parallel=4,
                        range_size=64 * KiB)
    assert list(tmp_path.iterdir()) == []


def test_stage_splits_a_large_file_into_ranges_and_verifies_it(tmp_path: Path) -> None:
    store = MemoryStore()
    files = {"big.bin": os.urandom(900 * KiB + 5), "small.txt": b"hello"}  # one part: below part_size
    v = _commit(store, files)
    gets = store.gets
    tree = DatasetCache(tmp_path / "c", range_size=128 * KiB).stage(store, "org1", "ds", v, workers=8)
    assert {p: (tree / p).read_bytes() for p in files} == files
    assert store.gets - gets > len(files) + 1  # the big file came in several ranged GETs
    key = layout.file_key("org1", "ds", v, "big.bin")
    store.objects[key] = store.objects[key][:-3] + b"!!!"
    with pytest.raises(IntegrityError, match=r"big\.bin"):
        DatasetCache(tmp_path / "c2", range_size=128 * KiB).stage(store, "org1", "ds", v, workers=8)


@pytest.mark.parametrize("range_size", [0, 100 * KiB])
def test_loader_with_and_without_ranges_yields_every_sample_and_checks_hashes(range_size: int) -> None:
    store = MemoryStore()
    files = {f"s/{i}.tar": _tar(7, 50 * KiB + i) for i in range(5)}
    v = _commit(store, files)
    reader = ShardReader(store, read_manifest(store, "org1", "ds", v), prefetch=2, range_size=range_size)
    got = [(s["__shard__"], s["__key__"], s["bin"]) for s in reader.samples(reader.shards)]
    want = [(p, f"d/{i:04d}", sample["bin"]) for p, data in files.items() for i, sample in
            enumerate(decode_tar(p, data))]
    assert got == want and len(got) == 35
    for change in (lambda d: d[:-1] + b"!", lambda d: d[:-1], lambda d: d + b"\0"):
        key = layout.file_key("org1", "ds", v, "s/3.tar")
        store.objects[key] = change(files["s/3.tar"])
        with pytest.raises(IntegrityError, match=r"s/3\.tar"):
            list(reader.samples(reader.shards))
