"""Local Unix accounts for the embedded/local cluster: job accounts, the service user, and reaching the runtime.

A site maps platform users to its own accounts (LDAP, ``getent passwd``); the local cluster makes unprivileged
accounts itself, all in the group :data:`JOBS_GROUP`, with no login shell and no home. Job accounts need to run the
platform's node Python and import Haihe, which may sit under a private directory (``/root/.pyenv`` on a developer
machine): :func:`grant_traverse` gives the jobs group search (``x``) permission, never read, on the directories
leading there, with a POSIX ACL where ``setfacl`` exists and the group bit otherwise.
"""

from __future__ import annotations

import grp
import hashlib
import os
import pwd
import re
import shutil
import stat
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

JOBS_GROUP = "haihe-jobs"  # every local job account is a member; owns nothing, is granted traverse only
SERVICE_USER = "haihe"  # the platform's own services when `haihe up` runs as root
_UNIX_NAME = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
_UNSAFE = re.compile(r"[^a-z0-9-]+")


class UnixAccountError(RuntimeError):
    """A local account could not be created or looked up."""


@dataclass(frozen=True)
class UnixAccount:
    name: str
    uid: int
    gid: int


def is_root() -> bool:
    return os.geteuid() == 0


def local_account_name(org: str, user: str, prefix: str = "hh") -> str:
    """``hh-<org>-<user>`` as a valid Unix name (≤ 32 chars); long names keep a hash suffix so they stay unique."""
    base = _UNSAFE.sub("-", f"{prefix}-{org}-{user}".lower()).strip("-")
    if len(base) <= 32:
        return base
    digest = hashlib.sha256(f"{org}/{user}".encode()).hexdigest()[:8]
    return f"{base[:23].rstrip('-')}-{digest}"


def is_unix_name(name: str) -> bool:
    return bool(_UNIX_NAME.fullmatch(name))


def lookup(name: str) -> UnixAccount | None:
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        return None
    return UnixAccount(pw.pw_name, pw.pw_uid, pw.pw_gid)


def ensure_group(name: str) -> int:
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        pass
    _run(["groupadd", "--system", name], f"create group {name}")
    return grp.getgrnam(name).gr_gid


def ensure_user(name: str, *, group: str = JOBS_GROUP, system: bool = True, home: str = "/nonexistent",
                extra_groups: tuple[str, ...] = (), subids: bool = False) -> UnixAccount:
    """An unprivileged account with no login shell, primary group ``group`` (created if missing) and the
    supplementary ``extra_groups``. Idempotent; an existing account is moved to these groups. ``subids``: with
    subordinate uid/gid ranges (/etc/subuid, /etc/subgid), which rootless containers (podman) need."""
    if not is_unix_name(name):
        raise UnixAccountError(f"{name!r} is not a valid Unix account name")
    gid = ensure_group(group)
    for extra in extra_groups:
        ensure_group(extra)
    found = lookup(name)
    if found is not None:
        if found.gid != gid:
            _run(["usermod", "-g", group, name], f"set the primary group of {name}")
        missing = [g for g in extra_groups if name not in grp.getgrnam(g).gr_mem]
        if missing:
            _run(["usermod", "-a", "-G", ",".join(missing), name], f"add {name} to {missing}")
        return lookup(name) or found
    argv = ["useradd", "--no-create-home", "--home-dir", home, "--shell", "/usr/sbin/nologin", "--gid", group,
            "--no-user-group"]
    if system:
        argv.append("--system")
        if subids:
            argv.append("--add-subids-for-system")
    if extra_groups:
        argv += ["--groups", ",".join(extra_groups)]
    _run([*argv, name], f"create user {name}")
    account = lookup(name)
    if account is None:
        raise UnixAccountError(f"user {name} was created but cannot be looked up")
    return account


def group_members(group: str) -> set[str]:
    try:
        g = grp.getgrnam(group)
    except KeyError:
        return set()
    return set(g.gr_mem) | {p.pw_name for p in pwd.getpwall() if p.pw_gid == g.gr_gid}


def ancestors(path: Path) -> list[Path]:
    """``path``'s parent directories from ``/`` down, for the path as given and as resolved (symlinks)."""
    out: list[Path] = []
    for p in (Path(os.path.abspath(path)), Path(path).resolve()):
        chain = [*reversed(p.parents)]
        for d in chain:
            if d not in out:
                out.append(d)
    return out


def _others_can_search(st: os.stat_result, gid: int) -> bool:
    return bool(st.st_mode & stat.S_IXOTH) or (st.st_gid == gid and bool(st.st_mode & stat.S_IXGRP))


def grant_traverse(paths: Iterable[Path], group: str = JOBS_GROUP) -> list[Path]:
    """Give ``group`` search permission on every directory leading to ``paths`` that lacks it; returns those
    changed. Search only: the group can open a file whose name it knows, never list the directory."""
    gid = ensure_group(group)
    setfacl = shutil.which("setfacl")
    changed: list[Path] = []
    for d in dict.fromkeys(a for p in paths for a in ancestors(p)):
        try:
            st = d.stat()
        except OSError:
            continue
        if _others_can_search(st, gid) or _acl_has(d, group):
            continue
        if setfacl:
            _run([setfacl, "-m", f"g:{group}:x", str(d)], f"grant {group} traverse on {d}")
        else:
            os.chmod(d, stat.S_IMODE(st.st_mode) | stat.S_IXOTH)
        changed.append(d)
    return changed


def _acl_has(d: Path, group: str) -> bool:
    getfacl = shutil.which("getfacl")
    if not getfacl:
        return False
    out = subprocess.run([getfacl, "-p", "-c", str(d)], capture_output=True, text=True, check=False).stdout
    return any(line.startswith(f"group:{group}:") and line.endswith("x") for line in out.splitlines())


def private_dir(path: Path, owner: str | None = None, mode: int = 0o700) -> Path:
    """Create ``path`` (and parents) and make it ``mode``, owned by ``owner`` when running as root."""
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, mode)
    if owner and is_root():
        account = lookup(owner)
        if account is not None:
            os.chown(path, account.uid, account.gid)
    return path


def service_account(name: str = SERVICE_USER) -> UnixAccount:
    """The platform's service account (its own group, not the jobs group), reaching the runtime's Python."""
    account = ensure_user(name, group=name)
    import sys

    grant_traverse([Path(sys.executable), Path(sys.prefix)], group=name)
    return account


def own_tree(path: Path, owner: str, mode: int = 0o700) -> None:
    """Make ``path`` (created if missing) and everything below it owned by ``owner``; ``path`` itself ``mode``.
    Used when a service that ran as root before now runs as its own account over the same state."""
    account = lookup(owner)
    if account is None:
        raise UnixAccountError(f"no account {owner}")
    path.mkdir(parents=True, exist_ok=True)
    for root, dirs, files in os.walk(path):
        for name in (*dirs, *files):
            os.lchown(os.path.join(root, name), account.uid, account.gid)
    os.chown(path, account.uid, account.gid)
    os.chmod(path, mode)


def service_home(path: Path, owner: str | None) -> None:
    """A local service's state directory, mode 700: it and everything below it owned by ``owner`` when the service
    runs as that account (root may have run it before), else the caller's."""
    if owner:
        own_tree(path, owner)
    else:
        private_dir(path)


def _run(argv: list[str], what: str) -> None:
    res = subprocess.run(argv, capture_output=True, text=True, check=False)
    if res.returncode != 0 and "already exists" not in res.stderr:
        raise UnixAccountError(f"cannot {what}: {res.stderr.strip() or res.stdout.strip()}")
