"""Routes: orgs, projects, users and memberships. Thin: body → service → schema."""

from __future__ import annotations

from fastapi import APIRouter

from haihe.platform.api.deps import CtxDep, CurrentPrincipal, SessionDep
from haihe.platform.identity import service as identity
from haihe.platform.identity import unix_accounts
from haihe.platform.identity.schemas import (
    MemberCreate,
    OrgCreate,
    OrgPublic,
    ProjectCreate,
    ProjectPublic,
    StatusUpdate,
    UnixAccountMap,
    UnixAccountPublic,
    UserCreate,
    UserPublic,
)
from haihe.platform.models import Role, Status

router = APIRouter(prefix="/api/v1", tags=["tenancy"])


@router.post("/orgs", operation_id="orgs_create", status_code=201, response_model=OrgPublic)
def create_org(body: OrgCreate, principal: CurrentPrincipal, session: SessionDep) -> OrgPublic:
    return OrgPublic.of(identity.create_org(session, principal, body.name, body.display_name))


@router.get("/orgs", operation_id="orgs_list", response_model=list[OrgPublic])
def list_orgs(principal: CurrentPrincipal, session: SessionDep) -> list[OrgPublic]:
    return [OrgPublic.of(o) for o in identity.list_orgs(session, principal)]


@router.get("/orgs/{org}", operation_id="orgs_get", response_model=OrgPublic)
def get_org(org: str, principal: CurrentPrincipal, session: SessionDep) -> OrgPublic:
    return OrgPublic.of(identity.get_org(session, principal, org))


@router.put("/orgs/{org}/status", operation_id="orgs_set_status", response_model=OrgPublic)
def set_org_status(org: str, body: StatusUpdate, principal: CurrentPrincipal, session: SessionDep) -> OrgPublic:
    return OrgPublic.of(identity.set_org_status(session, principal, org, Status(body.status)))


@router.post("/orgs/{org}/projects", operation_id="projects_create", status_code=201, response_model=ProjectPublic)
def create_project(org: str, body: ProjectCreate, principal: CurrentPrincipal, session: SessionDep) -> ProjectPublic:
    return ProjectPublic.of(identity.create_project(session, principal, org, body.name, body.description))


@router.get("/orgs/{org}/projects", operation_id="projects_list", response_model=list[ProjectPublic])
def list_projects(org: str, principal: CurrentPrincipal, session: SessionDep) -> list[ProjectPublic]:
    return [ProjectPublic.of(p) for p in identity.list_projects(session, principal, org)]


@router.get("/orgs/{org}/projects/{project}", operation_id="projects_get", response_model=ProjectPublic)
def get_project(org: str, project: str, principal: CurrentPrincipal, session: SessionDep) -> ProjectPublic:
    return ProjectPublic.of(identity.get_project(session, principal, org, project))


@router.put("/orgs/{org}/projects/{project}/status", operation_id="projects_set_status",
            response_model=ProjectPublic)
def set_project_status(org: str, project: str, body: StatusUpdate, principal: CurrentPrincipal,
                       session: SessionDep) -> ProjectPublic:
    return ProjectPublic.of(identity.set_project_status(session, principal, org, project, Status(body.status)))


@router.post("/orgs/{org}/users", operation_id="org_users_create", status_code=201, response_model=UserPublic)
def create_user(org: str, body: UserCreate, principal: CurrentPrincipal, session: SessionDep,
                ctx: CtxDep) -> UserPublic:
    user = identity.create_user(session, principal, org, body.username, Role(body.role), body.password,
                                body.display_name, body.email)
    session.flush()
    unix_accounts.on_member_added(ctx, session, org, body.username)
    session.refresh(user, ["memberships"])
    return UserPublic.of(user)


@router.post("/orgs/{org}/members", operation_id="org_members_add", status_code=201, response_model=UserPublic)
def add_member(org: str, body: MemberCreate, principal: CurrentPrincipal, session: SessionDep,
               ctx: CtxDep) -> UserPublic:
    identity.add_member(session, principal, org, body.username, Role(body.role))
    session.flush()
    unix_accounts.on_member_added(ctx, session, org, body.username)
    user = identity.get_user(session, principal, body.username)
    session.refresh(user, ["memberships"])
    return UserPublic.of(user)


@router.get("/orgs/{org}/users", operation_id="org_users_list", response_model=list[UserPublic])
def list_org_users(org: str, principal: CurrentPrincipal, session: SessionDep) -> list[UserPublic]:
    return [UserPublic.of(u) for u in identity.list_users(session, principal, org)]


@router.get("/users", operation_id="users_list", response_model=list[UserPublic])
def list_users(principal: CurrentPrincipal, session: SessionDep) -> list[UserPublic]:
    return [UserPublic.of(u) for u in identity.list_users(session, principal)]


@router.get("/users/{username}", operation_id="users_get", response_model=UserPublic)
def get_user(username: str, principal: CurrentPrincipal, session: SessionDep) -> UserPublic:
    return UserPublic.of(identity.get_user(session, principal, username))


@router.put("/users/{username}/status", operation_id="users_set_status", response_model=UserPublic)
def set_user_status(username: str, body: StatusUpdate, principal: CurrentPrincipal,
                    session: SessionDep) -> UserPublic:
    return UserPublic.of(identity.set_user_status(session, principal, username, Status(body.status)))


@router.put("/orgs/{org}/users/{username}/unix-account", operation_id="org_users_map_unix",
            response_model=UnixAccountPublic)
def map_unix_account(org: str, username: str, body: UnixAccountMap, principal: CurrentPrincipal,
                     session: SessionDep) -> UnixAccountPublic:
    """Platform admins: the Unix account this member's jobs run as on the cluster (``unix_accounts=site``)."""
    row = unix_accounts.map_user(session, principal, org, username, body.unix_name)
    return UnixAccountPublic(org=org, username=username, unix_name=row.unix_name, origin=row.origin)
