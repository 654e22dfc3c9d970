"""Stream a version's shards straight from S3 into a PyTorch ``IterableDataset``: prefetched by a thread pool,
sha256-checked, decoded (WebDataset-style tar, parquet or raw files), and split so that every global worker of a
job gets different shards: shard ``i`` goes to global worker ``i % (world_size * num_workers)``, where the global
worker of DataLoader worker ``w`` on rank ``r`` is ``r * num_workers + w``.

``ShardReader`` holds the logic and does not import torch (unit-testable, usable without torch);
``stream_dataset`` wraps it in a torch ``IterableDataset``, importing torch only when called.
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
import random
import tarfile
import threading
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import IO, Any, Literal, cast

from haihe.datasets import layout
from haihe.datasets.hashing import IntegrityError, check_digest, drain, fill
from haihe.datasets.manifest import Manifest
from haihe.datasets.store import ObjectStore
from haihe.datasets.versions import latest_version, read_manifest
from haihe.errors import InvalidInput

ShardFormat = Literal["auto", "tar", "parquet", "raw"]
Sample = dict[str, Any]


@dataclass(frozen=True)
class Shard:
    path: str
    key: str
    size: int
    sha256: str


def assign(shards: Sequence[Shard], rank: int, world_size: int, worker: int, num_workers: int) -> list[Shard]:
    """The shards of one global worker: every ``world_size * num_workers``-th, starting at its global index."""
    if not (0 <= rank < world_size and 0 <= worker < num_workers):
        raise InvalidInput(f"rank {rank}/{world_size}, worker {worker}/{num_workers} out of range", field="rank")
    return list(shards[rank * num_workers + worker :: world_size * num_workers])


def env_rank_world() -> tuple[int, int]:
    """(rank, world size) from torch.distributed when it is initialised, else from RANK/WORLD_SIZE, else (0, 1)."""
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
    except ImportError:
        pass
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


class ShardReader:
    """The shards of one version and how to read them; picklable, so DataLoader workers can be spawned."""

    def __init__(
        self,
        store: ObjectStore,
        manifest: Manifest,
        *,
        suffixes: Sequence[str] | None = None,
        shard_format: ShardFormat = "auto",
        prefetch: int = 2,
        shuffle: bool = False,
        seed: int = 0,
        verify: bool = True,
        rank: int | None = None,
        world_size: int | None = None,
        parquet_batch_rows: int = 1024,
        range_size: int = 128 * 1024 * 1024,
        range_workers: int = 4,
    ) -> None:
        self.store = store
        self.manifest = manifest
        self.shard_format = shard_format
        self.prefetch = max(1, prefetch)
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0
        self.verify = verify
        self.rank = rank
        self.world_size = world_size
        self.parquet_batch_rows = parquet_batch_rows
        # a shard larger than this is fetched as parallel ranged GETs of at most this size (0: never). On a
        # loopback S3 the CPU is the limit and ranges only add requests; on a network one connection often is.
        self.range_size = range_size
        self.range_workers = range_workers
        chosen = [e for e in manifest.files if suffixes is None or any(e.path.endswith(s) for s in suffixes)]
        self.shards = [
            Shard(e.path, layout.file_key(manifest.org, manifest.dataset, manifest.version, e.path), e.size, e.sha256)
            for e in chosen
        ]

    def set_epoch(self, epoch: int) -> None:
        """Change the shuffle order (the same on every rank, so the split stays disjoint)."""
        self.epoch = epoch

    def ordered(self) -> list[Shard]:
        shards = list(self.shards)
        if self.shuffle:
            random.Random(self.seed * 1_000_003 + self.epoch).shuffle(shards)  # noqa: S311 - an order, not a secret
        return shards

    def rank_world(self) -> tuple[int, int]:
        if self.rank is not None and self.world_size is not None:
            return self.rank, self.world_size
        return env_rank_world()

    def shards_for(self, rank: int, world_size: int, worker: int = 0, num_workers: int = 1) -> list[Shard]:
        return assign(self.ordered(), rank, world_size, worker, num_workers)

    def fetch(self, shard: Shard) -> bytes:
        """The whole shard as bytes, checked against the manifest."""
        return bytes(self.fetch_into(shard, bytearray(shard.size), None))

    def fetch_into(self, shard: Shard, buffer: bytearray, ranges: ThreadPoolExecutor | None) -> memoryview:
        """Read the shard into ``buffer`` (reused across shards: a fresh 100 MB allocation per shard costs more CPU
        in page faults than the copy itself) and check its size and sha256; the view of its bytes.

        With ``ranges`` and a shard larger than ``range_size``, its byte ranges are fetched in parallel, so one big
        shard is not limited to one connection's speed. Runs in a prefetch thread: recv and sha256 release the GIL."""
        view = memoryview(buffer)[: shard.size]
        digest = hashlib.sha256() if self.verify else None
        if ranges is not None and self.range_size and shard.size > self.range_size:
            got = self.store.stat(shard.key).size  # a range past the end would be an S3 error, not a size mismatch
            if got == shard.size:
                step = -(-shard.size // -(-shard.size // self.range_size))  # equal ranges, none of them tiny
                spans = [(o, min(step, shard.size - o)) for o in range(0, shard.size, step)]
                list(ranges.map(lambda span: self._read_range(shard, view, *span), spans))  # each checks its length
                if digest is not None:
                    digest.update(view)  # ranges arrive out of order: one pass once all are in
        else:
            stream = self.store.open(shard.key)
            try:
                got = fill(stream, view, digest)  # hashed chunk by chunk as it arrives, while in the CPU cache
                if got == shard.size:
                    got += drain(stream)  # an object longer than the manifest says is corrupted too
            finally:
                stream.close()
        if got != shard.size:
            check_digest("", got, name=shard.path, size=shard.size, sha256=shard.sha256)
        if digest is not None:
            check_digest(digest.hexdigest(), got, name=shard.path, size=shard.size, sha256=shard.sha256)
        return view

    def _read_range(self, shard: Shard, view: memoryview, start: int, length: int) -> int:
        stream = self.store.open(shard.key, start, length)
        try:
            got = fill(stream, view[start : start + length])
        finally:
            stream.close()
        if got != length:
            raise IntegrityError(
                f"{shard.path}: bytes {start}-{start + length} came back short ({got})", field=shard.path
            )
        return got

    def samples(self, shards: Sequence[Shard]) -> Iterator[Sample]:
        """Decode ``shards`` in order while the next ``prefetch`` ones download in the background.

        Each shard lands in one of ``prefetch + 1`` reused buffers; a buffer goes back to the pool once every
        sample of its shard has been yielded (samples are copies, never views of it)."""
        if not shards:
            return
        free: list[bytearray] = []
        lock = threading.Lock()

        def fetch(shard: Shard) -> tuple[memoryview, bytearray]:
            with lock:
                buffer = free.pop() if free else bytearray(0)
            if len(buffer) < shard.size:
                buffer = bytearray(shard.size)
            return self.fetch_into(shard, buffer, ranges), buffer

        parallel = max(1, self.range_workers)
        with ThreadPoolExecutor(self.prefetch) as pool, ThreadPoolExecutor(parallel) as ranges:
            queue: deque[tuple[Shard, Future[tuple[memoryview, bytearray]]]] = deque()
            upcoming = iter(shards)
            for shard in upcoming:
                queue.append((shard, pool.submit(fetch, shard)))
                if len(queue) >= self.prefetch:
                    break
            try:
                while queue:
                    shard, future = queue.popleft()
                    view, buffer = future.result()
                    nxt = next(upcoming, None)
                    if nxt is not None:
                        queue.append((nxt, pool.submit(fetch, nxt)))
                    try:
                        yield from self.decode(shard, view)
                    finally:
                        view.release()
                        with lock:
                            free.append(buffer)
            finally:
                for _, pending in queue:
                    pending.cancel()

    def decode(self, shard: Shard, data: bytes | bytearray | memoryview) -> Iterator[Sample]:
        kind = self.shard_format
        if kind == "auto":
            kind = "tar" if shard.path.endswith(".tar") else "parquet" if shard.path.endswith(".parquet") else "raw"
        if kind == "tar":
            yield from decode_tar(shard.path, data)
        elif kind == "parquet":
            yield from decode_parquet(bytes(data), self.parquet_batch_rows)
        else:
            yield {"__key__": shard.path, "data": bytes(data)}


class _ViewFile:
    """A read-only, seekable file over a memoryview, so ``tarfile`` reads headers without copying the shard."""

    def __init__(self, view: memoryview) -> None:
        self._view = view
        self._pos = 0

    def read(self, n: int = -1) -> bytes:
        end = len(self._view) if n < 0 else min(len(self._view), self._pos + n)
        data = bytes(self._view[self._pos : end])
        self._pos = max(self._pos, end)
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: len(self._view)}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def tell(self) -> int:
        return self._pos


