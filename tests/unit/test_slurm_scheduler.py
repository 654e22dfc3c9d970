"""SlurmScheduler over the CLI transport with a stateful fake Slurm behind the CommandRunner seam."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from haihe.errors import InvalidInput, NotFound, SchedulerUnavailable
from haihe.schedulers.base import JobState, Launch, Resources
from haihe.schedulers.slurm.backend import build
from haihe.schedulers.slurm.cli import CommandResult
from haihe.schedulers.slurm.records import fold, from_squeue, map_state
from haihe.schedulers.slurm.scheduler import SlurmScheduler

PARTS = (
    "PartitionName=debug Default=YES MaxTime=00:30:00 Nodes=cn[1-2] State=UP TotalNodes=2\n"
    "PartitionName=gpu Default=NO MaxTime=1-00:00:00 Nodes=gn1 State=UP TotalNodes=1\n"
)
NODES = [
    {"name": "cn1", "state": "idle", "cpus": 4, "alloc_cpus": 1, "gres": "", "gres_used": "", "partitions": ["debug"]},
    {"name": "cn2", "state": "down", "cpus": 4, "alloc_cpus": 0, "gres": "", "gres_used": "", "partitions": ["debug"]},
    {"name": "gn1", "state": "mixed", "cpus": 4, "alloc_cpus": 2, "gres": "gpu:4", "gres_used": "gpu:1(IDX:0)",
     "partitions": ["gpu"]},
]


class FakeSlurm:
    """A tiny job table answering sbatch/squeue/sacct/scancel/sinfo/scontrol/sacctmgr like Slurm 22.05."""

    def __init__(self) -> None:
        self.jobs: dict[int, dict[str, Any]] = {}
        self.next_id = 100
        self.calls: list[str] = []
        self.refuse: str | None = None

    def __call__(self, argv: Sequence[str], *, stdin: str | None = None,
                 env: Mapping[str, str] | None = None) -> CommandResult:
        self.calls.append(argv[0])
        cmd = argv[0]
        if cmd == "sbatch":
            if self.refuse:
                return CommandResult(1, "", f"sbatch: error: Batch job submission failed: {self.refuse}\n")
            opts = dict(re.findall(r"^#SBATCH --([\w-]+)=?(.*)$", stdin or "", flags=re.M))
            jid = self.next_id
            self.next_id += 1
            self.jobs[jid] = {"job_id": jid, "array_job_id": 0, "array_task_id": None, "job_state": "PENDING",
                              "state_reason": "Priority", "comment": opts["comment"], "name": opts["job-name"],
                              "priority": 10, "submit_time": 1000 + jid, "start_time": 0, "end_time": 0,
                              "tres_alloc_str": "", "nodes": "", "exit_code": 0, "script": stdin}
            return CommandResult(0, f"{jid}\n", "")
        if cmd == "squeue":
            return CommandResult(0, json.dumps({"jobs": list(self.jobs.values())}), "")
        if cmd == "sacct":
            return CommandResult(0, json.dumps({"jobs": []}), "")
        if cmd == "scancel":
            jid = int(argv[1])
            if jid not in self.jobs:
                return CommandResult(1, "", f"scancel: error: Kill job error on job id {jid}: Invalid job id specified")
            self.jobs[jid]["job_state"] = "CANCELLED"
            return CommandResult(0, "", "")
        if cmd == "sinfo":
            return CommandResult(0, json.dumps({"nodes": NODES}), "")
        if cmd == "scontrol":
            return CommandResult(0, PARTS, "")
        if cmd == "sacctmgr":
            return CommandResult(0, "normal\nhigh\ndebug\n", "")
        raise AssertionError(f"unexpected command {argv}")

    def finish(self, jid: int, state: str = "COMPLETED", code: int = 0) -> None:
        self.jobs[jid].update(job_state=state, start_time=2000, end_time=2060, exit_code=code << 8,
                              tres_alloc_str="cpu=2,mem=1G,node=1,gres/gpu=1", nodes="gn1")


@pytest.fixture
def fake() -> FakeSlurm:
    return FakeSlurm()


@pytest.fixture
def sched(fake: FakeSlurm, tmp_path: Path) -> SlurmScheduler:
    s = build(f"slurm+cli://?jobs={tmp_path}", runner=fake, job_env={"PATH": "/bin"})
    assert isinstance(s, SlurmScheduler)
    return s


def lau(**kw: Any) -> Launch:
    kw.setdefault("tag", "tag-1")
    kw.setdefault("resources", Resources(time_limit_min=10))
    return Launch(name="n", command=("true",), **kw)


def test_submit_status_accounting(sched: SlurmScheduler, fake: FakeSlurm) -> None:
    ref = sched.submit(lau(partition="gpu", resources=Resources(gpus_per_node=1, time_limit_min=10)))
    st = sched.status([ref])[ref]
    assert st.state == JobState.QUEUED and st.queue_position == 1 and st.tag == "tag-1"
    fake.finish(int(ref), "FAILED", 3)
    st = sched.status([ref])[ref]
    assert (st.state, st.exit_code, st.elapsed_s, st.alloc_cpus, st.alloc_gpus) == (JobState.FAILED, 3, 60, 2, 1)


def test_status_is_one_call_per_cycle(sched: SlurmScheduler, fake: FakeSlurm) -> None:
    refs = [sched.submit(lau(tag=f"t{i}")) for i in range(5)]
    fake.calls.clear()
    assert set(sched.status(refs)) == set(refs)
    assert fake.calls == ["squeue"]


def test_find_by_tag(sched: SlurmScheduler) -> None:
    ref = sched.submit(lau(tag="crash-me"))
    assert sched.find(["crash-me", "other"]) == {"crash-me": ref}


@pytest.mark.parametrize(
    ("launch", "field", "text"),
    [
        (lau(partition="nope"), "partition", "debug, gpu"),
        (lau(qos="gold"), "qos", "normal, high, debug"),
        (lau(resources=Resources(time_limit_min=31)), "resources.time_limit_min", "30 min"),
        (lau(partition="gpu", resources=Resources(gpus_per_node=5, time_limit_min=10)),
         "resources.gpus_per_node", "4 GPUs"),
        (lau(resources=Resources(nodes=3, time_limit_min=10)), "resources.nodes", "2 nodes"),
    ],
)
def test_admission_names_limit(sched: SlurmScheduler, fake: FakeSlurm, launch: Launch, field: str,
                               text: str) -> None:
    with pytest.raises(InvalidInput) as err:
        sched.submit(launch)
    assert err.value.field == field and text in err.value.message
    assert "sbatch" not in fake.calls


def test_sbatch_refusal_translated(sched: SlurmScheduler, fake: FakeSlurm) -> None:
    fake.refuse = "Requested node configuration is not available"
    with pytest.raises(InvalidInput) as err:
        sched.submit(lau())
    assert err.value.field == "resources" and "no node" in err.value.message
    fake.refuse = "Unable to contact slurm controller (connect failure)"
    with pytest.raises(SchedulerUnavailable):
        sched.submit(lau())


def test_cancel_idempotent_and_unknown(sched: SlurmScheduler, fake: FakeSlurm) -> None:
    ref = sched.submit(lau())
    sched.cancel(ref)
    assert sched.status([ref])[ref].state == JobState.CANCELLED
    with pytest.raises(NotFound):
        sched.cancel("999")


def test_ctld_probe_fails_fast(fake: FakeSlurm, tmp_path: Path) -> None:
    s = build(f"slurm+cli://?jobs={tmp_path}", runner=fake, job_env={})
    s.ctld_probe = lambda: False
    for call in (lambda: s.status(["1"]), lambda: s.submit(lau()), lambda: s.describe()):
        with pytest.raises(SchedulerUnavailable):
            call()
    assert fake.calls == []


def test_a_fresh_ctld_probe_stands_briefly_then_is_asked_again(sched: SlurmScheduler,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A busy API submits tens of jobs a second: one TCP probe of slurmctld per CTLD_FRESH_S, not one per call; a
    probe that fails is never cached (slurmctld down: every call fails fast until it answers again)."""
    from haihe.schedulers.slurm import scheduler as module

    answers = [True, True, False, False, True]
    asked: list[bool] = []

    def probe() -> bool:
        asked.append(answers[len(asked)])
        return asked[-1]

    sched.ctld_probe = probe
    clock = [1000.0]
    monkeypatch.setattr(module, "time", SimpleNamespace(monotonic=lambda: clock[0]))  # this module's clock only
    sched.submit(lau())
    sched.submit(lau())  # within CTLD_FRESH_S: not asked again
    assert asked == [True]
    clock[0] += module.CTLD_FRESH_S
    sched.submit(lau())
    assert asked == [True, True]
    clock[0] += module.CTLD_FRESH_S
    for _ in range(2):  # down: asked on every call, each refused at once
        with pytest.raises(SchedulerUnavailable):
            sched.submit(lau())
    assert asked == [True, True, False, False]
    sched.submit(lau())  # back
    assert len(asked) == 5


