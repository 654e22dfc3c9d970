"""Throughput of haihe.datasets against raw baselines measured in the same run (not a pass/fail test).

* push: ``push()`` (sha256 while sending presigned parts in parallel, then commit) vs the raw ``minio`` client's
  ``fput_object`` of the same files;
* pull: ``stage()`` (download + sha256 check into the cache) and ``pull()`` (presigned URLs) vs ``fget_object``;
* stream: the streaming loader (``ShardReader``: S3, prefetch, sha256, tar decoding) vs decoding the same shards
  read from local disk.

Usage: ``python bench/bench_datasets.py [--size 1G] [--shards 16] [--endpoint URL --access-key K --secret-key S]``.
Without an endpoint it starts its own S3 server (JuiceFS gateway) with the same bring-up code as ``haihe up``.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import shutil
import tarfile
import tempfile
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from haihe.cluster.procs import free_port
from haihe.cluster.s3 import S3Server
from haihe.datasets.loader import ShardReader, decode_tar
from haihe.datasets.presigned import HttpTransport
from haihe.datasets.push import LocalBackend, pull, push
from haihe.datasets.stage import stage
from haihe.datasets.store import MinioStore
from haihe.datasets.upload import Uploads
from haihe.datasets.versions import download_urls, read_manifest

BUCKET = "haihe-datasets"
SAMPLE = 256 * 1024


def parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    text = text.strip().upper().rstrip("B")
    return int(float(text[:-1]) * units[text[-1]]) if text[-1] in units else int(text)


def make_shards(root: Path, total: int, shards: int) -> None:
    """WebDataset-style tar shards of random samples (incompressible, like images)."""
    root.mkdir(parents=True)
    per_shard = max(SAMPLE, total // shards)
    for s in range(shards):
        with tarfile.open(root / f"train-{s:04d}.tar", "w") as tar:
            for i in range(per_shard // SAMPLE):
                data = os.urandom(SAMPLE)
                info = tarfile.TarInfo(f"{s:04d}/{i:06d}.bin")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def timed(what: str, nbytes: int, fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    seconds = time.perf_counter() - start
    rate = nbytes / seconds / (1 << 20)
    print(f"  {what:<44} {seconds:7.2f} s  {rate:8.1f} MiB/s")
    return rate


def run(store: MinioStore, size: int, shards: int, workers: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="haihe-bench-"))
    org = f"bench-{uuid.uuid4().hex[:8]}"
    try:
        src = work / "src"
        make_shards(src, size, shards)
        files = sorted(p for p in src.iterdir())
        nbytes = sum(p.stat().st_size for p in files)
        print(f"data: {len(files)} tar shards, {nbytes / (1 << 20):.0f} MiB, {workers} workers")
        client = store.client

        def raw_push() -> None:
            for p in files:
                client.fput_object(
                    BUCKET, f"{org}/raw/{p.name}", str(p), part_size=16 << 20, num_parallel_uploads=workers
                )

        def raw_pull() -> None:
            with ThreadPoolExecutor(workers) as pool:
                list(
                    pool.map(
                        lambda p: client.fget_object(BUCKET, f"{org}/raw/{p.name}", str(work / "rawpull" / p.name)),
                        files,
                    )
                )

        print("push")
        raw = timed("raw minio fput_object", nbytes, raw_push)
        ours = timed(
            "haihe push (sha256 + presigned parts + commit)",
            nbytes,
            lambda: push(
                src, LocalBackend(Uploads(store), org, "ds"), HttpTransport(pool_size=workers * 2), workers=workers
            ),
        )
        push_ratio = ours / raw
        print("pull")
        raw_p = timed("raw minio fget_object", nbytes, raw_pull)
        staged = timed(
            "haihe stage (sha256-checked, into cache)",
            nbytes,
            lambda: stage(store, org, "ds", 1, work / "cache", workers=workers),
        )
        manifest = read_manifest(store, org, "ds", 1)
        pulled = timed(
            "haihe pull (presigned URLs, sha256-checked)",
            nbytes,
            lambda: pull(manifest, download_urls(store, manifest), work / "pulled", HttpTransport(), workers=workers),
        )
        print("stream")

        def local_read() -> None:
            for p in files:
                for _ in decode_tar(p.name, p.read_bytes()):
                    pass

        def local_read_verified() -> None:
            for p in files:
                data = p.read_bytes()
                hashlib.sha256(data).hexdigest()
                for _ in decode_tar(p.name, data):
                    pass

        def streamed() -> None:
            reader = ShardReader(store, manifest, prefetch=max(2, workers // 2))
            for _ in reader.samples(reader.shards):
                pass

        local = timed("tar shards from local disk", nbytes, local_read)
        local_v = timed("tar shards from local disk + sha256", nbytes, local_read_verified)
        stream = timed("haihe streaming loader (S3, prefetch, sha256)", nbytes, streamed)
        print("ratios (haihe / baseline; targets: push, pull >= 0.9, stream >= 0.8)")
        print(f"  push   {push_ratio:5.2f}x")
        print(f"  pull   {staged / raw_p:5.2f}x (stage)   {pulled / raw_p:5.2f}x (presigned pull)")
        print(f"  stream {stream / local:5.2f}x (vs local read)   {stream / local_v:5.2f}x (vs local read + sha256)")
    finally:
        shutil.rmtree(work, ignore_errors=True)
        for prefix in (f"{org}/",):
            store.delete([i.key for i in store.list(prefix)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="1G", help="total data size, e.g. 200M, 1G (default 1G)")
    parser.add_argument("--shards", type=int, default=16)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--endpoint")
    parser.add_argument("--access-key")
    parser.add_argument("--secret-key")
    args = parser.parse_args()
    server = None
    if args.endpoint:
        store = MinioStore(args.endpoint, args.access_key, args.secret_key, BUCKET)
    else:
        home = Path(tempfile.mkdtemp(prefix="haihe-bench-s3-"))
        server = S3Server(home, free_port(), access_key="bench", secret_key=uuid.uuid4().hex)
        server.start(timeout=120)
        server.ensure_buckets([BUCKET])
        store = MinioStore(server.endpoint, server.access_key, server.secret_key, BUCKET)
    try:
        store.ensure_bucket()
        run(store, parse_size(args.size), args.shards, args.workers)
    finally:
        if server is not None:
            server.stop()
            shutil.rmtree(server.home, ignore_errors=True)


if __name__ == "__main__":
    main()
