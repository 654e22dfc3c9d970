"""The seam between job/endpoint services and quotas: reserve before a scheduler is called, release or settle after.

The quotas service implements :class:`QuotaGate`; until it is configured the platform allows everything.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from sqlalchemy.orm import Session

from haihe.schedulers.base import JobStatus, Launch

if TYPE_CHECKING:
    from haihe.platform.models import Job


class QuotaGate(Protocol):
    def reserve(self, session: Session, job: Job, launch: Launch) -> None:
        """Reserve the job's maximum charge or raise QuotaExceeded; runs in the submit transaction."""

    def release(self, session: Session, job: Job) -> None:
        """The job never ran (refused by the scheduler, cancelled before dispatch): give the reservation back."""

    def settle(self, session: Session, job: Job, status: JobStatus) -> None:
        """The job ended: charge what the scheduler accounted, release the rest. Must be idempotent."""

    def settle_many(self, session: Session, ended: Sequence[tuple[Job, JobStatus]]) -> None:
        """``settle`` for every job one reconcile cycle saw end, in a few queries (10,000 may end at once)."""


class AllowAll:
    """The default gate: allows everything, records nothing."""

    def reserve(self, session: Session, job: Job, launch: Launch) -> None:
        return None

    def release(self, session: Session, job: Job) -> None:
        return None

    def settle(self, session: Session, job: Job, status: JobStatus) -> None:
        return None

    def settle_many(self, session: Session, ended: Sequence[tuple[Job, JobStatus]]) -> None:
        return None
