"""The backend-neutral scheduler contract, run against the real local Ray head."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from haihe.cluster.ray_head import RayHead
from haihe.schedulers.base import Launch, Resources
from haihe.schedulers.ray.backend import RayScheduler
from haihe.schedulers.registry import create_scheduler
from tests.contract.scheduler_contract import MakeLaunch, SchedulerContract

pytestmark = pytest.mark.ray


@pytest.fixture
def scheduler(ray_head: RayHead) -> Iterator[RayScheduler]:
    sched = create_scheduler(ray_head.scheduler_url)
    assert isinstance(sched, RayScheduler)
    yield sched
    sched.close()


@pytest.fixture
def make_launch() -> MakeLaunch:
    def make(command: tuple[str, ...], **fields: Any) -> Launch:
        tag = f"contract-{uuid.uuid4().hex}"
        fields.setdefault("resources", Resources(cpus_per_task=1, time_limit_min=10))
        return Launch(tag=tag, name=fields.pop("name", tag), command=tuple(command), **fields)

    return make


class TestRayContract(SchedulerContract):
    pass
