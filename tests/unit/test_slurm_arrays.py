"""Job arrays in status(): pending tasks share one squeue record ('1234_[0-999]') that must be expanded per task;
one squeue call answers every task, accounting is asked per array id (never per task) for what squeue lacks."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from haihe.schedulers.base import JobState
from haihe.schedulers.slurm.backend import build
from haihe.schedulers.slurm.cli import CommandResult
from haihe.schedulers.slurm.records import array_tasks, jobs_from_squeue
from haihe.schedulers.slurm.scheduler import SlurmScheduler
from haihe.schedulers.slurm.transport import CountingTransport


def rec(job_id: int, array: int, task: int | None, state: str, expr: str = "", reason: str = "None") -> dict[str, Any]:
    return {"job_id": job_id, "array_job_id": array, "array_task_id": task, "array_task_string": expr,
            "job_state": state, "state_reason": reason, "comment": "", "name": "n", "priority": 10,
            "submit_time": 1000, "start_time": 0, "end_time": 0, "tres_alloc_str": "", "nodes": "", "exit_code": 0}


class ArraySlurm:
    """squeue answers a fixed table shaped like Slurm 22.05's; sacct answers from ``accounted`` and logs its -j."""

    def __init__(self, squeue: list[dict[str, Any]], accounted: list[dict[str, Any]] | None = None) -> None:
        self.squeue = squeue
        self.accounted = accounted or []
        self.sacct_ids: list[str] = []
        self.calls: list[str] = []

    def __call__(self, argv: Sequence[str], *, stdin: str | None = None,
                 env: Mapping[str, str] | None = None) -> CommandResult:
        self.calls.append(argv[0])
        if argv[0] == "squeue":
            return CommandResult(0, json.dumps({"jobs": self.squeue}), "")
        if argv[0] == "sacct":
            self.sacct_ids = list(argv[argv.index("-j") + 1].split(","))
            return CommandResult(0, json.dumps({"jobs": self.accounted}), "")
        raise AssertionError(f"unexpected command {argv}")


def sched_over(fake: ArraySlurm, tmp_path: Path) -> tuple[SlurmScheduler, CountingTransport]:
    s = build(f"slurm+cli://?jobs={tmp_path}", runner=fake, job_env={})
    assert isinstance(s, SlurmScheduler)
    counter = CountingTransport(s.transport)
    s.transport = counter
    return s, counter


@pytest.mark.parametrize(("expr", "count", "first", "last", "whole"), [
    ("0-999", 1000, 0, 999, True),
    ("0-999:3", 334, 0, 999, True),
    ("1,5,9-20%2", 14, 1, 20, True),
    ("7", 1, 7, 7, True),
    # SLURM_BITSTR_LEN cuts the expression at 64 characters and ends it with '...'
    ("0-4,6-76,78-299,302-499,501-599,601-699,701-799,801-899,901-...", 892, 0, 899, False),
    ("0-4,6-...", 5, 0, 4, False),
])
def test_array_expressions(expr: str, count: int, first: int, last: int, whole: bool) -> None:
    ids, complete = array_tasks(expr)
    assert (len(ids), ids[0], ids[-1], complete) == (count, first, last, whole)


def test_bad_array_expression_is_refused() -> None:
    with pytest.raises(ValueError):
        array_tasks("0-x")


def test_collapsed_pending_record_expands_per_task() -> None:
    tasks = jobs_from_squeue(rec(50, 50, None, "PENDING", "0-2,9", reason="JobHeldUser"))
    assert [(t.ref, t.task, t.state, t.reason) for t in tasks] == [
        ("50", str(i), JobState.QUEUED, "JobHeldUser") for i in (0, 1, 2, 9)]
    started = jobs_from_squeue(rec(61, 50, 3, "RUNNING"))  # a started task has its own job id and one record
    assert [(t.job_id, t.ref, t.task) for t in started] == [("61", "50", "3")]


def test_every_task_of_held_arrays_in_one_call(tmp_path: Path) -> None:
    fake = ArraySlurm([
        rec(50, 50, None, "PENDING", "2-999", reason="JobHeldUser"),  # the tasks not started yet
        rec(61, 50, 0, "RUNNING"),
        rec(62, 50, 1, "COMPLETED"),
        rec(70, 70, None, "CANCELLED", "0-499", reason="JobHeldUser"),  # a whole array cancelled while held
    ])
    s, counter = sched_over(fake, tmp_path)
    refs = [f"50_{i}" for i in range(1000)] + [f"70_{i}" for i in range(500)] + ["50"]
    out = s.status(refs)
    assert counter.calls == {"jobs": 1}
    assert out["50_0"].state == JobState.RUNNING
    assert out["50_1"].state == JobState.SUCCEEDED
    assert all(out[f"50_{i}"].state == JobState.QUEUED and out[f"50_{i}"].reason == "JobHeldUser"
               for i in range(2, 1000))
    assert all(out[f"70_{i}"].state == JobState.CANCELLED for i in range(500))
    assert out["50"].state == JobState.RUNNING  # the array as one job: its tasks folded


def test_tasks_squeue_lacks_are_asked_of_accounting_by_array_id(tmp_path: Path) -> None:
    accounted = [{"job_id": 90 + i, "array": {"job_id": 80, "task_id": i}, "state": {"current": "COMPLETED"},
                  "exit_code": {"return_code": 0}, "time": {"start": 10, "end": 20}, "name": "n"} for i in range(3)]
    fake = ArraySlurm([rec(50, 50, None, "PENDING", "0-9")], accounted)
    s, counter = sched_over(fake, tmp_path)
    out = s.status(["50_3", "80_0", "80_1", "80_2", "80_7"])
    assert counter.total == 2 and fake.sacct_ids == ["80"]  # one sacct for the array, not one id per task
    assert out["50_3"].state == JobState.QUEUED
    assert {out[f"80_{i}"].state for i in range(3)} == {JobState.SUCCEEDED}
    assert "80_7" not in out  # nobody knows it: the reconciler counts misses before calling it lost


def test_ended_arrays_nobody_asked_about_stay_one_record() -> None:
    ended = rec(40, 40, None, "CANCELLED", "0-999")
    pending = rec(41, 41, None, "PENDING", "0-999")
    assert len(jobs_from_squeue(ended, wanted={"50"})) == 1  # slurmctld keeps it for MinJobAge: not expanded
    assert len(jobs_from_squeue(ended, wanted={"40"})) == 1000
    assert len(jobs_from_squeue(pending, wanted={"50"})) == 1000  # each pending task counts for queue positions
