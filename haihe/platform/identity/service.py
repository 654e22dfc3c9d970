"""Identity and tenancy services: orgs, projects, users, memberships, credentials, login.

Every function takes the caller's :class:`Principal`, checks access through ``access`` and records the act in the
audit log in the same transaction. Routes call these; they never repeat the checks.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, joinedload, selectinload

from haihe import names
from haihe.errors import (
    AuthenticationRequired,
    Conflict,
    InvalidInput,
    NotFound,
    PermissionDenied,
    RateLimited,
)
from haihe.platform import access, audit
from haihe.platform.access import Principal
from haihe.platform.identity import security
from haihe.platform.models import (
    Credential,
    CredentialKind,
    LoginThrottle,
    Membership,
    Org,
    Project,
    Role,
    Status,
    User,
    utcnow,
)

NAME_RE = names.ACCOUNT_NAME_RE
SCOPES = ("api", "inference")  # "endpoint:<name>" narrows inference to one endpoint


def check_name(value: str, field: str) -> str:
    return names.check_account_name(value, field)


def _flush_unique(session: Session, what: str, field: str) -> None:
    try:
        session.flush()
    except IntegrityError as exc:
        session.rollback()
        raise Conflict(f"{what} already exists", field=field) from exc


# -- bootstrap ------------------------------------------------------------------------------------------------
def bootstrap_admin(session: Session, username: str, password: str, source_ip: str = "") -> User:
    """Create the first platform admin; refused once any user exists (`haihe admin init`, first `haihe up`)."""
    check_name(username, "username")
    _check_password(password)
    if session.scalar(select(func.count()).select_from(User)):
        raise Conflict("the platform already has users; ask an existing administrator", field="username")
    user = User(username=username, password_hash=security.hash_password(password), is_platform_admin=True)
    session.add(user)
    _flush_unique(session, f"user {username!r}", "username")
    audit.record(session, None, "platform.init", target_type="user", target=username, actor=username,
                 source_ip=source_ip)
    return user


def _check_password(password: str) -> None:
    if len(password) < security.MIN_PASSWORD_LENGTH:
        raise InvalidInput(f"password must have at least {security.MIN_PASSWORD_LENGTH} characters", field="password")


# -- orgs -----------------------------------------------------------------------------------------------------
def create_org(session: Session, principal: Principal, name: str, display_name: str = "") -> Org:
    access.require_platform_admin(principal)
    org = Org(name=check_name(name, "name"), display_name=display_name or name)
    session.add(org)
    _flush_unique(session, f"org {name!r}", "name")
    audit.record(session, principal, "org.create", target_type="org", target=name, org_id=org.id)
    return org


def list_orgs(session: Session, principal: Principal) -> Sequence[Org]:
    q = select(Org).order_by(Org.name)
    ids = principal.visible_org_ids()
    if ids is not None:
        q = q.where(Org.id.in_(ids))
    return session.scalars(q).all()


def get_org(session: Session, principal: Principal, name: str) -> Org:
    return access.org_for_read(session, principal, name)


def set_org_status(session: Session, principal: Principal, name: str, status: Status) -> Org:
    access.require_platform_admin(principal)
    org = access.org_for_read(session, principal, name)
    org.status = status.value
    audit.record(session, principal, f"org.{status.value}", target_type="org", target=name, org_id=org.id)
    return org


# -- projects -------------------------------------------------------------------------------------------------
def create_project(session: Session, principal: Principal, org_name: str, name: str, description: str = "") -> Project:
    org = access.org_for_admin(session, principal, org_name)
    project = Project(org_id=org.id, name=check_name(name, "name"), description=description)
    session.add(project)
    _flush_unique(session, f"project {org_name}/{name}", "name")
    audit.record(session, principal, "project.create", target_type="project", target=f"{org_name}/{name}",
                 org_id=org.id)
    return project


def list_projects(session: Session, principal: Principal, org_name: str) -> Sequence[Project]:
    org = access.org_for_read(session, principal, org_name)
    return session.scalars(select(Project).where(Project.org_id == org.id).order_by(Project.name)).all()


def get_project(session: Session, principal: Principal, org_name: str, name: str) -> Project:
    return access.project_for_read(session, principal, org_name, name)


def set_project_status(session: Session, principal: Principal, org_name: str, name: str, status: Status) -> Project:
    org = access.org_for_admin(session, principal, org_name)
    project = access.project_for_read(session, principal, org_name, name)
    project.status = status.value
    audit.record(session, principal, f"project.{status.value}", target_type="project",
                 target=f"{org_name}/{name}", org_id=org.id)
    return project


# -- users ----------------------------------------------------------------------------------------------------
def create_user(
    session: Session,
    principal: Principal,
    org_name: str,
    username: str,
    role: Role,
    password: str | None = None,
    display_name: str = "",
    email: str = "",
) -> User:
    """Create a user as a member of ``org_name`` with ``role``; service accounts have no password."""
    org = access.org_for_admin(session, principal, org_name)
    check_name(username, "username")
    service = role == Role.SERVICE_ACCOUNT
    if service and password:
        raise InvalidInput("service accounts have no password; they use API keys", field="password")
    if not service:
        if not password:
            raise InvalidInput("a password is required for a human user", field="password")
        _check_password(password)
    user = User(
        username=username,
        display_name=display_name,
        email=email,
        password_hash=security.hash_password(password) if password else None,
        is_service_account=service,
    )
    session.add(user)
    _flush_unique(session, f"user {username!r}", "username")
    session.add(Membership(user_id=user.id, org_id=org.id, role=role.value))
    audit.record(session, principal, "user.create", target_type="user", target=username, org_id=org.id,
                 details={"role": role.value})
    return user


def add_member(session: Session, principal: Principal, org_name: str, username: str, role: Role) -> Membership:
    org = access.org_for_admin(session, principal, org_name)
    user = _visible_user(session, principal, username, any_org=True)
    if (role == Role.SERVICE_ACCOUNT) != user.is_service_account:
        raise InvalidInput("service accounts take the service_account role, humans the others", field="role")
    member = Membership(user_id=user.id, org_id=org.id, role=role.value)
    session.add(member)
    _flush_unique(session, f"{username!r} is already a member of {org_name!r}", "username")
    audit.record(session, principal, "member.add", target_type="user", target=username, org_id=org.id,
                 details={"role": role.value})
    return member


def list_users(session: Session, principal: Principal, org_name: str | None = None) -> Sequence[User]:
    q = select(User).options(selectinload(User.memberships).selectinload(Membership.org)).order_by(User.username)
    if org_name is not None:
        org = access.org_for_read(session, principal, org_name)
        q = q.where(User.memberships.any(Membership.org_id == org.id))
    else:
        ids = principal.visible_org_ids()
        if ids is not None:
            q = q.where(User.memberships.any(Membership.org_id.in_(ids)) | (User.id == principal.user_id))
    return session.scalars(q).all()


def _visible_user(session: Session, principal: Principal, username: str, any_org: bool = False) -> User:
    user = session.scalar(
        select(User).options(selectinload(User.memberships).selectinload(Membership.org))
        .where(User.username == username)
    )
    if user is None:
        raise NotFound(f"user {username!r} not found", field="username")
    if principal.is_platform_admin or user.id == principal.user_id or any_org:
        return user
    if not any(principal.can_see_org(m.org_id) for m in user.memberships):
        raise NotFound(f"user {username!r} not found", field="username")
    return user


def get_user(session: Session, principal: Principal, username: str) -> User:
    return _visible_user(session, principal, username)


def set_user_status(session: Session, principal: Principal, username: str, status: Status) -> User:
    user = _visible_user(session, principal, username)
    # an org admin may change only users all of whose memberships are in orgs they administer
    if not principal.is_platform_admin and (
        not user.memberships or any(principal.role_in(m.org_id) != Role.ORG_ADMIN for m in user.memberships)
    ):
        raise PermissionDenied(f"only a platform admin may change {username!r}")
    if user.id == principal.user_id and status != Status.ACTIVE:
        raise InvalidInput("you cannot disable yourself", field="username")
    user.status = status.value
    if status != Status.ACTIVE:  # a disabled user's credentials stop working at once
        for cred in session.scalars(select(Credential).where(Credential.user_id == user.id,
                                                             Credential.revoked_at.is_(None))):
            cred.revoked_at = utcnow()
    org_id = user.memberships[0].org_id if user.memberships else None
    audit.record(session, principal, f"user.{status.value}", target_type="user", target=username, org_id=org_id)
    return user


# -- credentials ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class IssuedCredential:
    credential: Credential
    plaintext: str  # shown to the caller once


def _check_scopes(scopes: Sequence[str]) -> list[str]:
    out = []
    for s in scopes:
        if s in SCOPES or (s.startswith("endpoint:") and NAME_RE.fullmatch(s.split(":", 1)[1])):
            out.append(s)
        else:
            raise InvalidInput(f"unknown scope {s!r}; valid: {', '.join(SCOPES)}, endpoint:<name>", field="scopes")
    return out or ["api"]


def create_key(
    session: Session,
    principal: Principal,
    org_name: str,
    name: str,
    username: str | None = None,
    scopes: Sequence[str] = ("api",),
    expires_in_days: int | None = None,
) -> IssuedCredential:
    """An API key bound to ``org_name`` for the caller or (org admins) for a service account of the org."""
    org = access.org_for_read(session, principal, org_name)
    if username is None or username == principal.username:
        owner = session.get(User, principal.user_id)
        if owner is None:
            raise NotFound("caller not found")
        access.org_for_write(session, principal, org_name)
    else:
        access.org_for_admin(session, principal, org_name)
        owner = _visible_user(session, principal, username)
        if not any(m.org_id == org.id for m in owner.memberships):
            raise NotFound(f"user {username!r} is not a member of {org_name!r}", field="username")
    if expires_in_days is not None and not 1 <= expires_in_days <= 3650:
        raise InvalidInput("expires_in_days must be between 1 and 3650", field="expires_in_days")
    issued = _issue(session, owner, CredentialKind.KEY, name=name, org_id=org.id, scopes=_check_scopes(scopes),
                    ttl=dt.timedelta(days=expires_in_days) if expires_in_days else None,
                    created_by_id=principal.user_id)
    audit.record(session, principal, "key.create", target_type="key", target=issued.credential.prefix,
                 org_id=org.id, details={"owner": owner.username, "name": name, "scopes": issued.credential.scopes})
    return issued


def _issue(
    session: Session,
    user: User,
    kind: CredentialKind,
    *,
    name: str = "",
    org_id: int | None = None,
    scopes: list[str] | None = None,
    ttl: dt.timedelta | None = None,
    created_by_id: int | None = None,
) -> IssuedCredential:
    new = security.new_credential(kind.value)
    cred = Credential(
        prefix=new.prefix,
        secret_hash=new.secret_hash,
        kind=kind.value,
        name=name,
        user_id=user.id,
        org_id=org_id,
        scopes=scopes or ["api"],
        created_by_id=created_by_id or user.id,
        expires_at=utcnow() + ttl if ttl else None,
    )
    session.add(cred)
    session.flush()
    return IssuedCredential(cred, new.plaintext)


def list_keys(session: Session, principal: Principal, org_name: str | None = None) -> Sequence[Credential]:
    """Your own keys; with ``org_name`` and the org_admin role, every key of the org."""
    q = select(Credential).options(selectinload(Credential.user), selectinload(Credential.org)).where(
        Credential.kind == CredentialKind.KEY.value).order_by(Credential.id)
    if org_name is not None:
        org = access.org_for_read(session, principal, org_name)
        q = q.where(Credential.org_id == org.id)
        if not (principal.is_platform_admin or principal.role_in(org.id) == Role.ORG_ADMIN):
            q = q.where(Credential.user_id == principal.user_id)
    else:
        q = q.where(Credential.user_id == principal.user_id)
    return session.scalars(q).all()


def revoke_key(session: Session, principal: Principal, prefix: str) -> Credential:
    cred = session.scalar(select(Credential).where(Credential.prefix == prefix,
                                                   Credential.kind == CredentialKind.KEY.value))
    allowed = cred is not None and (
        principal.is_platform_admin
        or cred.user_id == principal.user_id
        or (cred.org_id is not None and principal.role_in(cred.org_id) == Role.ORG_ADMIN)
    )
    if cred is None or not allowed:
        raise NotFound(f"key {prefix!r} not found", field="prefix")
    if cred.revoked_at is None:
        cred.revoked_at = utcnow()
    audit.record(session, principal, "key.revoke", target_type="key", target=prefix, org_id=cred.org_id)
    return cred


# -- authentication -------------------------------------------------------------------------------------------
def _throttle_key(username: str, source_ip: str) -> str:
    return f"{username}|{source_ip}"


def login(
    session: Session,
    username: str,
    password: str,
    *,
    kind: CredentialKind,
    ttl: dt.timedelta,
    source_ip: str,
    max_failures: int,
    lockout: dt.timedelta,
) -> IssuedCredential:
    """Check a password and issue a token (CLI) or a session (portal). Failures are throttled per user+address.

    The caller commits: on failure it must still commit the throttle counter and the audit event, which is why
    this function records them and then raises after ``session.commit()``.
    """
    now = utcnow()
    key = _throttle_key(username, source_ip)
    throttle = session.get(LoginThrottle, key)
    if throttle and throttle.locked_until and throttle.locked_until > now:
        wait = (throttle.locked_until - now).total_seconds()
        audit.record(session, None, "auth.login", target_type="user", target=username, actor=username,
                     outcome="throttled", source_ip=source_ip)
        session.commit()
        raise RateLimited("too many failed logins; try again later", retry_after=round(wait, 1))
    user = session.scalar(select(User).where(User.username == username))
    ok = (
        user is not None
        and user.status == Status.ACTIVE.value
        and security.verify_password(user.password_hash, password)
    )
    if user is None:
        security.dummy_password_check(password)
    if not ok or user is None:
        throttle = throttle or LoginThrottle(key=key, failures=0)
        throttle.failures += 1
        throttle.updated_at = now
        if throttle.failures >= max_failures:
            throttle.locked_until = now + lockout
            throttle.failures = 0
        session.merge(throttle)
        audit.record(session, None, "auth.login", target_type="user", target=username, actor=username,
                     outcome="denied", source_ip=source_ip)
        session.commit()
        raise AuthenticationRequired("wrong username or password")
    if throttle:
        session.delete(throttle)
    issued = _issue(session, user, kind, name=kind.value, ttl=ttl)
    audit.record(session, None, "auth.login", target_type="user", target=username, actor=username,
                 source_ip=source_ip, details={"kind": kind.value})
    return issued


def logout(session: Session, principal: Principal) -> None:
    if principal.credential_id is None or principal.credential_kind == CredentialKind.KEY.value:
        return
    cred = session.get(Credential, principal.credential_id)
    if cred is not None and cred.revoked_at is None:
        cred.revoked_at = utcnow()
    audit.record(session, principal, "auth.logout", target_type="user", target=principal.username)


@dataclass(frozen=True)
class AuthFailure:
    reason: str
    prefix: str | None = None


def authenticate(session: Session, presented: str, source_ip: str) -> Principal | AuthFailure:
    """Resolve a presented credential (key, token or session secret) to a Principal, or say why not."""
    parts = security.split_credential(presented)
    if parts is None:
        return AuthFailure("malformed credential")
    kind, prefix, secret = parts
    # one round trip: the credential, its user and their memberships (this runs on every request)
    cred = session.scalars(
        select(Credential).options(joinedload(Credential.user).joinedload(User.memberships))
        .where(Credential.prefix == prefix)
    ).unique().first()
    if cred is None or cred.kind != kind or not security.secret_matches(secret, cred.secret_hash):
        return AuthFailure("unknown credential", prefix)
    now = utcnow()
    if cred.revoked_at is not None:
        return AuthFailure("credential revoked", prefix)
    if cred.expires_at is not None and cred.expires_at <= now:
        return AuthFailure("credential expired", prefix)
    user = cred.user
    if user.status != Status.ACTIVE.value:
        return AuthFailure("user disabled", prefix)
    if cred.last_used_at is None or (now - cred.last_used_at).total_seconds() > 60:
        cred.last_used_at = now  # coarse, so a busy key does not write on every request
    access.keep_loaded(session, user)  # the caller's user, looked up again by a submit, costs no round trip
    return Principal(
        user_id=user.id,
        username=user.username,
        is_platform_admin=user.is_platform_admin,
        is_service_account=user.is_service_account,
        roles={m.org_id: Role(m.role) for m in user.memberships},
        credential_id=cred.id,
        credential_kind=cred.kind,
        scopes=tuple(cred.scopes or ()),
        bound_org_id=cred.org_id,
        source_ip=source_ip,
    )
