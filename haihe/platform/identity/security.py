"""Secrets: password hashing (argon2id), credential generation and hashing, CSRF tokens.

A credential reads ``hh<kind>_<prefix>_<secret>``: the prefix is stored in clear (shown in listings, used to find the
row), the secret only as a SHA-256 digest (it has 256 bits of entropy, so a slow hash adds nothing). Passwords are
user-chosen and low-entropy: argon2id with explicit parameters.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

# OWASP's argon2id minimums (m=19 MiB, t=2, p=1) rounded up; the tests check these.
ARGON2_TIME_COST = 2
ARGON2_MEMORY_KIB = 19 * 1024
ARGON2_PARALLELISM = 1
_hasher = PasswordHasher(time_cost=ARGON2_TIME_COST, memory_cost=ARGON2_MEMORY_KIB, parallelism=ARGON2_PARALLELISM)

_KIND_TAG = {"key": "hhk", "token": "hht", "session": "hhs"}
MIN_PASSWORD_LENGTH = 10


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    """Constant-time check; a missing hash (service accounts) never verifies."""
    if not password_hash:
        _hasher.hash(password)  # same cost whether or not the user exists
        return False
    try:
        return _hasher.verify(password_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def dummy_password_check(password: str) -> None:
    """Spend the same time as a real check (unknown user), so timing does not reveal which usernames exist."""
    verify_password(None, password)


@dataclass(frozen=True)
class NewCredential:
    prefix: str
    secret_hash: str
    plaintext: str  # shown once, never stored


def new_credential(kind: str) -> NewCredential:
    tag = _KIND_TAG[kind]
    prefix = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    return NewCredential(prefix=prefix, secret_hash=digest(secret), plaintext=f"{tag}_{prefix}_{secret}")


def split_credential(text: str) -> tuple[str, str, str] | None:
    """``(kind, prefix, secret)`` of a presented credential, or None when it is not one of ours."""
    parts = text.strip().split("_", 2)
    if len(parts) != 3:
        return None
    tag, prefix, secret = parts
    kind = next((k for k, t in _KIND_TAG.items() if t == tag), None)
    if kind is None or len(prefix) != 12 or not secret:
        return None
    return kind, prefix, secret


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def secret_matches(secret: str, secret_hash: str) -> bool:
    return hmac.compare_digest(digest(secret), secret_hash)


def csrf_token(secret_key: str, session_prefix: str) -> str:
    """The CSRF token of a portal session: bound to the session, derivable only with the server's key."""
    return hmac.new(secret_key.encode(), f"csrf:{session_prefix}".encode(), hashlib.sha256).hexdigest()


def check_csrf(secret_key: str, session_prefix: str, presented: str | None) -> bool:
    return bool(presented) and hmac.compare_digest(csrf_token(secret_key, session_prefix), presented or "")


def random_password(length: int = 20) -> str:
    return secrets.token_urlsafe(length)[:length]
