"""The streaming loader: disjoint, complete split across ranks x workers; tar/parquet/raw decoding; hash checks."""

from __future__ import annotations

import hashlib
import io
import tarfile

import pytest
from hypothesis import given
from hypothesis import strategies as st

from haihe.datasets import layout
from haihe.datasets.hashing import IntegrityError
from haihe.datasets.loader import Shard, ShardReader, assign, decode_tar, stream_dataset
from haihe.datasets.memory import MemoryStore
from haihe.datasets.upload import FileSpec, Uploads
from haihe.datasets.versions import read_manifest


def _commit(store: MemoryStore, files: dict[str, bytes], dataset: str = "ds") -> int:
    uploads = Uploads(store, part_size=1 << 20, min_part_size=1 << 20)
    session = uploads.start("org1", dataset, [FileSpec(path=p, size=len(d)) for p, d in files.items()])
    for target in uploads.targets(session):
        for part in target.parts:
            store.put_url(part.url, files[target.path][part.offset : part.offset + part.size])
    return uploads.complete(session, {p: hashlib.sha256(d).hexdigest() for p, d in files.items()}).version


def _tar(samples: list[tuple[str, dict[str, bytes]]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for key, fields in samples:
            for ext, data in fields.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _shard_files(n_shards: int, per_shard: int) -> dict[str, bytes]:
    return {
        f"shards/train-{s:04d}.tar": _tar(
            [(f"s{s}/{i:05d}", {"txt": f"{s}-{i}".encode(), "cls": str(i % 3).encode()}) for i in range(per_shard)]
        )
        for s in range(n_shards)
    }


@given(n=st.integers(0, 60), world=st.integers(1, 5), workers=st.integers(1, 4))
def test_assign_is_disjoint_and_complete(n: int, world: int, workers: int) -> None:
    shards = [Shard(f"s{i}", f"k{i}", 1, "0" * 64) for i in range(n)]
    got = [s.path for r in range(world) for w in range(workers) for s in assign(shards, r, world, w, workers)]
    assert sorted(got) == sorted(s.path for s in shards)
    assert len(got) == len(set(got))
    assert [s.path for s in assign(shards, 1 % world, world, 0, workers)] == [
        s.path for i, s in enumerate(shards) if i % (world * workers) == (1 % world) * workers
    ]


def test_tar_samples_group_by_key() -> None:
    data = _tar([("a/x", {"jpg": b"1", "cls": b"0"}), ("a/y", {"jpg": b"2", "meta.json": b"{}"})])
    samples = list(decode_tar("t.tar", data))
    assert [s["__key__"] for s in samples] == ["a/x", "a/y"]
    assert samples[1]["meta.json"] == b"{}" and samples[0]["jpg"] == b"1"


def test_reader_over_ranks_and_workers_sees_every_sample_once() -> None:
    store = MemoryStore()
    files = _shard_files(7, 5)
    files["README.md"] = b"not a shard"
    v = _commit(store, files)
    manifest = read_manifest(store, "org1", "ds", v)
    keys = []
    for rank in range(2):
        reader = ShardReader(store, manifest, suffixes=[".tar"], prefetch=3, rank=rank, world_size=2, shuffle=True)
        reader.set_epoch(4)
        for worker in range(2):
            keys += [s["__key__"] for s in reader.samples(reader.shards_for(*reader.rank_world(), worker, 2))]
    assert sorted(keys) == sorted(f"s{s}/{i:05d}" for s in range(7) for i in range(5))


def test_corrupted_shard_fails_naming_it() -> None:
    store = MemoryStore()
    v = _commit(store, _shard_files(2, 3))
    key = layout.file_key("org1", "ds", v, "shards/train-0001.tar")
    store.objects[key] = store.objects[key][:-1] + b"!"
    reader = ShardReader(store, read_manifest(store, "org1", "ds", v))
    with pytest.raises(IntegrityError, match=r"shards/train-0001\.tar"):
        list(reader.samples(reader.shards))


def test_parquet_and_raw_shards() -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(pa.table({"x": list(range(10)), "y": [str(i) for i in range(10)]}), buf)
    store = MemoryStore()
    v = _commit(store, {"p/0.parquet": buf.getvalue(), "raw/blob.bin": b"raw bytes"})
    reader = ShardReader(store, read_manifest(store, "org1", "ds", v), parquet_batch_rows=3)
    samples = list(reader.samples(reader.shards))
    assert [s["x"] for s in samples[:10]] == list(range(10))
    assert samples[10] == {"__key__": "raw/blob.bin", "data": b"raw bytes"}


def test_torch_dataloader_with_workers_splits_without_overlap(monkeypatch: pytest.MonkeyPatch) -> None:
    from torch.utils.data import DataLoader

    store = MemoryStore()
    v = _commit(store, _shard_files(9, 4))
    keys = []
    for rank in range(2):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        ds = stream_dataset(store, "org1", "ds", v, suffixes=[".tar"])
        loader = DataLoader(ds, batch_size=None, num_workers=2)
        keys += [sample["__key__"] for sample in loader]
    assert sorted(keys) == sorted(f"s{s}/{i:05d}" for s in range(9) for i in range(4))
