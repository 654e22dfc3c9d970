"""Real multi-node jobs on the local Slurm cluster: torchrun DDP, MPI allreduce, fake GPUs, arrays, refusals."""

from __future__ import annotations

import re
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from haihe.errors import InvalidInput
from haihe.schedulers.base import JobState, Launcher, Resources
from haihe.schedulers.slurm.scheduler import SlurmScheduler
from tests.contract.scheduler_contract import bash, wait_logs, wait_state
from tests.integration.slurm_helpers import TRANSPORTS, launch, scheduler_for

pytestmark = pytest.mark.slurm

DDP_SCRIPT = """
import os
import torch
import torch.distributed as dist

dist.init_process_group(os.environ["HAIHE_DIST_BACKEND"])
rank, world = dist.get_rank(), dist.get_world_size()
torch.manual_seed(0)
model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(4, 1))
opt = torch.optim.SGD(model.parameters(), lr=0.05)
gen = torch.Generator().manual_seed(100 + rank)  # each rank sees different data
for _ in range(20):
    x = torch.randn(16, 4, generator=gen)
    loss = ((model(x) - x.sum(1, keepdim=True)) ** 2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
with torch.no_grad():
    final = ((model(torch.ones(8, 4)) - 4.0) ** 2).mean().item()
print(f"rank={rank} world={world} node={os.environ['SLURMD_NODENAME']} final_loss={final:.8f}", flush=True)
dist.destroy_process_group()
"""

MPI_SCRIPT = """
import os
from mpi4py import MPI
comm = MPI.COMM_WORLD
total = comm.allreduce(comm.rank + 1)
print(f"rank={comm.rank} size={comm.size} node={os.environ['SLURMD_NODENAME']} sum={total}", flush=True)
"""


@pytest.fixture(scope="module")
def cli(slurm_cluster: Any) -> SlurmScheduler:
    return scheduler_for(slurm_cluster, "cli")


