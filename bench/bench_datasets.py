"""Throughput of haihe.datasets against raw baselines measured in the same run (not a pass/fail test).

* push: ``push()`` (sha256 while sending presigned parts in parallel, then commit) vs the raw ``minio`` client's
  ``fput_object`` of the same files;
* pull: ``stage()`` (download + sha256 check into the cache) and ``pull()`` (presigned URLs) vs ``fget_object``;
* stream: the streaming loader (``ShardReader``: S3, prefetch, sha256, tar decoding) vs decoding the same shards
  read from local disk.

Usage: ``python bench/bench_datasets.py [--size 1G] [--shards 16] [--repeat 3] [--port P | --endpoint URL
--access-key K --secret-key S --server-pid PID]``. The host may be shared and noisy: each path is measured
``--repeat`` times on the same data, baseline and haihe side by side in every round, and the median of each round's
ratio is reported.
Without an endpoint it starts its own S3 server (JuiceFS gateway) with the same bring-up code as ``haihe up``, on
``--port``, else on ``HAIHE_TEST_PORT_BASE + 930`` when that is set, else on a free port.

Every path is also costed in CPU seconds per GiB, for this process and for the S3 server, and the bench prints the
ratio each pair would reach if the host's cores were the only limit: on a small shared host that, not the network,
bounds the throughput, and it is the figure to compare with the measured ratio.
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
PORT_OFFSET = 930  # from HAIHE_TEST_PORT_BASE: clear of the test fixtures' ports (base .. base+299, +500, +950..)

SIDES = """\
what each side does (same data, same parallelism on both sides of a pair):
  push    raw: minio fput_object per file, files in turn, 16 MiB parts, {w} parallel part uploads (signed sha256
               of every part); haihe: push() reads each file once, sha256 while {w} threads PUT presigned parts,
               then commits the manifest
  pull    raw: minio fget_object per file, {w} files at once, no integrity check; haihe: stage() into the
               cache, {w} files at once, sha256 of every byte while it is received, checked before the rename;
               pull(): the same through presigned URLs
  stream  local: read_bytes() each shard from local disk (page cache), decode_tar, one thread; haihe: the
               streaming loader, {p} shards in flight received into reused buffers, sha256 as bytes arrive, the
               same decode_tar; also shown: local + sha256 (the same checks as the loader), raw get_object
  each round starts every phase with a different line and deletes each downloaded copy before the next line
  ratio = haihe MiB/s / baseline MiB/s; targets: push and pull >= 0.9x, stream >= 0.8x"""


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
        self.cpu: dict[str, list[tuple[float, float, float]]] = {}  # (client CPU-s, server CPU-s, wall s) per GiB

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
        used = ((time.process_time() - cpu) / gib, (self.server_cpu() - server) / gib, seconds / gib)
        self.cpu.setdefault(what, []).append(used)
        rate = nbytes / seconds / (1 << 20)
        print(f"  {what:<48} {seconds:7.2f} s  {rate:8.1f} MiB/s   cpu-s/GiB: client {used[0]:5.2f}  s3 {used[1]:5.2f}")
        return rate


def one_round(
    store: MinioStore, src: Path, work: Path, org: str, workers: int, prefetch: int, timed: Timer, rotate: int
) -> dict[str, float]:
    """One measurement of every path; returns the ratios (haihe / baseline) of this round. ``rotate`` picks which
    line of each phase runs first."""
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

    def phase(lines: list[tuple[str, Callable[[], object], Path | None]]) -> dict[str, float]:
        """Run a phase's lines, starting at a different one every round (so no side always runs first, after the
        other has filled the page cache), each written copy removed before the next line (outside the timing)."""
        rates = {}
        for i in range(len(lines)):
            what, fn, output = lines[(i + rotate) % len(lines)]
            rates[what] = timed(what, nbytes, fn)
            if output is not None:
                shutil.rmtree(output, ignore_errors=True)
        return rates

    print("push")
    pushed = phase(
        [
            ("raw minio fput_object", raw_push, None),
            (
                "haihe push (sha256 + presigned parts + commit)",
                lambda: push(
                    src, LocalBackend(Uploads(store), org, "ds"), HttpTransport(pool_size=workers * 2), workers=workers
                ),
                None,
            ),
        ]
    )
    raw, ours = pushed["raw minio fput_object"], pushed["haihe push (sha256 + presigned parts + commit)"]
    manifest = read_manifest(store, org, "ds", 1)
    print("pull")
    pulls = phase(
        [
            ("raw minio fget_object", raw_pull, work / "rawpull"),
            (
                "haihe stage (sha256-checked, into cache)",
                lambda: stage(store, org, "ds", 1, work / "cache", workers=workers),
                work / "cache",
            ),
            (
                "haihe pull (presigned URLs, sha256-checked)",
                lambda: pull(
                    manifest, download_urls(store, manifest), work / "pulled", HttpTransport(), workers=workers
                ),
                work / "pulled",
            ),
        ]
    )
    raw_p, staged = pulls["raw minio fget_object"], pulls["haihe stage (sha256-checked, into cache)"]
    pulled = pulls["haihe pull (presigned URLs, sha256-checked)"]
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

    def streamed_unverified() -> None:
        reader = ShardReader(store, manifest, prefetch=prefetch, verify=False)
        for _ in reader.samples(reader.shards):
            pass

    def sha256_only() -> None:
        for p in files:
            hashlib.sha256(p.read_bytes())

    streams = phase(
        [
            ("tar shards from local disk", local_read, None),
            ("tar shards from local disk + sha256", local_read_verified, None),
            (f"raw minio get_object, {prefetch} threads (no decode)", raw_stream, None),
            ("haihe streaming loader (S3, prefetch, sha256)", streamed, None),
            ("haihe streaming loader, verify=False", streamed_unverified, None),
            ("local read_bytes + sha256, no decode", sha256_only, None),
        ]
    )
    local, local_v = streams["tar shards from local disk"], streams["tar shards from local disk + sha256"]
    stream = streams["haihe streaming loader (S3, prefetch, sha256)"]
    ratios = {  # the keys name pairs of lines in PAIRS
        "push": ours / raw,
        "stage": staged / raw_p,
        "presigned pull": pulled / raw_p,
        "stream": stream / local,
        "stream vs local+sha256": stream / local_v,
        "stream verify=False": streams["haihe streaming loader, verify=False"] / local,
    }
    print("  round: " + ", ".join(f"{k} {v:.2f}x" for k, v in ratios.items()))
    return ratios


# ratio -> (haihe line, baseline line, whether the baseline runs on one core); for the CPU-bound ceiling
PAIRS = {
    "push": ("haihe push (sha256 + presigned parts + commit)", "raw minio fput_object", False),
    "stage": ("haihe stage (sha256-checked, into cache)", "raw minio fget_object", False),
    "presigned pull": ("haihe pull (presigned URLs, sha256-checked)", "raw minio fget_object", False),
    "stream": ("haihe streaming loader (S3, prefetch, sha256)", "tar shards from local disk", True),
    "stream vs local+sha256": (
        "haihe streaming loader (S3, prefetch, sha256)",
        "tar shards from local disk + sha256",
        True,
    ),
    "stream verify=False": ("haihe streaming loader, verify=False", "tar shards from local disk", True),
}


def cpu_ceiling(timed: Timer, key: str, cores: int) -> tuple[float, float, float, float]:
    """CPU-s per GiB (client + S3 server) of the haihe side and the baseline, and two bounds on the ratio, from the
    medians over the rounds:

    * ``both_bound``: the ratio if the cores were the only limit of both sides (CPU over the cores a side can use:
      all of them, or one for the single-threaded local read);
    * ``best``: the best haihe could do against the baseline as measured, if the cores were idle: it needs at
      least its CPU over all the cores, and is credited with nothing better than the baseline's own time."""
    ours, base, single = PAIRS[key]

    def med(what: str, i: int) -> float:
        return statistics.median(u[i] for u in timed.cpu[what])

    t_ours, t_base = med(ours, 0) + med(ours, 1), med(base, 0) + med(base, 1)
    both_bound = (t_base if single else t_base / cores) / (t_ours / cores)
    wall_base = med(base, 2)
    best = wall_base / max(wall_base, t_ours / cores)
    return t_ours, t_base, both_bound, best


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
        print(SIDES.format(w=workers, p=prefetch))
        rounds = []
        for n in range(repeat):
            print(f"round {n + 1}/{repeat} (load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")
            org = f"bench-{uuid.uuid4().hex[:8]}"
            round_dir = work / f"round{n}"
            round_dir.mkdir()
            try:
                rounds.append(one_round(store, src, round_dir, org, workers, prefetch, timed, n))
            finally:
                shutil.rmtree(round_dir, ignore_errors=True)
                store.delete([i.key for i in store.list(f"{org}/")])
        print("CPU seconds per GiB, median (client = this process, s3 = the S3 server)")
        for what, used in timed.cpu.items():
            client, server = (statistics.median(u[i] for u in used) for i in (0, 1))
            print(f"  {what:<52} client {client:5.2f}  s3 {server:5.2f}")
        cores = len(os.sched_getaffinity(0))
        targets = {"push": 0.9, "stage": 0.9, "presigned pull": 0.9, "stream": 0.8}
        print(f"RATIOS, median of {repeat} rounds (haihe / baseline)")
        for key in rounds[0]:
            values = sorted(r[key] for r in rounds)
            target = f"target {targets[key]:.1f}x" if key in targets else "no target"
            each = ", ".join(f"{v:.2f}" for v in values)
            print(f"  {key:<24} {statistics.median(values):5.2f}x  {target:<13} rounds {each}")
        print(f"what the CPU allows on {cores} cores: CPU-s/GiB (client + S3 server, medians) haihe vs baseline;")
        print("  the ratio if both sides were CPU-bound; the best ratio on idle cores against the baseline's time")
        for key in rounds[0]:
            ours, base, both_bound, best = cpu_ceiling(timed, key, cores)
            print(f"  {key:<24} {ours:4.2f} vs {base:4.2f}   both CPU-bound {both_bound:4.2f}x   best {best:4.2f}x")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="1G", help="total data size, e.g. 200M, 1G (default 1G)")
    parser.add_argument("--shards", type=int, default=16)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--prefetch", type=int, default=4, help="shards the streaming loader keeps in flight")
    parser.add_argument("--repeat", type=int, default=3, help="rounds on the same data; medians are reported")
    parser.add_argument(
        "--port",
        type=int,
        default=0,
        help=f"port of the S3 server it starts (default: HAIHE_TEST_PORT_BASE + {PORT_OFFSET}, else a free one)",
    )
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
        base = os.environ.get("HAIHE_TEST_PORT_BASE")
        port = args.port or (int(base) + PORT_OFFSET if base else free_port())
        server = S3Server(home, port, access_key="bench", secret_key=uuid.uuid4().hex)
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
