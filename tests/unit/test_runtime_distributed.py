"""The one dist-env function, for each launcher the runtime may find itself under."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from haihe.errors import InvalidInput
from haihe.jobs.runtime.distributed import DistEnv, PreInit, SlurmLookup, detect, tasks_on_node


class FakeScontrol:
    """A stateful fake of the scontrol seam: answers hostnames/node queries and records every call."""

    def __init__(self, hosts: list[str], addrs: dict[str, str]) -> None:
        self.hosts, self.addrs = hosts, addrs
        self.calls: list[list[str]] = []

    def __call__(self, argv: list[str]) -> str:
        self.calls.append(argv)
        if argv[:3] == ["scontrol", "show", "hostnames"]:
            return "\n".join(self.hosts) + "\n"
        if argv[:4] == ["scontrol", "show", "node", "-o"]:
            return f"NodeName={argv[4]} Arch=x86_64 NodeAddr={self.addrs[argv[4]]} NodeHostName={argv[4]} State=MIXED"
        raise AssertionError(argv)


def cpu() -> bool:
    return False


def gpu() -> bool:
    return True


def test_single_process_when_no_launcher() -> None:
    d = detect({}, cuda_available=cpu)
    assert (d.source, d.rank, d.world_size, d.local_rank, d.backend) == ("single", 0, 1, 0, "gloo")
    assert d.is_main and not d.is_distributed and d.device() == "cpu"


def test_torchrun_variables() -> None:
    env = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2", "GROUP_RANK": "1",
           "MASTER_ADDR": "10.0.0.5", "MASTER_PORT": "47123", "TORCHELASTIC_RUN_ID": "77",
           # torchrun inside an srun step: Slurm's variables describe the step, not the ranks
           "SLURM_PROCID": "1", "SLURM_STEP_NUM_TASKS": "2", "SLURM_STEP_ID": "0"}
    d = detect(env, cuda_available=gpu)
    assert d == DistEnv("torchrun", 3, 4, 1, 2, 1, "10.0.0.5", 47123, "nccl")
    assert d.init_method == "env://"  # join the agent's store, never host a second one
    assert d.device() == "cuda:1"
    assert d.child_environ()["RANK"] == "3" and d.child_environ()["MASTER_PORT"] == "47123"


def test_slurm_step_resolves_first_node_by_its_address() -> None:
    fake = FakeScontrol(["cn3", "cn4"], {"cn3": "127.0.0.3", "cn4": "127.0.0.4"})
    env = {"SLURM_PROCID": "3", "SLURM_STEP_NUM_TASKS": "4", "SLURM_NTASKS": "4", "SLURM_LOCALID": "1",
           "SLURM_NODEID": "1", "SLURM_STEP_TASKS_PER_NODE": "2(x2)", "SLURM_STEP_ID": "0",
           "SLURM_JOB_NODELIST": "cn[3-4]", "SLURM_JOB_ID": "1234"}
    d = detect(env, slurm=SlurmLookup(fake), cuda_available=cpu)
    assert d == DistEnv("slurm", 3, 4, 1, 2, 1, "127.0.0.3", 65234, "gloo")
    assert d.init_method == "tcp://127.0.0.3:65234"
    assert fake.calls == [["scontrol", "show", "hostnames", "cn[3-4]"], ["scontrol", "show", "node", "-o", "cn3"]]


def test_slurm_batch_script_is_not_a_step() -> None:
    # the batch shell sees SLURM_PROCID=0 and SLURM_NTASKS=4 but is one process: no waiting for 3 ghosts
    env = {"SLURM_PROCID": "0", "SLURM_NTASKS": "4", "SLURM_JOB_NODELIST": "cn[1-2]", "SLURM_JOB_ID": "9"}
    fake = FakeScontrol([], {})
    d = detect(env, slurm=SlurmLookup(fake), cuda_available=cpu)
    assert (d.source, d.world_size) == ("single", 1)
    assert fake.calls == []


def test_slurm_honours_master_addr_from_the_batch_script() -> None:
    env = {"SLURM_PROCID": "1", "SLURM_STEP_NUM_TASKS": "2", "SLURM_LOCALID": "0", "SLURM_NODEID": "1",
           "SLURM_STEP_TASKS_PER_NODE": "1(x2)", "MASTER_ADDR": "node-a", "MASTER_PORT": "5000"}
    fake = FakeScontrol([], {})
    d = detect(env, slurm=SlurmLookup(fake), cuda_available=cpu)
    assert (d.master_addr, d.master_port, d.local_world_size) == ("node-a", 5000, 1)
    assert fake.calls == []


def test_open_mpi_variables() -> None:
    env = {"OMPI_COMM_WORLD_RANK": "5", "OMPI_COMM_WORLD_SIZE": "8", "OMPI_COMM_WORLD_LOCAL_RANK": "1",
           "OMPI_COMM_WORLD_LOCAL_SIZE": "4", "OMPI_COMM_WORLD_NODE_RANK": "1", "MASTER_ADDR": "h1"}
    d = detect(env, cuda_available=cpu)
    assert d == DistEnv("mpi", 5, 8, 1, 4, 1, "h1", 29500, "gloo")


def test_srun_pmix_uses_slurm_step_for_size_and_rendezvous() -> None:
    fake = FakeScontrol(["cn1", "cn2"], {"cn1": "127.0.0.1", "cn2": "127.0.0.1"})
    env = {"PMIX_RANK": "2", "SLURM_PROCID": "2", "SLURM_STEP_NUM_TASKS": "3", "SLURM_STEP_ID": "0",
           "SLURM_NODEID": "1", "SLURM_LOCALID": "0", "SLURM_STEP_TASKS_PER_NODE": "2,1",
           "SLURM_STEP_NODELIST": "cn[1-2]", "SLURM_JOB_ID": "17"}
    d = detect(env, slurm=SlurmLookup(fake), cuda_available=cpu)
    assert d == DistEnv("mpi", 2, 3, 0, 1, 1, "127.0.0.1", 65017, "gloo")


def test_ray_train_preinitialised_group_wins() -> None:
    env = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"}
    d = detect(env, preinit=PreInit(rank=1, world_size=2, local_rank=1, local_world_size=2), cuda_available=cpu)
    assert (d.source, d.rank, d.world_size, d.preinitialised) == ("ray", 1, 2, True)


def test_backend_forced_by_variable_and_checked() -> None:
    assert detect({"HAIHE_DIST_BACKEND": "gloo"}, cuda_available=gpu).backend == "gloo"
    with pytest.raises(InvalidInput) as err:
        detect({"HAIHE_DIST_BACKEND": "mpi"}, cuda_available=cpu)
    assert err.value.field == "HAIHE_DIST_BACKEND"


def test_bad_numbers_name_the_variable() -> None:
    with pytest.raises(InvalidInput) as err:
        detect({"RANK": "x", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}, cuda_available=cpu)
    assert err.value.field == "RANK"


@pytest.mark.parametrize(("spec", "node", "want"), [("4", 0, 4), ("2(x3)", 2, 2), ("2(x2),1", 2, 1), ("3,1", 1, 1)])
def test_tasks_on_node(spec: str, node: int, want: int) -> None:
    assert tasks_on_node(spec, node) == want


def test_tasks_on_node_refuses_garbage() -> None:
    with pytest.raises(InvalidInput):
        tasks_on_node("2(x", 0)
    with pytest.raises(InvalidInput):
        tasks_on_node("2(x2)", 2)


def test_no_gpu_device_file_answers_no_cuda_without_importing_torch(tmp_path: Path) -> None:
    """A job on a node without GPU device files never pays for importing torch to learn it has no CUDA."""
    absent = str(tmp_path / "nvidiactl")
    code = ("import sys; from haihe.jobs.runtime import distributed as d; "
            f"print(d._cuda_available(({absent!r},)), 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["False", "False"], out.stderr[-2000:]
    present = tmp_path / "kfd"
    present.touch()  # a device file: torch gives the answer
    code = code.replace(repr(absent), repr(str(present)))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.split()[1:] == ["True"], out.stderr[-2000:]