def _script(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    path.chmod(0o644)
    tmp_path.chmod(0o755)
    return str(path)


@pytest.mark.slow
def test_torchrun_ddp_two_nodes_same_final_loss(cli: SlurmScheduler, tmp_path: Path) -> None:
    script = _script(tmp_path, "ddp.py", DDP_SCRIPT)
    ref = cli.submit(launch((sys.executable, script), launcher=Launcher.TORCHRUN, partition="cpu",
                            resources=Resources(nodes=2, tasks_per_node=1, cpus_per_task=2, time_limit_min=5)))
    st = wait_state(cli, ref, {JobState.SUCCEEDED}, timeout=300)
    out = cli.logs(ref).data
    lines = re.findall(r"rank=(\d) world=2 node=(\S+) final_loss=(\S+)", out)
    assert len(lines) == 2, out
    assert {r for r, _, _ in lines} == {"0", "1"}
    assert len({n for _, n, _ in lines}) == 2, "ranks must run on two different nodes"
    assert lines[0][2] == lines[1][2]
    assert len(st.nodes) == 2


@pytest.mark.slow
def test_mpi_allreduce_four_ranks_two_nodes(cli: SlurmScheduler, tmp_path: Path) -> None:
    script = _script(tmp_path, "allreduce.py", MPI_SCRIPT)
    ref = cli.submit(launch((sys.executable, script), launcher=Launcher.MPI, partition="cpu",
                            resources=Resources(nodes=2, tasks_per_node=2, time_limit_min=5)))
    wait_state(cli, ref, {JobState.SUCCEEDED}, timeout=300)
    out = cli.logs(ref).data
    ranks = re.findall(r"rank=(\d) size=4 node=(\S+) sum=10$", out, flags=re.M)
    assert sorted(r for r, _ in ranks) == ["0", "1", "2", "3"], out
    assert len({n for _, n in ranks}) == 2


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_two_gpus_visible_and_accounted(slurm_cluster: Any, transport: str) -> None:
    sched = scheduler_for(slurm_cluster, transport)
    ref = sched.submit(launch(bash('echo "CVD=$CUDA_VISIBLE_DEVICES"'), partition="gpu",
                              resources=Resources(gpus_per_node=2, time_limit_min=5)))
    st = wait_state(sched, ref, {JobState.SUCCEEDED})
    cvd = re.search(r"CVD=(\S*)", sched.logs(ref).data)
    assert cvd and len(cvd.group(1).split(",")) == 2
    assert st.alloc_gpus == 2 and st.alloc_cpus == 1
    assert st.elapsed_s is not None and st.elapsed_s >= 0


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize(
    ("fields", "field", "names"),
    [
        ({"partition": "gpu", "resources": Resources(gpus_per_node=99)}, "resources.gpus_per_node", "4 GPUs"),
        ({"partition": "nosuch"}, "partition", "nosuch"),
        ({"partition": "debug", "resources": Resources(time_limit_min=31)}, "resources.time_limit_min", "30 min"),
        ({"qos": "platinum"}, "qos", "platinum"),
        ({"partition": "cpu", "resources": Resources(nodes=3)}, "resources.nodes", "2 nodes"),
        ({"partition": "cpu", "resources": Resources(tasks_per_node=8)}, "resources.cpus_per_task", "4 CPUs"),
    ],
)
def test_impossible_requests_refused_naming_the_limit(slurm_cluster: Any, transport: str, fields: dict[str, Any],
                                                      field: str, names: str) -> None:
    sched = scheduler_for(slurm_cluster, transport)
    lau = launch(bash("true"), **fields)
    with pytest.raises(InvalidInput) as err:
        sched.submit(lau)
    assert err.value.field == field
    assert names in err.value.message
    assert sched.find([lau.tag]) == {}


def test_slurm_refusal_is_translated(cli: SlurmScheduler) -> None:
    # memory is not pre-checked: Slurm itself refuses, and the message still names the limit
    with pytest.raises(InvalidInput) as err:
        cli.submit(launch(bash("true"), partition="cpu", resources=Resources(mem_gb=500)))
    assert err.value.field in ("resources", "resources.mem_gb")
    assert "slurm refused" in err.value.message


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_array_tasks_see_their_index(slurm_cluster: Any, transport: str) -> None:
    sched = scheduler_for(slurm_cluster, transport)
    ref = sched.submit(launch(bash('echo "index=$HAIHE_ARRAY_INDEX"'), array_size=3))
    st = wait_state(sched, ref, {JobState.SUCCEEDED})
    assert st.ref == ref
    for i in range(3):
        task = sched.status([f"{ref}_{i}"])[f"{ref}_{i}"]
        assert task.state == JobState.SUCCEEDED
        assert f"index={i}" in sched.logs(f"{ref}_{i}").data


@pytest.mark.slow
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_requeue_goes_back_to_queue_and_finishes(slurm_cluster: Any, transport: str) -> None:
    import subprocess

    cli = scheduler_for(slurm_cluster, transport)
    env = slurm_cluster.command_env()
    ref = cli.submit(launch(bash('echo "restart=${SLURM_RESTART_COUNT:-0}"; sleep 3'), requeue=True,
                            signal_before_end_s=60))
    # requeue only once the script really runs: a requeue racing slurmd's batch launch ends the job FAILED
    wait_logs(cli, ref, "restart=0")
    subprocess.run(["scontrol", "requeue", ref], env=env, check=True)
    wait_state(cli, ref, {JobState.PREEMPTED, JobState.QUEUED})
    # Slurm holds a requeued job until its old credential expires (AuthInfo=cred_expire=30 on our cluster);
    # forcing an earlier start makes slurmd refuse the launch ("already killed") and the job FAILS
    st = wait_state(cli, ref, {JobState.SUCCEEDED}, timeout=180)
    assert st.state == JobState.SUCCEEDED
    log = cli.logs(ref).data
    # the log keeps the first attempt's output too (--open-mode=append): nothing the user printed is lost
    assert "restart=0" in log and "restart=1" in log


@pytest.mark.slow
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_checkpoint_signal_reaches_the_program_with_its_resources(slurm_cluster: Any, transport: str) -> None:
    # the SIGUSR1 a checkpointing job gets before its walltime: B: on sbatch, a one-task step on slurmrestd
    # (which refuses B:); either way the program itself gets it and keeps the allocation's CPUs and GPUs
    sched = scheduler_for(slurm_cluster, transport)
    program = ("import os, signal, sys, time\n"
               "signal.signal(signal.SIGUSR1, lambda *_: (print('USR1 cpus=%d gpus=%s' % (len(os.sched_getaffinity(0)),"
               " os.environ.get('CUDA_VISIBLE_DEVICES')), flush=True), sys.exit(0)))\n"
               "print('started', flush=True)\n"
               "time.sleep(110)\n"
               "print('no signal', flush=True)\n")
    ref = sched.submit(launch((sys.executable, "-c", program), partition="gpu", signal_before_end_s=105,
                              resources=Resources(time_limit_min=2, cpus_per_task=2, gpus_per_node=1)))
    st = wait_state(sched, ref, {JobState.SUCCEEDED, JobState.FAILED, JobState.TIMEOUT}, timeout=240)
    log = sched.logs(ref).data
    assert st.state == JobState.SUCCEEDED, log
    m = re.search(r"USR1 cpus=(\d+) gpus=(\S+)", log)
    assert m, log
    assert int(m.group(1)) >= 2 and len(m.group(2).split(",")) == 1


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_job_for_drained_nodes_is_queued_not_refused(slurm_cluster: Any, transport: str) -> None:
    """Nodes drained for maintenance: Slurm queues the job (ReqNodeNotAvail) and so must the platform. slurmrestd
    answers such a submit with a job id AND an error entry; reading that as a refusal orphaned a queued job."""
    import subprocess

    sched = scheduler_for(slurm_cluster, transport)
    env = slurm_cluster.command_env()
    subprocess.run(["scontrol", "update", "nodename=fn1", "state=drain", "reason=maintenance"], env=env, check=True)
    ref = None
    try:
        ref = sched.submit(launch(bash("true"), partition="bigmem"))
        st = wait_state(sched, ref, {JobState.QUEUED})
        assert "ReqNodeNotAvail" in (st.reason or ""), st
    finally:
        if ref is not None:
            sched.cancel(ref)
        subprocess.run(["scontrol", "update", "nodename=fn1", "state=resume"], env=env, check=True)
