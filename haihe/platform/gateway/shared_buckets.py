"""Token buckets shared by every gateway process on one host, so that a key's rate limit holds however many API
processes serve the port (``haihe up --api-workers``) and whichever one a client's connection lands on.

The buckets live in a small memory-mapped file (``HAIHE_GATEWAY_SHARED_BUCKETS``): an open-addressed table of
``SLOTS`` entries, each ``(key, tokens, stamp)``. A take holds this process's thread lock and an ``fcntl`` lock on
the file for a few microseconds. Time is ``CLOCK_MONOTONIC``, which is one clock for every process on the host. A
table that fills up is cleared (idle keys start again with a full bucket), as :class:`limits.TokenBuckets` does.
Several hosts behind one address still limit per host: a site that runs the gateway on many hosts divides the
rate by their number or puts a shared limiter in front.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path

from haihe.errors import RateLimited

SLOTS = 1 << 16
_ENTRY = struct.Struct("<Qdd")  # key (0 = empty), tokens, stamp
_SIZE = SLOTS * _ENTRY.size


def _pack(key: tuple[int, int]) -> int:
    """(credential, endpoint) as one non-zero 64-bit key (credentials may be negative: a user's own session)."""
    cred, endpoint = key
    return ((cred & 0xFFFFFFFF) << 32 | (endpoint & 0xFFFFFFFF)) or 1 << 63


class SharedTokenBuckets:
    """The same contract as :class:`haihe.platform.gateway.limits.TokenBuckets`, kept in a file every process maps."""

    def __init__(self, path: Path, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()  # fcntl locks are per process: threads of one process need their own
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if os.fstat(fd).st_size != _SIZE:
                fcntl.lockf(fd, fcntl.LOCK_EX)
                try:
                    if os.fstat(fd).st_size != _SIZE:
                        os.ftruncate(fd, _SIZE)  # zeros: every slot empty
                finally:
                    fcntl.lockf(fd, fcntl.LOCK_UN)
            self._map = mmap.mmap(fd, _SIZE)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def take(self, key: tuple[int, int], rate: float, burst: int) -> None:
        packed = _pack(key)
        with self._lock:
            fcntl.lockf(self._fd, fcntl.LOCK_EX)
            try:
                now = self._clock()
                offset = self._slot(packed)
                found, tokens, stamp = _ENTRY.unpack_from(self._map, offset)
                if found != packed:
                    tokens, stamp = float(burst), now
                tokens = min(float(burst), tokens + max(0.0, now - stamp) * rate)
                allowed = tokens >= 1.0
                if allowed:
                    tokens -= 1.0
                _ENTRY.pack_into(self._map, offset, packed, tokens, now)
            finally:
                fcntl.lockf(self._fd, fcntl.LOCK_UN)
        if not allowed:
            wait = (1.0 - tokens) / rate
            raise RateLimited(f"rate limit of {rate:g} requests/s (burst {burst}) for this key exceeded; "
                              f"retry in {wait:.2f}s", retry_after=wait, limit_per_s=rate, burst=burst)

    def _slot(self, packed: int) -> int:
        """The entry's offset: its own slot, else the first empty one on its probe path (the table is cleared
        when the path runs long: a flood of keys forgets idle buckets rather than slow every take)."""
        start = packed * 0x9E3779B97F4A7C15 % SLOTS
        for i in range(64):
            offset = (start + i) % SLOTS * _ENTRY.size
            found = _ENTRY.unpack_from(self._map, offset)[0]
            if found in (packed, 0):
                return offset
        self._map[:] = bytes(_SIZE)
        return start * _ENTRY.size

    def close(self) -> None:
        self._map.close()
        os.close(self._fd)
