"""ORM rows of identity, tenancy and audit. Rows are not API schemas: see ``api/schemas.py`` for those."""

from __future__ import annotations

import datetime as dt
import enum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import Mapped, mapped_column, relationship

from haihe.platform.db import Base


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Timezone-aware UTC on every backend (SQLite drops the zone; this puts it back)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(dt.UTC)

    def process_result_value(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


class Role(str, enum.Enum):
    """A user's role in one org. Platform admins are marked on the user, not per org."""

    ORG_ADMIN = "org_admin"
    RESEARCHER = "researcher"
    SERVICE_ACCOUNT = "service_account"


class Status(str, enum.Enum):
    ACTIVE = "active"
    DISABLED = "disabled"
    SUSPENDED = "suspended"  # orgs only: read-only until resumed (quotas issue)


class CredentialKind(str, enum.Enum):
    KEY = "key"  # API key: long-lived, shown once, scoped
    TOKEN = "token"  # issued by `haihe login`
    SESSION = "session"  # portal session cookie


class Org(Base):
    __tablename__ = "orgs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    display_name: Mapped[str] = mapped_column(String(200), default="")
    status: Mapped[str] = mapped_column(String(16), default=Status.ACTIVE.value)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)

    projects: Mapped[list[Project]] = relationship(back_populates="org")


class Project(Base):
    __tablename__ = "projects"
    __table_args__ = (UniqueConstraint("org_id", "name", name="uq_projects_org_name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    org_id: Mapped[int] = mapped_column(ForeignKey("orgs.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(63))
    description: Mapped[str] = mapped_column(Text, default="")
    status: Mapped[str] = mapped_column(String(16), default=Status.ACTIVE.value)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)

    org: Mapped[Org] = relationship(back_populates="projects")


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(63), unique=True)
    display_name: Mapped[str] = mapped_column(String(200), default="")
    email: Mapped[str] = mapped_column(String(254), default="")
    password_hash: Mapped[str | None] = mapped_column(String(255), nullable=True)
    is_service_account: Mapped[bool] = mapped_column(Boolean, default=False)
    is_platform_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    status: Mapped[str] = mapped_column(String(16), default=Status.ACTIVE.value)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)

    memberships: Mapped[list[Membership]] = relationship(back_populates="user", cascade="all, delete-orphan")


