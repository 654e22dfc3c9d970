"""The backend-neutral scheduler contract, run against the real local Ray head."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from haihe.cluster.ray_head import RayHead
from haihe.schedulers.ray.backend import RayScheduler
from haihe.schedulers.registry import create_scheduler
from tests.contract.scheduler_contract import MakeLaunch, SchedulerContract, plain_launch

pytestmark = pytest.mark.ray


@pytest.fixture
def scheduler(ray_head: RayHead) -> Iterator[RayScheduler]:
    sched = create_scheduler(ray_head.scheduler_url)
    assert isinstance(sched, RayScheduler)
    yield sched
    sched.close()


@pytest.fixture
def make_launch() -> MakeLaunch:
    return plain_launch


class TestRayContract(SchedulerContract):
    pass