def decode_tar(name: str, data: bytes | bytearray | memoryview) -> Iterator[Sample]:
    """WebDataset convention: consecutive members ``dir/key.ext`` with the same ``dir/key`` form one sample,
    ``{"__key__": "dir/key", "ext": bytes, ...}`` (the extension is everything after the first dot).

    A member's bytes are sliced straight out of ``data`` (one copy, the sample's own ``bytes``)."""
    view = memoryview(data).cast("B")
    sample: Sample = {}
    with tarfile.open(fileobj=cast(IO[bytes], _ViewFile(view)), mode="r:") as tar:
        for member in tar:
            if not member.isfile():
                continue
            directory, _, base = member.name.rpartition("/")
            stem, dot, ext = base.partition(".")
            key = f"{directory}/{stem}" if directory else stem
            if sample and sample["__key__"] != key:
                yield sample
                sample = {}
            if member.issparse():
                fh = tar.extractfile(member)
                body = fh.read() if fh is not None else b""
            else:
                end = member.offset_data + member.size
                if end > len(view):
                    raise tarfile.ReadError(f"{name}: member {member.name} runs past the end of the shard")
                body = bytes(view[member.offset_data : end])
            sample.setdefault("__key__", key)
            sample["__shard__"] = name
            sample[ext if dot else ""] = body
    if sample:
        yield sample