class Membership(Base):
    __tablename__ = "memberships"
    __table_args__ = (UniqueConstraint("user_id", "org_id", name="uq_memberships_user_org"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    org_id: Mapped[int] = mapped_column(ForeignKey("orgs.id", ondelete="CASCADE"), index=True)
    role: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)

    user: Mapped[User] = relationship(back_populates="memberships")
    org: Mapped[Org] = relationship()


class UnixAccount(Base):
    """Which Unix account a platform user's jobs run as in one org (``hh-<org>-<user>`` made locally, or a site's
    own account mapped by an admin). Schedulers that run jobs as a user (Slurm) need one; Ray does not."""

    __tablename__ = "unix_accounts"
    __table_args__ = (UniqueConstraint("user_id", "org_id", name="uq_unix_accounts_user_org"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    org_id: Mapped[int] = mapped_column(ForeignKey("orgs.id", ondelete="CASCADE"), index=True)
    unix_name: Mapped[str] = mapped_column(String(32))
    origin: Mapped[str] = mapped_column(String(16))  # local (created by the platform) | site (mapped by an admin)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Credential(Base):
    """API keys, login tokens and portal sessions: stored as a visible prefix plus a hash of the secret."""

    __tablename__ = "credentials"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    prefix: Mapped[str] = mapped_column(String(32), unique=True)
    secret_hash: Mapped[str] = mapped_column(String(128))
    kind: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(100), default="")
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    org_id: Mapped[int | None] = mapped_column(ForeignKey("orgs.id", ondelete="CASCADE"), nullable=True)
    scopes: Mapped[list[str]] = mapped_column(JSON, default=list)
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"), nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    expires_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    last_used_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)

    user: Mapped[User] = relationship(foreign_keys=[user_id])
    org: Mapped[Org | None] = relationship()


class LoginThrottle(Base):
    """Failed logins per (username, address): brute force is throttled across processes."""

    __tablename__ = "login_throttle"

    key: Mapped[str] = mapped_column(String(400), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    locked_until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Lease(Base):
    """A named lease: the one API process that holds ``platform-leader`` runs the background work (reconciler,
    endpoint supervisor, maintenance); the others serve requests. Taken and renewed by one conditional UPDATE."""

    __tablename__ = "leases"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(128))
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())


class AuditEvent(Base):
    """Who did what to which target, when, from where, and how it ended. Append-only."""

    __tablename__ = "audit_events"
    __table_args__ = (Index("ix_audit_org_at", "org_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)
    actor_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    actor: Mapped[str] = mapped_column(String(100), default="")
    action: Mapped[str] = mapped_column(String(64), index=True)
    target_type: Mapped[str] = mapped_column(String(32), default="")
    target: Mapped[str] = mapped_column(String(255), default="")
    org_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    source_ip: Mapped[str] = mapped_column(String(64), default="")
    outcome: Mapped[str] = mapped_column(String(16), default="ok")
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class Job(Base):
    """A job: its UUID is the scheduler tag, committed (PENDING) before any scheduler is called."""

    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("user_id", "idempotency_key", name="uq_jobs_user_idempotency"),
        Index("ix_jobs_project_created", "project_id", "created_at", "id"),
        Index("ix_jobs_org_created", "org_id", "created_at", "id"),
        Index("ix_jobs_sched_state", "scheduler", "state"),
        Index("ix_jobs_dataset_ref", "dataset_ref"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    org_id: Mapped[int] = mapped_column(ForeignKey("orgs.id", ondelete="CASCADE"))
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(63))
    kind: Mapped[str] = mapped_column(String(16))
    scheduler: Mapped[str] = mapped_column(String(63))
    native_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    state: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(Text, default="")
    exit_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)  # the spec as submitted (validated), nothing added
    code_uri: Mapped[str | None] = mapped_column(String(1024), nullable=True)  # s3://… of the packed workdir
    dataset_ref: Mapped[str | None] = mapped_column(String(200), nullable=True)  # org/name@vN resolved at submit
    # the job's own Python environment as its nodes resolved it: sha256:<hex> of the lock, and the lock (resubmit)
    environment_ref: Mapped[str | None] = mapped_column(String(80), nullable=True)
    environment_lock: Mapped[str | None] = mapped_column(Text, nullable=True)
    idempotency_key: Mapped[str | None] = mapped_column(String(128), nullable=True)
    array_size: Mapped[int] = mapped_column(Integer, default=1)
    nodes: Mapped[list[str]] = mapped_column(JSON, default=list)
    queue_position: Mapped[int | None] = mapped_column(Integer, nullable=True)
    submit_attempts: Mapped[int] = mapped_column(Integer, default=0)
    # a submitter's lease on a stored job (dispatcher or reconciler, any process): until then no one else submits it
    submit_claimed_until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    attempt: Mapped[int] = mapped_column(Integer, default=1, server_default="1")  # 2.. after a lost attempt
    resubmitted_from: Mapped[str | None] = mapped_column(String(36), nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    submitted_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    started_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    ended_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    elapsed_s: Mapped[float | None] = mapped_column(nullable=True)
    alloc_cpus: Mapped[int | None] = mapped_column(Integer, nullable=True)
    alloc_gpus: Mapped[int | None] = mapped_column(Integer, nullable=True)

    org: Mapped[Org] = relationship()
    project: Mapped[Project] = relationship()
    user: Mapped[User] = relationship()


class JobEvent(Base):
    """The timeline of a job: created, submitted, queued (reason, position), started on nodes, requeued, ended."""

    __tablename__ = "job_events"
    __table_args__ = (Index("ix_job_events_job", "job_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    kind: Mapped[str] = mapped_column(String(32))
    state: Mapped[str] = mapped_column(String(16), default="")
    message: Mapped[str] = mapped_column(Text, default="")
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class JobEnvironment(Base):
    """One built job environment (spec ``environment:``) where a node reported it: the org's storage it holds, when
    it was last used. Rows come from the runtimes' reports; ``pruned_at`` once a node removed it."""

    __tablename__ = "job_environments"
    __table_args__ = (UniqueConstraint("org_id", "ref", "location", name="uq_job_environments_place"),
                      Index("ix_job_environments_org", "org_id", "pruned_at"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    org_id: Mapped[int] = mapped_column(ForeignKey("orgs.id", ondelete="CASCADE"))
    ref: Mapped[str] = mapped_column(String(80))
    location: Mapped[str] = mapped_column(String(400))  # node:path of the environment
    bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    first_job_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    jobs: Mapped[int] = mapped_column(Integer, default=0)  # jobs that used it here
    built_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_used_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    pruned_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class Quota(Base):
    """Limits of an org (project_id NULL) or of one project inside it; NULL means unlimited."""

    __tablename__ = "quotas"
    __table_args__ = (UniqueConstraint("org_id", "project_id", name="uq_quotas_scope"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    org_id: Mapped[int] = mapped_column(ForeignKey("orgs.id", ondelete="CASCADE"))
    project_id: Mapped[int | None] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), nullable=True)
    gpu_hours: Mapped[float | None] = mapped_column(nullable=True)
    cpu_hours: Mapped[float | None] = mapped_column(nullable=True)
    storage_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    requests_per_month: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    max_jobs: Mapped[int | None] = mapped_column(Integer, nullable=True)
    max_gpus: Mapped[int | None] = mapped_column(Integer, nullable=True)
    period: Mapped[str] = mapped_column(String(16), default="monthly")
    warn_fraction: Mapped[float] = mapped_column(default=0.8)
    version: Mapped[int] = mapped_column(Integer, default=0)  # bumped by every reservation: the lock row
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class LedgerEntry(Base):
    """Append-only ledger. Balances are sums: reserved = Σ reserve (releases are negative), used = Σ charge.

    ``ref`` makes an entry idempotent: settling a job twice hits the unique constraint instead of charging twice.
    """

    __tablename__ = "ledger"
    __table_args__ = (
        Index("ix_ledger_org_period", "org_id", "period", "resource"),
        Index("ix_ledger_job", "job_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    period: Mapped[str] = mapped_column(String(7))  # YYYY-MM of the charge
    org_id: Mapped[int] = mapped_column(ForeignKey("orgs.id", ondelete="CASCADE"))
    project_id: Mapped[int | None] = mapped_column(ForeignKey("projects.id", ondelete="SET NULL"), nullable=True)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"), nullable=True)
    job_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    endpoint: Mapped[str | None] = mapped_column(String(63), nullable=True)
    kind: Mapped[str] = mapped_column(String(16))  # reserve | charge
    resource: Mapped[str] = mapped_column(String(16))  # gpu_s | cpu_s | requests | storage_bytes
    amount: Mapped[float] = mapped_column()
    source: Mapped[str] = mapped_column(String(16), default="training")  # training | inference | storage
    ref: Mapped[str | None] = mapped_column(String(200), unique=True, nullable=True)
    note: Mapped[str] = mapped_column(Text, default="")


class QuotaEvent(Base):
    """A quota crossing its warning level or hitting its limit, once per scope, resource, level and period."""

    __tablename__ = "quota_events"
    __table_args__ = (UniqueConstraint("org_id", "project_id", "resource", "level", "period",
                                       name="uq_quota_events_once"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    org_id: Mapped[int] = mapped_column(ForeignKey("orgs.id", ondelete="CASCADE"))
    project_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    resource: Mapped[str] = mapped_column(String(16))
    level: Mapped[str] = mapped_column(String(16))  # warning | limit
    period: Mapped[str] = mapped_column(String(7))
    message: Mapped[str] = mapped_column(Text, default="")
