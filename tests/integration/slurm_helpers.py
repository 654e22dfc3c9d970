"""Shared pieces of the Slurm integration tests: a scheduler per transport and a Launch factory."""

from __future__ import annotations

import uuid
from typing import Any

from haihe.schedulers.base import Launch, Resources
from haihe.schedulers.registry import create_scheduler
from haihe.schedulers.slurm.scheduler import SlurmScheduler

TRANSPORTS = ("cli", "rest")


def scheduler_for(cluster: Any, transport: str) -> SlurmScheduler:
    sched = create_scheduler(cluster.scheduler_url(transport))
    assert isinstance(sched, SlurmScheduler)
    return sched


def launch(command: tuple[str, ...], **fields: Any) -> Launch:
    fields.setdefault("resources", Resources(time_limit_min=5))
    fields.setdefault("name", "test-job")
    return Launch(tag=f"t-{uuid.uuid4().hex}", command=command, **fields)
