"""Tenant and role checks: the ONE place that decides who may read or change which org's resources.

Rules: a platform admin may do anything. Everyone else acts only inside orgs they belong to; a credential bound to
an org (service-account keys) acts only in that org. Something in an org you cannot see does not exist for you
(404, never 403, so names do not leak); inside your org a missing role is a 403. A suspended or disabled org is
read-only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session

from haihe.errors import NotFound, PermissionDenied
from haihe.platform.models import Org, Project, Role, Status

# what each role may do inside its org, strongest first
WRITE_ROLES = frozenset({Role.ORG_ADMIN, Role.RESEARCHER, Role.SERVICE_ACCOUNT})  # roles that may change things


@dataclass(frozen=True)
class Principal:
    """Who is calling, resolved once per request from a session cookie, token or API key."""

    user_id: int
    username: str
    is_platform_admin: bool = False
    is_service_account: bool = False
    roles: Mapping[int, Role] = field(default_factory=dict)  # org id -> role
    credential_id: int | None = None
    credential_kind: str = ""
    scopes: tuple[str, ...] = ()
    bound_org_id: int | None = None  # a credential bound to one org acts only there
    source_ip: str = ""

    def role_in(self, org_id: int) -> Role | None:
        if self.bound_org_id is not None and org_id != self.bound_org_id:
            return None
        return self.roles.get(org_id)

    def can_see_org(self, org_id: int) -> bool:
        if self.bound_org_id is not None and org_id != self.bound_org_id:
            return False
        return self.is_platform_admin or org_id in self.roles

    def visible_org_ids(self) -> set[int] | None:
        """None means every org (platform admin)."""
        if self.is_platform_admin and self.bound_org_id is None:
            return None
        ids = set(self.roles)
        if self.bound_org_id is not None:
            ids &= {self.bound_org_id}
        return ids

    def administered_org_ids(self) -> set[int] | None:
        """The orgs whose administration the caller may read (audit, usage); None means every org."""
        if self.is_platform_admin:
            return None if self.bound_org_id is None else {self.bound_org_id}
        return {o for o in self.roles if self.role_in(o) == Role.ORG_ADMIN}


def require_platform_admin(principal: Principal) -> None:
    if not principal.is_platform_admin:
        raise PermissionDenied("this action needs a platform administrator")


def _org_by_name(session: Session, name: str) -> Org | None:
    return session.scalar(select(Org).where(Org.name == name))


def org_for_read(session: Session, principal: Principal, org_name: str) -> Org:
    org = _org_by_name(session, org_name)
    if org is None or not principal.can_see_org(org.id):
        raise NotFound(f"org {org_name!r} not found", field="org")
    return org


def _ensure_writable(org: Org) -> None:
    if org.status != Status.ACTIVE.value:
        raise PermissionDenied(f"org {org.name!r} is {org.status}: read-only", field="org")


def org_for_admin(session: Session, principal: Principal, org_name: str, *, write: bool = True) -> Org:
    """The org, if the caller administers it (platform admin or the org's org admin); ``write`` needs it active."""
    org = org_for_read(session, principal, org_name)
    if principal.is_platform_admin and principal.bound_org_id in (None, org.id):
        return org
    if principal.role_in(org.id) != Role.ORG_ADMIN:
        raise PermissionDenied(f"this action needs the org_admin role in {org_name!r}")
    if write:
        _ensure_writable(org)
    return org


def _check_org_write(principal: Principal, org: Org) -> None:
    if not (principal.is_platform_admin or principal.role_in(org.id) in WRITE_ROLES):
        raise PermissionDenied(f"your role in {org.name!r} cannot change anything")
    _ensure_writable(org)


def org_for_write(session: Session, principal: Principal, org_name: str) -> Org:
    """The org, if the caller may create resources in it (any member role; active org)."""
    org = org_for_read(session, principal, org_name)
    _check_org_write(principal, org)
    return org


def keep_loaded(session: Session, *rows: object) -> None:
    """Hold ``rows`` for the rest of the session: its identity map is weak, and a row nothing refers to is read
    again by the next lookup (a job's org, project or submitter) in the same request."""
    session.info.setdefault("loaded", []).extend(rows)


def _org_and_project(session: Session, principal: Principal, org_name: str,
                     project_name: str) -> tuple[Org, Project | None]:
    """The org and its project in one round trip (every job submit and listing starts here)."""
    row = session.execute(
        select(Org, Project).outerjoin(Project, (Project.org_id == Org.id) & (Project.name == project_name))
        .where(Org.name == org_name)).first()
    if row is None or not principal.can_see_org(row[0].id):
        raise NotFound(f"org {org_name!r} not found", field="org")
    keep_loaded(session, *row)
    return row[0], row[1]


def _found(project: Project | None, org_name: str, project_name: str) -> Project:
    if project is None:
        raise NotFound(f"project {org_name}/{project_name} not found", field="project")
    return project


def project_for_read(session: Session, principal: Principal, org_name: str, project_name: str) -> Project:
    return _found(_org_and_project(session, principal, org_name, project_name)[1], org_name, project_name)


def project_for_write(session: Session, principal: Principal, org_name: str, project_name: str) -> Project:
    org, found = _org_and_project(session, principal, org_name, project_name)
    _check_org_write(principal, org)
    project = _found(found, org_name, project_name)
    if project.status != Status.ACTIVE.value:
        raise PermissionDenied(f"project {org_name}/{project_name} is {project.status}: read-only")
    return project
