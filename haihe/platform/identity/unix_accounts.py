"""Which Unix account a platform user's jobs run as (per org), and how the mapping is made.

``HAIHE_UNIX_ACCOUNTS`` picks the scheme: ``local`` — the platform creates ``hh-<org>-<user>`` itself through
:mod:`haihe.cluster.unix` (needs root), when a user joins an org on a platform with a Slurm scheduler and lazily at
their first Slurm submit; ``site`` — an administrator maps each user to an account that already exists on the nodes
(``haihe admin users map``); ``none`` — jobs run as the API process (development only). Schedulers that run jobs as
a user (``RUNS_AS_USER``: Slurm) need a mapping; Ray does not use it.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from haihe.cluster import unix
from haihe.errors import InvalidInput, NotFound
from haihe.platform import access, audit
from haihe.platform.access import Principal
from haihe.platform.context import PlatformContext
from haihe.platform.models import Membership, Org, UnixAccount, User

log = logging.getLogger(__name__)


def runs_as_user(scheduler: Any) -> bool:
    return bool(getattr(scheduler, "RUNS_AS_USER", False))


def _row(session: Session, org: Org, user: User) -> UnixAccount | None:
    return session.scalar(select(UnixAccount).where(UnixAccount.org_id == org.id, UnixAccount.user_id == user.id))


def _create_local(session: Session, org: Org, user: User, row: UnixAccount | None) -> str:
    """Create ``hh-<org>-<user>`` (idempotent) and record it; raises UnixAccountError."""
    name = row.unix_name if row is not None else unix.local_account_name(org.name, user.username)
    if not unix.is_root():
        raise unix.UnixAccountError("the platform creates local job accounts only when it runs as root")
    unix.ensure_user(name, subids=True)  # rootless container images (spec environment.image) need subuid ranges
    if row is None:
        session.add(UnixAccount(org_id=org.id, user_id=user.id, unix_name=name, origin="local"))
        session.flush()
    return name


def for_job(ctx: PlatformContext, session: Session, org: Org, user: User) -> str | None:
    """The Unix account ``user``'s jobs in ``org`` run as, or None under ``unix_accounts=none``.

    Raises InvalidInput naming ``user`` when there is none (and none can be made): nothing is stored then.
    """
    mode = ctx.settings.effective_unix_accounts
    if mode == "none":
        return None
    row = _row(session, org, user)
    if row is not None and (row.origin != "local" or unix.lookup(row.unix_name) is not None):
        return row.unix_name
    if mode == "site" and row is None:
        raise InvalidInput(
            f"user {user.username!r} has no Unix account for org {org.name!r} on the cluster; an administrator maps "
            f"one with `haihe admin users map {org.name} {user.username} <unix-name>`", field="user")
    try:
        return _create_local(session, org, user, row)
    except unix.UnixAccountError as exc:
        raise InvalidInput(f"user {user.username!r} of org {org.name!r} has no Unix account on the cluster and "
                           f"none could be created: {exc}", field="user") from None


def on_member_added(ctx: PlatformContext, session: Session, org_name: str, username: str) -> None:
    """``local``: make the new member's job account now, when the platform has a Slurm scheduler and runs as root.
    A failure is only logged: the first Slurm submit tries again and names the problem."""
    s = ctx.settings
    if s.effective_unix_accounts != "local" or not unix.is_root():
        return
    if not any(url.startswith("slurm") for url in s.schedulers.values()):
        return
    org = session.scalar(select(Org).where(Org.name == org_name))
    user = session.scalar(select(User).where(User.username == username))
    if org is None or user is None or _row(session, org, user) is not None:
        return
    try:
        _create_local(session, org, user, None)
    except unix.UnixAccountError as exc:
        log.warning("no local job account for %s in %s yet: %s", username, org_name, exc)


def map_user(session: Session, principal: Principal, org_name: str, username: str, unix_name: str) -> UnixAccount:
    """Platform admins: map a member of ``org_name`` to an existing Unix account (``getent passwd``)."""
    access.require_platform_admin(principal)
    org = session.scalar(select(Org).where(Org.name == org_name))
    if org is None:
        raise NotFound(f"org {org_name!r} not found", field="org")
    user = session.scalar(select(User).where(User.username == username))
    if user is None or session.scalar(select(Membership).where(Membership.org_id == org.id,
                                                             Membership.user_id == user.id)) is None:
        raise NotFound(f"user {username!r} is not a member of org {org_name!r}", field="username")
    if not unix.is_unix_name(unix_name):
        raise InvalidInput(f"{unix_name!r} is not a valid Unix account name", field="unix_name")
    account = unix.lookup(unix_name)
    if account is None:
        raise InvalidInput(f"no Unix account {unix_name!r} on this host (getent passwd)", field="unix_name")
    if account.uid == 0:
        raise InvalidInput("jobs never run as root: map a user to an unprivileged account", field="unix_name")
    row = _row(session, org, user)
    if row is None:
        row = UnixAccount(org_id=org.id, user_id=user.id, unix_name=unix_name, origin="site")
        session.add(row)
    else:
        row.unix_name, row.origin = unix_name, "site"
    session.flush()
    audit.record(session, principal, "user.map_unix", target_type="user", target=username, org_id=org.id,
                 details={"unix_name": unix_name})
    return row
