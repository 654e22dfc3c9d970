"""API schemas of identity and tenancy (setup, login, orgs, projects, users, keys, audit), with explicit
converters from ORM rows; shared by the auth, tenancy and keys routers and the SDK.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import Field, StringConstraints

from haihe.platform.api.schemas import Body, Name, Out, Password, RoleName

if TYPE_CHECKING:
    from haihe.platform.models import Credential, Membership, Org, Project, User


# -- auth -----------------------------------------------------------------------------------------------------
class SetupCreate(Body):
    username: Name
    password: Password


class LoginCreate(Body):
    username: Name
    password: Password


class TokenPublic(Out):
    token: str = Field(description="Shown once. Send as `Authorization: Bearer <token>`.")
    prefix: str
    expires_at: dt.datetime | None


class MembershipPublic(Out):
    org: str
    role: RoleName

    @classmethod
    def of(cls, m: Membership) -> MembershipPublic:
        return cls(org=m.org.name, role=m.role)


class UserPublic(Out):
    username: str
    display_name: str
    email: str
    is_platform_admin: bool
    is_service_account: bool
    status: str
    created_at: dt.datetime
    memberships: list[MembershipPublic]

    @classmethod
    def of(cls, u: User) -> UserPublic:
        return cls(
            username=u.username,
            display_name=u.display_name,
            email=u.email,
            is_platform_admin=u.is_platform_admin,
            is_service_account=u.is_service_account,
            status=u.status,
            created_at=u.created_at,
            memberships=[MembershipPublic.of(m) for m in u.memberships],
        )


class WhoAmI(Out):
    user: UserPublic
    credential_kind: str
    scopes: list[str]
    bound_org: str | None


# -- orgs and projects ----------------------------------------------------------------------------------------
class OrgCreate(Body):
    name: Name
    display_name: Annotated[str, StringConstraints(max_length=200)] = ""


class OrgPublic(Out):
    name: str
    display_name: str
    status: str
    created_at: dt.datetime

    @classmethod
    def of(cls, o: Org) -> OrgPublic:
        return cls.model_validate(o)


class StatusUpdate(Body):
    status: Literal["active", "disabled", "suspended"]


class ProjectCreate(Body):
    name: Name
    description: Annotated[str, StringConstraints(max_length=2000)] = ""


class ProjectPublic(Out):
    org: str
    name: str
    description: str
    status: str
    created_at: dt.datetime

    @classmethod
    def of(cls, p: Project) -> ProjectPublic:
        return cls(org=p.org.name, name=p.name, description=p.description, status=p.status,
                   created_at=p.created_at)


class UserCreate(Body):
    username: Name
    role: RoleName = "researcher"
    password: Password | None = None
    display_name: Annotated[str, StringConstraints(max_length=200)] = ""
    email: Annotated[str, StringConstraints(max_length=254)] = ""


class MemberCreate(Body):
    username: Name
    role: RoleName = "researcher"


class UnixAccountMap(Body):
    unix_name: Annotated[str, StringConstraints(min_length=1, max_length=32)] = Field(
        description="An existing Unix account on the cluster's nodes (getent passwd).")


class UnixAccountPublic(Out):
    org: str
    username: str
    unix_name: str
    origin: str


# -- keys -----------------------------------------------------------------------------------------------------
class KeyCreate(Body):
    org: Name
    name: Annotated[str, StringConstraints(min_length=1, max_length=100)]
    username: Name | None = Field(None, description="Owner; default the caller. Org admins may name a service account.")
    scopes: list[Annotated[str, StringConstraints(max_length=80)]] = Field(default_factory=lambda: ["api"],
                                                                          max_length=20)
    expires_in_days: int | None = Field(None, ge=1, le=3650)


class KeyPublic(Out):
    prefix: str
    name: str
    owner: str
    org: str | None
    scopes: list[str]
    created_at: dt.datetime
    expires_at: dt.datetime | None
    revoked_at: dt.datetime | None
    last_used_at: dt.datetime | None

    @classmethod
    def of(cls, c: Credential) -> KeyPublic:
        return cls(prefix=c.prefix, name=c.name, owner=c.user.username, org=c.org.name if c.org else None,
                   scopes=list(c.scopes or []), created_at=c.created_at, expires_at=c.expires_at,
                   revoked_at=c.revoked_at, last_used_at=c.last_used_at)


class KeyIssued(KeyPublic):
    key: str = Field(description="The secret, shown once; store it now.")


# -- audit ----------------------------------------------------------------------------------------------------
class AuditPublic(Out):
    id: int
    at: dt.datetime
    actor: str
    action: str
    target_type: str
    target: str
    source_ip: str
    outcome: str
    details: dict[str, object]


