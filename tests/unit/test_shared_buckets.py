"""Per-key token buckets shared by several gateway processes on one host (haihe up --api-workers)."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest

from haihe.errors import RateLimited
from haihe.platform.gateway.limits import TokenBuckets
from haihe.platform.gateway.shared_buckets import SharedTokenBuckets


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _allowed(buckets: TokenBuckets | SharedTokenBuckets, key: tuple[int, int], n: int, rate: float,
             burst: int) -> int:
    ok = 0
    for _ in range(n):
        try:
            buckets.take(key, rate, burst)
            ok += 1
        except RateLimited:
            pass
    return ok


@pytest.mark.parametrize("shared", [False, True])
def test_same_contract_as_the_in_memory_buckets(tmp_path: Path, shared: bool) -> None:
    clock = Clock()
    b = SharedTokenBuckets(tmp_path / "b.bin", clock=clock) if shared else TokenBuckets(clock=clock)
    assert _allowed(b, (7, 1), 10, rate=2.0, burst=5) == 5  # the burst, then empty
    with pytest.raises(RateLimited) as err:
        b.take((7, 1), 2.0, 5)
    assert err.value.retry_after == pytest.approx(0.5)
    assert _allowed(b, (8, 1), 3, rate=2.0, burst=5) == 3  # another key has its own bucket
    assert _allowed(b, (-7, 1), 3, rate=2.0, burst=5) == 3  # a user's session is not key 7
    clock.t += 1.0  # two tokens back
    assert _allowed(b, (7, 1), 5, rate=2.0, burst=5) == 2


def test_two_handles_on_one_file_share_the_bucket(tmp_path: Path) -> None:
    clock = Clock()
    a = SharedTokenBuckets(tmp_path / "b.bin", clock=clock)
    b = SharedTokenBuckets(tmp_path / "b.bin", clock=clock)
    assert _allowed(a, (1, 2), 3, rate=1.0, burst=4) == 3
    assert _allowed(b, (1, 2), 3, rate=1.0, burst=4) == 1  # what a used is gone for b too


def _worker(path: str, n: int, out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    b = SharedTokenBuckets(Path(path))
    out.put(_allowed(b, (3, 3), n, rate=0.001, burst=100))


def test_processes_taking_at_once_never_exceed_the_burst(tmp_path: Path) -> None:
    """Four processes hammer one key at once: exactly the burst gets through (no lost update)."""
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(str(tmp_path / "b.bin"), 200, out)) for _ in range(4)]
    for p in procs:
        p.start()
    total = sum(out.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(timeout=30)
    assert total == 100


def test_a_full_probe_path_forgets_idle_keys(tmp_path: Path) -> None:
    b = SharedTokenBuckets(tmp_path / "b.bin", clock=Clock())
    for k in range(5000):  # far fewer than the slots: all kept
        b.take((k, 1), 1.0, 1)
    with pytest.raises(RateLimited):
        b.take((4999, 1), 1.0, 1)
