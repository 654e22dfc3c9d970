"""Throughput of haihe.datasets against raw baselines measured in the same run (not a pass/fail test).

* push: ``push()`` (sha256 while sending presigned parts in parallel, then commit) vs the raw ``minio`` client's
  ``fput_object`` of the same files;
* pull: ``stage()`` (download + sha256 check into the cache) and ``pull()`` (presigned URLs) vs ``fget_object``;
* stream: the streaming loader (``ShardReader``: S3, prefetch, sha256, tar decoding) vs decoding the same shards
  read from local disk.

Usage: ``python bench/bench_datasets.py [--size 1G] [--shards 16] [--repeat 3] [--port P | --endpoint URL
--access-key K --secret-key S]``. The host may be shared and noisy: each path is measured ``--repeat`` times on the
same data, baseline and haihe side by side in every round, and the median of each round's ratio is reported.
Without an endpoint it starts its own S3 server (JuiceFS gateway) with the same bring-up code as ``haihe up``.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import shutil
import statistics
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


class Timer:
    """Wall time, and CPU seconds per GiB of this process (every thread) and of the S3 server process: on a shared,
    noisy host the CPU cost of a path is far steadier than its wall time, and on a host with few cores it is what
    bounds the throughput."""

    def __init__(self, server_pid: int | None) -> None:
        self.server_pid = server_pid
        self.cpu: dict[str, list[tuple[float, float]]] = {}

    def server_cpu(self) -> float:
        if self.server_pid is None:
            return 0.0
        try:
            fields = Path(f"/proc/{self.server_pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def __call__(self, what: str, nbytes: int, fn: Callable[[], object]) -> float:
        start, cpu, server = time.perf_counter(), time.process_time(), self.server_cpu()
        fn()
        seconds = time.perf_counter() - start
        gib = nbytes / (1 << 30)
        used = ((time.process_time() - cpu) / gib, (self.server_cpu() - server) / gib)
        self.cpu.setdefault(what, []).append(used)
        rate = nbytes / seconds / (1 << 20)
        print(f"  {what:<48} {seconds:7.2f} s  {rate:8.1f} MiB/s   cpu-s/GiB: client {used[0]:5.2f}  s3 {used[1]:5.2f}")
        return rate


def one_round(
    store: MinioStore, src: Path, work: Path, org: str, workers: int, prefetch: int, timed: Timer
) -> dict[str, float]:
    """One measurement of every path; returns the ratios (haihe / baseline) of this round."""
    files = sorted(p for p in src.iterdir())
    nbytes = sum(p.stat().st_size for p in files)
    client = store.client

    def raw_push() -> None:
        for p in files:
            client.fput_object(BUCKET, f"{org}/raw/{p.name}", str(p), part_size=16 << 20, num_parallel_uploads=workers)

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

    def raw_stream() -> None:
        def get(p: Path) -> None:
            response = client.get_object(BUCKET, f"{org}/raw/{p.name}")
            try:
                response.read()
            finally:
                response.close()
                response.release_conn()

        with ThreadPoolExecutor(prefetch) as pool:
            list(pool.map(get, files))

    def streamed() -> None:
        reader = ShardReader(store, manifest, prefetch=prefetch)
        for _ in reader.samples(reader.shards):
            pass

    local = timed("tar shards from local disk", nbytes, local_read)
    local_v = timed("tar shards from local disk + sha256", nbytes, local_read_verified)
    timed(f"raw minio get_object, {prefetch} threads (no decode)", nbytes, raw_stream)
    stream = timed("haihe streaming loader (S3, prefetch, sha256)", nbytes, streamed)
    ratios = {
        "push": ours / raw,
        "stage": staged / raw_p,
        "presigned pull": pulled / raw_p,
        "stream": stream / local,
        "stream vs local+sha256": stream / local_v,
    }
    print("  round: " + ", ".join(f"{k} {v:.2f}x" for k, v in ratios.items()))
    return ratios


def run(
    store: MinioStore, size: int, shards: int, workers: int, repeat: int, prefetch: int, server_pid: int | None
) -> None:
    timed = Timer(server_pid)
    work = Path(tempfile.mkdtemp(prefix="haihe-bench-"))
    try:
        src = work / "src"
        make_shards(src, size, shards)
        nbytes = sum(p.stat().st_size for p in src.iterdir())
        print(f"data: {shards} tar shards, {nbytes / (1 << 20):.0f} MiB, {workers} workers, prefetch {prefetch}")
        rounds = []
        for n in range(repeat):
            print(f"round {n + 1}/{repeat}")
            org = f"bench-{uuid.uuid4().hex[:8]}"
            round_dir = work / f"round{n}"
            round_dir.mkdir()
            try:
                rounds.append(one_round(store, src, round_dir, org, workers, prefetch, timed))
            finally:
                shutil.rmtree(round_dir, ignore_errors=True)
                store.delete([i.key for i in store.list(f"{org}/")])
        print(f"ratios, median of {repeat} (haihe / baseline; targets: push, pull >= 0.9, stream >= 0.8)")
        for key in rounds[0]:
            values = sorted(r[key] for r in rounds)
            spread = f"   (runs {', '.join(f'{v:.2f}' for v in values)})" if repeat > 1 else ""
            print(f"  {key:<24} {statistics.median(values):5.2f}x{spread}")
        print("CPU seconds per GiB, median (client = this process, s3 = the S3 server)")
        for what, used in timed.cpu.items():
            client, server = (statistics.median(u[i] for u in used) for i in (0, 1))
            print(f"  {what:<48} client {client:5.2f}  s3 {server:5.2f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="1G", help="total data size, e.g. 200M, 1G (default 1G)")
    parser.add_argument("--shards", type=int, default=16)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--prefetch", type=int, default=4, help="shards the streaming loader keeps in flight")
    parser.add_argument("--repeat", type=int, default=3, help="rounds on the same data; medians are reported")
    parser.add_argument("--port", type=int, default=0, help="port of the S3 server it starts (default: a free one)")
    parser.add_argument("--endpoint")
    parser.add_argument("--server-pid", type=int, help="pid of the S3 server at --endpoint, to count its CPU time")
    parser.add_argument("--access-key")
    parser.add_argument("--secret-key")
    args = parser.parse_args()
    server = None
    server_pid = args.server_pid
    if args.endpoint:
        store = MinioStore(args.endpoint, args.access_key, args.secret_key, BUCKET)
    else:
        home = Path(tempfile.mkdtemp(prefix="haihe-bench-s3-"))
        server = S3Server(home, args.port or free_port(), access_key="bench", secret_key=uuid.uuid4().hex)
        server.start(timeout=120)
        server.ensure_buckets([BUCKET])
        store = MinioStore(server.endpoint, server.access_key, server.secret_key, BUCKET)
        server_pid = server._process().pid()  # the one gateway process: its CPU time is read from /proc
    try:
        store.ensure_bucket()
        run(store, parse_size(args.size), args.shards, args.workers, args.repeat, args.prefetch, server_pid)
    finally:
        if server is not None:
            server.stop()
            shutil.rmtree(server.home, ignore_errors=True)


if __name__ == "__main__":
    main()