def decode_parquet(data: bytes, batch_rows: int) -> Iterator[Sample]:
    import pyarrow.parquet as pq

    table = pq.ParquetFile(io.BytesIO(data))
    for batch in table.iter_batches(batch_size=batch_rows):
        yield from batch.to_pylist()


@functools.cache
def _torch_dataset_class() -> type:
    from torch.utils.data import IterableDataset, get_worker_info

    class ShardStream(IterableDataset):
        """The torch face of a ``ShardReader``; each DataLoader worker of each rank reads its own shards."""

        def __init__(self, reader: ShardReader) -> None:
            super().__init__()
            self.reader = reader

        def __iter__(self) -> Iterator[Sample]:
            info = get_worker_info()
            worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
            rank, world = self.reader.rank_world()
            return self.reader.samples(self.reader.shards_for(rank, world, worker, num_workers))

        def set_epoch(self, epoch: int) -> None:
            self.reader.set_epoch(epoch)

        def __reduce__(self) -> tuple[Any, ...]:
            # the class is built at run time, so spawned workers rebuild it through this module's function
            return (_rebuild, (self.reader,))

    return ShardStream


def _rebuild(reader: ShardReader) -> Any:
    return _torch_dataset_class()(reader)


def stream_dataset(
    store: ObjectStore,
    org: str,
    dataset: str,
    version: int | None = None,
    **options: Any,
) -> Any:
    """A ``torch.utils.data.IterableDataset`` over a version's shards (options as for ``ShardReader``)."""
    number = latest_version(store, org, dataset) if version is None else version
    reader = ShardReader(store, read_manifest(store, org, dataset, number), **options)
    return _torch_dataset_class()(reader)
