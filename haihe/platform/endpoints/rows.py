"""ORM rows of inference endpoints and their per-minute usage (requests, errors, latency per key).

An endpoint's *desired* state (model, scaling, batching) is written by the API; its *observed* state (state,
reason, the serving target of each generation) is written only by the endpoint supervisor.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import JSON, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from haihe.platform.db import Base
from haihe.platform.models import Org, User, UTCDateTime, utcnow


class Endpoint(Base):
    """A hosted model: a Ray Serve application or a Slurm serving job, behind the gateway."""

    __tablename__ = "endpoints"
    __table_args__ = (UniqueConstraint("org_id", "name", name="uq_endpoints_org_name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    org_id: Mapped[int] = mapped_column(ForeignKey("orgs.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(63))
    model_ref: Mapped[str] = mapped_column(String(200))  # as asked: org/name@alias or org/name:N
    model_version: Mapped[int] = mapped_column(Integer)  # the version it resolved to
    task: Mapped[str] = mapped_column(String(63), default="")
    scheduler: Mapped[str] = mapped_column(String(63))  # name in settings.schedulers
    backend: Mapped[str] = mapped_column(String(16))  # ray | slurm
    state: Mapped[str] = mapped_column(String(16), default="deploying")
    reason: Mapped[str] = mapped_column(Text, default="")
    min_replicas: Mapped[int] = mapped_column(Integer, default=1)
    max_replicas: Mapped[int] = mapped_column(Integer, default=1)
    max_batch_size: Mapped[int] = mapped_column(Integer, default=16)
    batch_wait_ms: Mapped[float] = mapped_column(Float, default=5.0)
    cpus_per_replica: Mapped[float] = mapped_column(Float, default=0.5)
    rate_per_s: Mapped[float | None] = mapped_column(Float, nullable=True)  # per key; None: gateway default
    burst: Mapped[int | None] = mapped_column(Integer, nullable=True)
    options: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # partition, gpus, time_limit_min
    generation: Mapped[int] = mapped_column(Integer, default=0)  # the generation serving now (0: none yet)
    target_generation: Mapped[int] = mapped_column(Integer, default=1)  # the one the supervisor works toward
    serving: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # gen -> {target, ref, address, ...}
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"), nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)

    org: Mapped[Org] = relationship()
    created_by: Mapped[User | None] = relationship()


class EndpointUsage(Base):
    """Served requests, errors and latency of one key on one endpoint in one minute, one row per flush."""

    __tablename__ = "endpoint_usage"
    __table_args__ = (Index("ix_endpoint_usage_ep_minute", "endpoint_id", "minute"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    endpoint_id: Mapped[int] = mapped_column(ForeignKey("endpoints.id", ondelete="CASCADE"))
    org_id: Mapped[int] = mapped_column(Integer)
    credential_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    key_prefix: Mapped[str] = mapped_column(String(32), default="")
    minute: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    requests: Mapped[int] = mapped_column(Integer, default=0)
    errors: Mapped[int] = mapped_column(Integer, default=0)
    latency_ms_sum: Mapped[float] = mapped_column(Float, default=0.0)
    latency_ms_max: Mapped[float] = mapped_column(Float, default=0.0)
    ref: Mapped[str] = mapped_column(String(200), unique=True)