def test_describe_free_capacity(sched: SlurmScheduler) -> None:
    info = sched.describe()
    gpu = next(p for p in info.partitions if p.name == "gpu")
    debug = next(p for p in info.partitions if p.name == "debug")
    assert (gpu.gpus_total, gpu.gpus_free, gpu.cpus_free, gpu.max_time_min) == (4, 3, 2, 1440)
    assert debug.default and debug.cpus_free == 3  # cn2 is down: nothing free there
    assert info.qos == ("normal", "high", "debug")


def test_platform_qos_without_accounting(fake: FakeSlurm, tmp_path: Path) -> None:
    s = build(f"slurm+cli://?jobs={tmp_path}&qos=normal,high", runner=fake, job_env={})
    ref = s.submit(lau(qos="high"))
    assert "--qos" not in fake.jobs[int(ref)]["script"]
    with pytest.raises(InvalidInput):
        s.submit(lau(qos="debug"))
    assert "sacctmgr" not in fake.calls


def test_logs_by_offset_and_utf8_boundary(sched: SlurmScheduler, fake: FakeSlurm, tmp_path: Path) -> None:
    ref = sched.submit(lau())
    (tmp_path / f"{ref}.out").write_bytes("ab天".encode()[:4])  # cut inside the 3-byte character
    first = sched.logs(ref)
    assert (first.data, first.offset, first.complete) == ("ab", 2, False)
    (tmp_path / f"{ref}.out").write_bytes("ab天\n".encode())
    fake.finish(int(ref))
    second = sched.logs(ref, first.offset)
    assert second.data == "天\n" and second.complete


