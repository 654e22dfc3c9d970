"""Routes: API keys (created shown once, listed by prefix, revoked) and the audit log."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from haihe import names
from haihe.errors import PermissionDenied
from haihe.platform import audit
from haihe.platform.access import org_for_admin
from haihe.platform.api.deps import CurrentPrincipal, SessionDep
from haihe.platform.identity import service as identity
from haihe.platform.identity.schemas import AuditPublic, KeyCreate, KeyIssued, KeyPublic

router = APIRouter(prefix="/api/v1", tags=["keys"])


@router.post("/keys", operation_id="keys_create", status_code=201, response_model=KeyIssued)
def create_key(body: KeyCreate, principal: CurrentPrincipal, session: SessionDep) -> KeyIssued:
    issued = identity.create_key(session, principal, body.org, body.name, body.username, body.scopes,
                                 body.expires_in_days)
    session.flush()
    session.refresh(issued.credential, ["user", "org"])
    return KeyIssued(**KeyPublic.of(issued.credential).model_dump(), key=issued.plaintext)


@router.get("/keys", operation_id="keys_list", response_model=list[KeyPublic])
def list_keys(principal: CurrentPrincipal, session: SessionDep,
              org: Annotated[str | None, Query(max_length=63)] = None) -> list[KeyPublic]:
    return [KeyPublic.of(c) for c in identity.list_keys(session, principal, org)]


@router.delete("/keys/{prefix}", operation_id="keys_revoke", response_model=KeyPublic)
def revoke_key(prefix: str, principal: CurrentPrincipal, session: SessionDep) -> KeyPublic:
    cred = identity.revoke_key(session, principal, prefix)
    return KeyPublic.of(cred)


@router.get("/audit", operation_id="audit_search", response_model=list[AuditPublic])
def search_audit(
    principal: CurrentPrincipal,
    session: SessionDep,
    org: Annotated[str | None, Query(max_length=63)] = None,
    action: Annotated[str | None, Query(max_length=64)] = None,
    actor: Annotated[str | None, Query(max_length=100)] = None,
    before: Annotated[int | None, Query(ge=1, le=names.MAX_ROW_ID)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> list[AuditPublic]:
    """Platform admins see everything; an org admin sees the events of the orgs they administer (or of ``org``)."""
    if org is not None:
        org_ids: set[int] | None = {org_for_admin(session, principal, org, write=False).id}
    else:
        org_ids = principal.administered_org_ids()
        if org_ids is not None and not org_ids:
            raise PermissionDenied("the audit log is for org admins: you administer no org")
    rows = audit.search(session, org_ids=org_ids, action=action, actor=actor, before_id=before, limit=limit)
    return [AuditPublic.model_validate(r) for r in rows]
