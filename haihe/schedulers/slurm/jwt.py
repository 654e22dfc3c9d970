"""Per-user Slurm JWTs (HS256), minted from the cluster's ``jwt_key`` the way ``scontrol token`` does.

slurmrestd's ``rest_auth/jwt`` accepts ``X-SLURM-USER-NAME`` + ``X-SLURM-USER-TOKEN``; a token whose ``sun`` claim
is the user itself needs no privilege, so the platform submits each job as its mapped user with a token that lives
minutes, not the operator's hour-long one. The key must stay unreadable to job accounts (docs/slurm.md).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path

from haihe.errors import SchedulerUnavailable


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def mint(key: bytes, user: str, lifespan_s: int, now: float | None = None) -> str:
    """An HS256 JWT with Slurm's claims: ``sun`` (the user), ``iat`` and ``exp``."""
    iat = int(time.time() if now is None else now)
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode())
    claims = _b64(json.dumps({"exp": iat + lifespan_s, "iat": iat, "sun": user}, separators=(",", ":")).encode())
    signature = hmac.new(key, f"{header}.{claims}".encode(), hashlib.sha256).digest()
    return f"{header}.{claims}.{_b64(signature)}"


class UserTokens:
    """Tokens per user from a key file, each reused for half its lifespan (one mint per user per few minutes)."""

    def __init__(self, key_path: str | Path, lifespan_s: int = 600,
                 clock: Callable[[], float] = time.time) -> None:
        self.key_path = Path(key_path)
        self.lifespan_s = lifespan_s
        self.clock = clock
        self._cache: dict[str, tuple[float, str]] = {}
        self._lock = threading.Lock()

    def __call__(self, user: str) -> str:
        now = self.clock()
        with self._lock:
            hit = self._cache.get(user)
            if hit is not None and now - hit[0] < self.lifespan_s / 2:
                return hit[1]
        try:
            key = self.key_path.read_bytes()
        except OSError as exc:
            raise SchedulerUnavailable(f"cannot read the Slurm JWT key {self.key_path}: {exc.strerror}") from exc
        token = mint(key, user, self.lifespan_s, now)
        with self._lock:
            if len(self._cache) > 4096:
                self._cache.clear()
            self._cache[user] = (now, token)
        return token
