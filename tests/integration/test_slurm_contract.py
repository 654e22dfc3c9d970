"""The scheduler contract suite against the real local Slurm cluster, through both transports."""

from __future__ import annotations

from typing import Any

import pytest

from haihe.schedulers.slurm.scheduler import SlurmScheduler
from tests.contract.scheduler_contract import MakeLaunch, SchedulerContract
from tests.integration.slurm_helpers import TRANSPORTS, launch, scheduler_for

pytestmark = pytest.mark.slurm


@pytest.fixture(params=TRANSPORTS)
def scheduler(request: pytest.FixtureRequest, slurm_cluster: Any) -> SlurmScheduler:
    return scheduler_for(slurm_cluster, request.param)


@pytest.fixture
def make_launch() -> MakeLaunch:
    return launch


class TestSlurmContract(SchedulerContract):
    pass
