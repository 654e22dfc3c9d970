"""The fake scheduler the unit tests lean on passes the same backend contract as Slurm and Ray (with
``run_commands``: each job a local process), so what a unit test learns from it holds for the real backends."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from haihe.schedulers.base import Launch, Resources
from tests.contract.scheduler_contract import MakeLaunch, SchedulerContract
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
    def make(command: tuple[str, ...], **fields: Any) -> Launch:
        tag = f"contract-{uuid.uuid4().hex}"
        fields.setdefault("resources", Resources(cpus_per_task=1, time_limit_min=10))
        return Launch(tag=tag, name=fields.pop("name", tag), command=tuple(command), **fields)

    return make


class TestFakeSchedulerContract(SchedulerContract):
    pass
