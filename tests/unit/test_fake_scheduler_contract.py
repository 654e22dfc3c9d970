"""The fake scheduler the unit tests lean on passes the same backend contract as Slurm and Ray (with
``run_commands``: each job a local process), so what a unit test learns from it holds for the real backends."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.contract.scheduler_contract import MakeLaunch, SchedulerContract, plain_launch
from tests.fixtures.fake_scheduler import FakeScheduler


@pytest.fixture
def scheduler(tmp_path: Path) -> Iterator[FakeScheduler]:
    fake = FakeScheduler(run_commands=True, log_dir=tmp_path)
    yield fake
    for ref, job in fake.jobs.items():
        if not job.status.state.is_terminal():
            fake.cancel(ref)


@pytest.fixture
def make_launch() -> MakeLaunch:
    return plain_launch


class TestFakeSchedulerContract(SchedulerContract):
    pass