def test_array_folding() -> None:
    base = {"array_job_id": 7, "comment": "t", "name": "n.t", "submit_time": 1, "tres_alloc_str": ""}
    tasks = [from_squeue({**base, "job_id": 7 + i, "array_task_id": i, "job_state": s})
             for i, s in enumerate(["COMPLETED", "RUNNING", "PENDING"])]
    assert fold("7", tasks).state == JobState.RUNNING
    done = [from_squeue({**base, "job_id": 7 + i, "array_task_id": i, "job_state": s})
            for i, s in enumerate(["COMPLETED", "FAILED"])]
    assert fold("7", done).state == JobState.FAILED


@pytest.mark.parametrize(("slurm", "state"), [("PENDING", JobState.QUEUED), ("REQUEUED", JobState.PREEMPTED),
                                              ("CANCELLED by 0", JobState.CANCELLED), ("TIMEOUT", JobState.TIMEOUT),
                                              ("OUT_OF_MEMORY", JobState.FAILED), ("COMPLETED", JobState.SUCCEEDED)])
def test_state_map(slurm: str, state: JobState) -> None:
    assert map_state(slurm) == state


def test_admission_reads_the_clusters_shape_not_its_queue(sched: SlurmScheduler, fake: FakeSlurm,
                                                           tmp_path: Path) -> None:
    for i in range(3):
        sched.submit(lau(tag=f"q{i}"))
    sched = build(f"slurm+cli://?jobs={tmp_path}", runner=fake, job_env={"PATH": "/bin"})  # nothing cached yet
    assert isinstance(sched, SlurmScheduler)
    fake.calls.clear()
    sched.admit(lau(partition="gpu", resources=Resources(gpus_per_node=1, time_limit_min=10)))
    with pytest.raises(InvalidInput, match="unknown partition"):
        sched.admit(lau(partition="nope"))
    assert "squeue" not in fake.calls and fake.calls.count("sinfo") == 1  # cached: one read for both
    assert sched.describe().queue_length == 3  # the cluster page still counts the queue
