"""ORM rows of datasets: the dataset, its versions (the DB allocates numbers and tracks uploads) and shares.

The bytes and manifests live in S3 (``haihe.datasets``); these rows hold what the platform decides: who owns a
dataset, who may see it, which version numbers exist and in what state. Lineage to jobs is read from the jobs'
job row (``job.dataset_ref`` = ``org/name@vN``, resolved at submit); lineage to models from the zoo.
"""

from __future__ import annotations

import datetime as dt
import enum

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from haihe.platform.db import Base
from haihe.platform.models import Org, User, UTCDateTime, utcnow


class Visibility(str, enum.Enum):
    """Who may read a dataset (besides orgs it is explicitly shared with)."""

    PRIVATE = "private"  # its creator and the owner org's admins
    ORG = "org"  # every member of the owner org
    PUBLIC = "public"  # everyone with an account


class VersionState(str, enum.Enum):
    UPLOADING = "uploading"
    COMMITTED = "committed"
    ABORTED = "aborted"


class Dataset(Base):
    """A named dataset of one org. Soft-deleted rows keep their name until GC removes their objects and the row."""

    __tablename__ = "datasets"
    __table_args__ = (
        UniqueConstraint("org_id", "name", name="uq_datasets_org_name"),
        Index("ix_datasets_visibility", "visibility"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    org_id: Mapped[int] = mapped_column(ForeignKey("orgs.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    description: Mapped[str] = mapped_column(Text, default="")
    licence: Mapped[str] = mapped_column(String(200), default="")
    visibility: Mapped[str] = mapped_column(String(16), default=Visibility.PRIVATE.value)
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"), nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    deleted_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True, index=True)

    org: Mapped[Org] = relationship()
    created_by: Mapped[User | None] = relationship()
    versions: Mapped[list[DatasetVersion]] = relationship(
        back_populates="dataset", cascade="all, delete-orphan", order_by="DatasetVersion.number"
    )
    shares: Mapped[list[DatasetShare]] = relationship(back_populates="dataset", cascade="all, delete-orphan")


class DatasetVersion(Base):
    """Version ``number`` of a dataset: allocated here (never reused), committed when its manifest is in S3."""

    __tablename__ = "dataset_versions"
    __table_args__ = (
        UniqueConstraint("dataset_id", "number", name="uq_dataset_versions_number"),
        UniqueConstraint("upload_id", name="uq_dataset_versions_upload_id"),
        Index("ix_dataset_versions_state", "state", "created_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"))
    number: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16), default=VersionState.UPLOADING.value)
    upload_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    note: Mapped[str] = mapped_column(Text, default="")
    total_bytes: Mapped[int] = mapped_column(BigInteger, default=0)  # declared at start, confirmed at commit
    files: Mapped[int] = mapped_column(Integer, default=0)
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"), nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    committed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)

    dataset: Mapped[Dataset] = relationship(back_populates="versions")
    created_by: Mapped[User | None] = relationship()


class DatasetShare(Base):
    """Read access to a dataset for every member of another org."""

    __tablename__ = "dataset_shares"
    __table_args__ = (UniqueConstraint("dataset_id", "org_id", name="uq_dataset_shares_dataset_org"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"))
    org_id: Mapped[int] = mapped_column(ForeignKey("orgs.id", ondelete="CASCADE"), index=True)
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"), nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)

    dataset: Mapped[Dataset] = relationship(back_populates="shares")
    org: Mapped[Org] = relationship()
