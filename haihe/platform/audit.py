"""The audit log: every admin and security event — who, what, target, when, from where, outcome.

Successful acts are recorded in the same transaction as the change (both or neither). Refusals (a bad password,
a revoked key, a cross-tenant probe) are recorded in a transaction of their own, because the request's own
transaction is rolled back with the error.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from haihe.platform.access import Principal
from haihe.platform.models import AuditEvent

_SECRET_WORDS = ("password", "secret", "token", "key_plaintext", "authorization")


def _scrub(details: dict[str, Any]) -> dict[str, Any]:
    """Drop anything that looks like a secret: the audit log must never hold one."""
    return {k: v for k, v in details.items() if not any(w in k.lower() for w in _SECRET_WORDS)}


def record(
    session: Session,
    principal: Principal | None,
    action: str,
    *,
    target_type: str = "",
    target: str = "",
    org_id: int | None = None,
    outcome: str = "ok",
    source_ip: str = "",
    actor: str = "",
    details: dict[str, Any] | None = None,
) -> AuditEvent:
    event = AuditEvent(
        actor_id=principal.user_id if principal else None,
        actor=principal.username if principal else actor,
        action=action,
        target_type=target_type,
        target=target[:255],
        org_id=org_id,
        source_ip=(principal.source_ip if principal and not source_ip else source_ip)[:64],
        outcome=outcome,
        details=_scrub(details or {}),
    )
    session.add(event)
    return event


def record_separately(sessions: sessionmaker[Session], principal: Principal | None, action: str, **kw: Any) -> None:
    """Record a refusal in its own committed transaction."""
    with sessions() as s:
        record(s, principal, action, **kw)
        s.commit()


def search(
    session: Session,
    *,
    org_ids: set[int] | None,
    action: str | None = None,
    actor: str | None = None,
    before_id: int | None = None,
    limit: int = 50,
) -> Sequence[AuditEvent]:
    """Newest first, keyset-paginated by id; ``org_ids`` None means every org (platform admins)."""
    q = select(AuditEvent).order_by(AuditEvent.id.desc()).limit(limit)
    if org_ids is not None:
        q = q.where(AuditEvent.org_id.in_(org_ids))
    if action:  # "quota" finds quota.set; "job.sub" finds job.submit: what people type, not the exact name
        q = q.where(AuditEvent.action.contains(action, autoescape=True))
    if actor:
        q = q.where(AuditEvent.actor == actor)
    if before_id is not None:
        q = q.where(AuditEvent.id < before_id)
    return session.scalars(q).all()
